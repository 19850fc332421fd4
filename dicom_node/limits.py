"""The parse policy's limits (image_model/parse_policy.py) from the node's config: the one place
``node.limits`` becomes the typed :class:`~image_model.parse_policy.ParseLimits` that the
receive path, the Q/R index, dispatch and the loader are given."""

from __future__ import annotations

from config.schema import NodeConfig
from image_model.parse_policy import ParseLimits


def parse_limits(node: NodeConfig) -> ParseLimits:
    lim = node.limits
    return ParseLimits(
        max_dataset_bytes=lim.max_dataset_bytes,
        max_inflated_bytes=lim.max_inflated_bytes,
        max_inflate_ratio=lim.max_inflate_ratio,
        max_pixel_bytes=lim.max_pixel_bytes,
        max_sequence_depth=lim.max_sequence_depth,
        max_elements=lim.max_elements,
    )
