"""A segment's outline on one slice, as the closed POLYLINE a report's image region carries.

The outline follows the pixel edges ("cracks") of the slice's largest connected piece of the mask,
holes filled, in image coordinates where (0, 0) is the top-left corner of the top-left pixel
(PS3.3 C.18.6.1.1). Following pixel edges, not pixel centres, makes the polygon's area exactly the
pixel area it encloses, so a viewer that measures the drawn region reports the report's figure.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage

#: (row offset, col offset) of a pixel's neighbour -> the edge between them, as corner offsets
#: (start, end) traversed with the inside on the right (clockwise on screen, rows going down).
_SIDES: tuple[tuple[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]], ...] = (
    ((-1, 0), ((0, 0), (1, 0))),  # top edge: top-left -> top-right   (corners as (x, y))
    ((0, 1), ((1, 0), (1, 1))),  # right edge: top-right -> bottom-right
    ((1, 0), ((1, 1), (0, 1))),  # bottom edge: bottom-right -> bottom-left
    ((0, -1), ((0, 1), (0, 0))),  # left edge: bottom-left -> top-left
)


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected piece of a 2D mask, its holes filled."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return np.asarray(ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1), dtype=bool)


def _boundary_edges(piece: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed pixel edges between the piece and the outside, start corner -> end corners."""
    padded = np.pad(piece, 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    rows, cols = np.nonzero(piece)
    for (dr, dc), ((sx, sy), (ex, ey)) in _SIDES:
        outside = ~padded[rows + 1 + dr, cols + 1 + dc]
        for r, c in zip(rows[outside].tolist(), cols[outside].tolist()):
            edges[(c + sx, r + sy)].append((c + ex, r + ey))
    return edges


def _circuit(edges: dict[tuple[int, int], list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """One closed walk over every edge (Hierholzer): the boundary of a hole-free piece is one
    loop, touching itself where two pixels of the piece meet only at a corner."""
    start = min(edges)
    stack, walk = [start], []
    while stack:
        vertex = stack[-1]
        if edges.get(vertex):
            stack.append(edges[vertex].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def _drop_collinear(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep the corners of the walk (first point repeated last, closing it)."""
    kept = [points[0]]
    for prev, here, nxt in zip(points, points[1:], points[2:]):
        if (here[0] - prev[0], here[1] - prev[1]) != (nxt[0] - here[0], nxt[1] - here[1]):
            kept.append(here)
    kept.append(points[-1])
    return kept


def outline(mask: np.ndarray) -> np.ndarray:
    """The closed outline (n, 2) of (x = column, y = row) corner coordinates, first point repeated
    last, of the largest piece of a 2D mask; empty (0, 2) for an empty mask."""
    piece = largest_piece(np.asarray(mask, dtype=bool))
    if not piece.any():
        return np.zeros((0, 2))
    return np.asarray(_drop_collinear(_circuit(_boundary_edges(piece))), dtype=float)


def polygon_area(points: np.ndarray) -> float:
    """Area enclosed by a closed polyline (shoelace formula), in squared coordinate units."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)
