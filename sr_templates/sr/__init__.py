"""The TID 1500 Measurement Report in a Comprehensive 3D SR, layered as highdicom's SR is:
``content`` (items below the templates: text, tracking, measurements, references), ``templates``
(one measurement group builder per kind of tool result), ``sop`` (the document)."""
from sr_templates.sr.sop import build_sr, segments_and_algorithms

__all__ = ["build_sr", "segments_and_algorithms"]
