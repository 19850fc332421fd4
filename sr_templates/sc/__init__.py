"""Secondary-capture overlays (PS3.3 A.8.1), the stand-in for a SEG where a destination refuses
Segmentation Storage: ``render`` draws the pixels, ``sop`` builds the images."""
from sr_templates.sc.sop import OverlayImage, build_overlays

__all__ = ["OverlayImage", "build_overlays"]
