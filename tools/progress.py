"""Progress bars for long command-line work, on stderr, and only when stderr is a terminal.

One helper for every command (``retrieve``, ``agent make-data|train|eval``, ``models fetch``): a
``tqdm`` bar with ``disable=None``, which tqdm turns off when the stream is not a TTY, so logs, pipes,
CI and services never get carriage-return noise. Library code takes a plain callback; commands wrap
it with :func:`progress_bar`.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

T = TypeVar("T")


@contextmanager
def progress_bar(total: float | None, desc: str, *, unit: str = "it", stream: IO[str] | None = None,
                 bytes_: bool = False) -> Iterator[Any]:
    """A bar to ``update(n)``; a no-op one when ``stream`` (default stderr) is not a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="B" if bytes_ else unit, unit_scale=bytes_, unit_divisor=1024,
               file=stream or sys.stderr, disable=None, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def track(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items``, advancing a :func:`progress_bar` per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)
