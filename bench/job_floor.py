"""The floor of :mod:`bench.bench_job`: the least a plain script does for a CT's two lungs as a SEG.

Read every slice with pydicom, stack them in position order as HU, label the air inside the body
(below -320 HU, not connected to the volume's edge) with scipy, keep its two largest components,
and encode them as a 2-segment BINARY SEG with highdicom, written to disk. No checks, no planner,
no SR, no network: what any implementation must at least spend.
"""
from __future__ import annotations

import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from scipy import ndimage


def floor(folder: Path, out: Path) -> dict[str, float]:
    """Seconds per stage (read, label, encode) for the series in ``folder``; the SEG in ``out``."""
    t0 = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    hu *= float(datasets[0].RescaleSlope)
    hu += float(datasets[0].RescaleIntercept)
    t1 = time.perf_counter()
    labels, _count = ndimage.label(hu < -320.0)
    del hu
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        sizes[np.unique(edge)] = 0  # air outside the body
    two = np.argsort(sizes)[::-1][:2]
    label_map = np.zeros(labels.shape, dtype=np.uint8)
    for number, label in enumerate(two, start=1):
        label_map[labels == label] = number
    del labels
    t2 = time.perf_counter()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="floor", family=codes.cid7162.ArtificialIntelligence, version="1")
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"air {n}",
            segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for n in (1, 2)
    ]
    for ds in datasets:
        del ds.PixelData
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=label_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="floor", manufacturer_model_name="floor",
        software_versions="1", device_serial_number="1", omit_empty_frames=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "label": t2 - t1, "encode": t3 - t2}
