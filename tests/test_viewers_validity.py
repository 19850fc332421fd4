"""Every object the viewer tests open (tests/viewers/study.py: the result of every tool that writes a
SEG or an SR) conforms to its IOD: dciodvfy reports no error and no warning on an attribute of
our own (warnings it also gives on the source are the source's), and highdicom reads it back."""
from __future__ import annotations

import highdicom as hd
import pytest

from tests.dicom_validate import dciodvfy_errors, dciodvfy_own_warnings
from tests.viewers.expected import sr_tracking_uids
from tests.viewers.study import RUNS, ViewerStudy


@pytest.mark.parametrize("name", list(RUNS))
def test_dciodvfy_no_error_and_no_warning_of_our_own(name: str, viewer_study: ViewerStudy) -> None:
    result = viewer_study.results[name]
    for path in result.files:
        assert dciodvfy_errors(path) == [], path.name
        assert dciodvfy_own_warnings(path, result.source_files[0]) == [], path.name


@pytest.mark.parametrize("name", list(RUNS))
def test_highdicom_reads_them_back(name: str, viewer_study: ViewerStudy) -> None:
    result = viewer_study.results[name]
    report = hd.sr.srread(result.sr).content
    groups = [*report.get_planar_roi_measurement_groups(), *report.get_volumetric_roi_measurement_groups(),
              *report.get_image_measurement_groups()]
    assert {str(g.tracking_uid) for g in groups} == set(sr_tracking_uids(result.sr))
    if result.seg is not None:
        seg = hd.seg.segread(result.seg)
        assert seg.number_of_segments == len(result.summary["segments"])
