"""The spool and UID checks, on real Part 10 bytes (deflated included)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.jobs.store import JobRecord, JobState, JobStore, make_job_id
from dicom_node.receive.spool import ORIGIN_FILE, CorruptInstance, Spool, parse_instance
from dicom_node.uids import InvalidUID, validate_uid
from tests.receive_helpers import make_ct_series


@pytest.mark.parametrize(
    "value",
    ["1.2.840.10008.1.2", "0", "1.0.3", "2.25.329800735698586629295641978511506172918"],
)
def test_valid_uids(value: str) -> None:
    assert validate_uid(value) == value
    assert validate_uid(value + "\x00") == value  # NUL padding (PS3.5 6.2) removed


@pytest.mark.parametrize(
    "value",
    [
        "",
        "../../etc",
        "1.02.3",
        "1..2",
        "1.2.",
        ".1",
        "1.2a",
        "1/2",
        "1." + "2" * 63,
        None,
    ],
)
def test_invalid_uids(value: str | None) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(value, "StudyInstanceUID")


def test_store_is_durable_and_idempotent(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path / "in", 1)
    data = path.read_bytes()
    spool = Spool(tmp_path / "spool")
    first = spool.store(data, calling_ae="PACS", called_ae="NODE")
    again = spool.store(data)
    assert not first.duplicate and again.duplicate
    assert first.path == again.path
    assert first.path.read_bytes() == data  # the bytes as received, not re-encoded
    info = first.info
    assert (
        first.path
        == tmp_path / "spool" / info.study_uid / info.series_uid / f"{info.sop_uid}.dcm"
    )
    (series,) = list(spool.scan())
    assert series.sop_uids == {info.sop_uid} and series.calling_ae == "PACS"
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".rx-")]


def test_parse_deflated_instance(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path / "in", 1)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = tmp_path / "deflated.dcm"
    ds.save_as(out, enforce_file_format=True)
    raw = out.read_bytes()
    assert ds.StudyInstanceUID.encode() not in raw  # the dataset really is deflated
    info = parse_instance(raw)
    assert info.sop_uid == ds.SOPInstanceUID and info.modality == "CT"
    assert info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_corrupt_and_unsafe_instances_are_refused(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path / "in", 1)
    with pytest.raises(CorruptInstance):
        parse_instance(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "../../escape"
    evil = tmp_path / "evil.dcm"
    ds.save_as(evil, enforce_file_format=True)
    with pytest.raises(CorruptInstance, match="StudyInstanceUID"):
        Spool(tmp_path / "spool").store(evil.read_bytes())
    assert not list((tmp_path / "spool").rglob("*.dcm"))


def test_scan_removes_unacknowledged_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for p in make_ct_series(tmp_path / "in", 2):
        spool.store(p.read_bytes())
    (series,) = list(spool.scan())
    leftover = series.folder / ".rx-crashed.part"
    leftover.write_bytes(b"half an instance")
    (again,) = list(spool.scan())
    assert again.sop_uids == series.sop_uids and not leftover.exists()


def test_job_record_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    job_id = make_job_id("1.2", "1.2.3", "abc", "ct")
    assert (
        job_id
        == make_job_id("1.2", "1.2.3", "abc", "ct")
        != make_job_id("1.2", "1.2.3", "abd", "ct")
    )
    store.save(JobRecord(job_id, "1.2", "1.2.3", JobState.QUEUED, "ct", "abc", 3))
    store.update(job_id, state=JobState.FAILED, error="why")
    loaded = store.load(job_id)
    assert (
        loaded.state is JobState.FAILED
        and loaded.error == "why"
        and loaded.instance_count == 3
    )
    assert (tmp_path / "jobs" / f"{job_id}.json").is_file()
    assert [r.job_id for r in store.all()] == [job_id]


#: Targets of ``os.rename``/``os.replace`` (their audit event), recorded while a test holds a
#: list here (an audit hook stays for the life of the process).
_RENAMES: list[list[str]] = []


def _record_renames(event: str, args: tuple[object, ...]) -> None:
    if event == "os.rename" and _RENAMES:
        _RENAMES[-1].append(str(args[1]))


sys.addaudithook(_record_renames)


def test_a_new_series_stored_on_parallel_associations_is_made_durable_once(tmp_path: Path) -> None:
    """Eight instances of one new series stored at the same moment (a sender's parallel
    associations): one store writes the series' origin file and syncs its folders, the others
    wait for it instead of writing and syncing again; every instance is stored."""
    paths = make_ct_series(tmp_path / "in", 8)
    spool = Spool(tmp_path / "spool")
    start = threading.Barrier(len(paths))

    def store(path: Path) -> bool:
        data = path.read_bytes()
        start.wait()
        return spool.store(data, calling_ae="PACS", called_ae="NODE").duplicate

    _RENAMES.append([])
    try:
        with ThreadPoolExecutor(len(paths)) as pool:
            duplicates = list(pool.map(store, paths))
        renamed = _RENAMES[-1]
    finally:
        _RENAMES.clear()
    assert duplicates == [False] * len(paths)
    assert [Path(name).name for name in renamed] == [ORIGIN_FILE]
    (series,) = list(spool.scan())
    assert len(series.sop_uids) == len(paths) and series.calling_ae == "PACS"
