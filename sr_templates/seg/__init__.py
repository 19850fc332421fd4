"""DICOM Segmentation (PS3.3 A.51): ``content`` holds a segment's parts (numbering, description),
``sop`` the object highdicom builds from them."""
from sr_templates.seg.content import EncodedSegment, encode_segments
from sr_templates.seg.sop import build_seg

__all__ = ["EncodedSegment", "build_seg", "encode_segments"]
