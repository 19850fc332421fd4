"""Attribute matching (PS3.4 C.2.2.2) and the Q/R index over real files on disk."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.jobs.store import JobRecord, JobState, JobStore
from dicom_node.qr.index import InformationModel, Level, QRIndex, value_matches
from dicom_node.receive.spool import Spool
from tests.receive_helpers import make_ct_series


@pytest.mark.parametrize(
    ("keyword", "key", "values", "expected"),
    [
        ("PatientID", "", ("A1",), True),  # universal
        ("PatientID", "*", (), True),  # lone asterisk: universal, even for an empty value
        ("PatientID", "A1", ("A1",), True),
        ("PatientID", "a1", ("A1",), False),  # single value matching is case-sensitive...
        ("PatientName", "doe^john", ("Doe^John",), True),  # ...except PN
        ("PatientName", "Do?^J*", ("Doe^John",), True),
        ("PatientName", "Do?^J", ("Doe^John",), False),  # wildcards match the whole value
        ("StudyDescription", "CT*", ("MR head",), False),
        ("StudyInstanceUID", "1.2.3\\1.2.4", ("1.2.4",), True),  # UID list
        ("StudyInstanceUID", "1.2.*", ("1.2.4",), False),  # no wildcards on UIDs
        ("StudyDate", "20250101-20251231", ("20250704",), True),
        ("StudyDate", "20250101-20251231", ("20260101",), False),
        ("StudyDate", "-20250101", ("20241231",), True),
        ("StudyDate", "20250101-", ("20241231",), False),
        ("StudyTime", "0800-1200", ("093000.5",), True),
        ("StudyTime", "0800-0900", ("093000",), False),
        ("StudyTime", "0930", ("093000",), True),
        ("ModalitiesInStudy", "MR", ("CT", "SEG"), False),
        ("ModalitiesInStudy", "SEG", ("CT", "SEG"), True),  # any value of a multi-valued attribute
        ("Modality", "MR\\CT", ("CT",), True),  # multiple values in the key: any
        ("AccessionNumber", "ACC1", (), False),  # the entity has no value
    ],
)
def test_value_matching(keyword: str, key: str, values: tuple[str, ...], expected: bool) -> None:
    assert value_matches(keyword, key, values) is expected


def _spool(root: Path, files: list[Path]) -> None:
    spool = Spool(root)
    for path in files:
        spool.store(path.read_bytes())


def test_index_follows_the_disk(tmp_path: Path) -> None:
    spool_root, results = tmp_path / "spool", tmp_path / "results"
    series_a = make_ct_series(tmp_path / "a", n=3)
    study = str(pydicom.dcmread(series_a[0]).StudyInstanceUID)
    series_b = make_ct_series(tmp_path / "b", n=2, study_uid=study, modality="MR")
    _spool(spool_root, series_a)
    index = QRIndex(spool_root, results)
    (entity,) = index.find(InformationModel.STUDY_ROOT, Level.STUDY, {"StudyInstanceUID": study})
    assert entity.values["NumberOfStudyRelatedInstances"] == ("3",)
    # New files are found on the next query, a produced result included; a half-written
    # (dot-named) file and an unreadable one are not.
    _spool(spool_root, series_b)
    (results / "job1").mkdir(parents=True)
    (results / "job1" / "junk.dcm").write_bytes(b"not dicom")
    (results / "job1" / ".tmp-x.dcm").write_bytes(series_a[0].read_bytes())
    produced = pydicom.dcmread(series_a[0])
    produced.SOPInstanceUID = produced.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    produced.SeriesInstanceUID = "1.2.3.4.6"
    produced.Modality = "SEG"
    produced.save_as(results / "job1" / "seg.dcm", enforce_file_format=True)
    (entity,) = index.find(InformationModel.PATIENT_ROOT, Level.STUDY, {"StudyInstanceUID": study})
    assert entity.values["NumberOfStudyRelatedInstances"] == ("6",)
    assert entity.values["ModalitiesInStudy"] == ("CT", "MR", "SEG")
    series = index.find(InformationModel.STUDY_ROOT, Level.SERIES, {"StudyInstanceUID": study, "Modality": "MR"})
    assert [e.values["NumberOfSeriesRelatedInstances"] for e in series] == [("2",)]
    # Removed files drop out.
    (results / "job1" / "seg.dcm").unlink()
    assert len(index.select(InformationModel.STUDY_ROOT, Level.STUDY, {"StudyInstanceUID": study})) == 5
    patients = index.find(InformationModel.PATIENT_ROOT, Level.PATIENT, {"PatientID": "RX-1"})
    assert patients[0].values["NumberOfPatientRelatedSeries"] == ("2",)
    with pytest.raises(ValueError, match="PATIENT"):
        index.find(InformationModel.STUDY_ROOT, Level.PATIENT, {})


def test_superseded_results_are_not_offered(tmp_path: Path) -> None:
    source = make_ct_series(tmp_path / "src", n=2)
    _spool(tmp_path / "spool", source)
    base = pydicom.dcmread(source[0])
    jobs = JobStore(tmp_path / "jobs")
    for job_id, sop, supersedes in (("old", "1.2.3.1", []), ("new", "1.2.3.2", ["old"])):
        result = base.copy()
        result.file_meta = base.file_meta.copy()
        result.SOPInstanceUID = result.file_meta.MediaStorageSOPInstanceUID = sop
        result.SeriesInstanceUID, result.Modality = f"{sop}.9", "SR"
        (tmp_path / "results" / job_id).mkdir(parents=True)
        result.save_as(tmp_path / "results" / job_id / "sr.dcm", enforce_file_format=True)
        jobs.save(JobRecord(job_id=job_id, study_uid=str(base.StudyInstanceUID),
                            series_uid=str(base.SeriesInstanceUID), state=JobState.DONE,
                            route="r", fingerprint=job_id, instance_count=2, supersedes=supersedes))
    index = QRIndex(tmp_path / "spool", tmp_path / "results", tmp_path / "jobs")
    srs = index.find(InformationModel.STUDY_ROOT, Level.IMAGE,
                     {"StudyInstanceUID": str(base.StudyInstanceUID), "SOPClassUID": str(base.SOPClassUID)})
    held = {e.values["SOPInstanceUID"][0] for e in srs}
    assert "1.2.3.2" in held and "1.2.3.1" not in held
    # Without job records every result is offered.
    everything = QRIndex(tmp_path / "spool", tmp_path / "results").refresh()
    assert {"1.2.3.1", "1.2.3.2"} <= {i.sop_uid for i in everything}


def test_repeating_group_key_is_unsupported_not_a_crash() -> None:
    """A key from a repeating group ((7Fxx,0020) here) names no single element: answered as an
    unsupported key, not raised (the fuzzer found pydicom cannot map its keyword back)."""
    from pydicom.dataset import Dataset

    from dicom_node.qr.handlers import parse_identifier

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.add_new(0x7F000020, "OW", b"")
    request = parse_identifier(ds, InformationModel.STUDY_ROOT)
    assert request.unsupported == ("VariableCoefficientsSDVN",)
    assert "VariableCoefficientsSDVN" not in request.requested
