"""Issue 11, dataset-level attacks against ``mmed-node serve`` on real loopback sockets: a deflate
bomb, an RLE geometry bomb, sequences nested 5000 deep, a UID that forges a log line, and (with
the real pipeline in a running node) invalid but common header values.

Every crafted instance is refused at receive with a failure status and not stored; one already
on disk (stored by an older version) is quarantined with its reason, and neither breaks Q/R or
its series for anyone else."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless
from pydicom.valuerep import DSfloat

from dicom_node import status
from dicom_node.app.node import Node
from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.runner import JobRunner
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobState
from testkit import dicom_wire as wire
from testkit.crafted import MB, ct_dataset, deeply_nested, deflate_bomb, part10, rle_bomb
from testkit.served_node import RSS_BUDGET_BYTES, ServedNode
from tests.dicom_validate import dciodvfy_errors
from tests.qr_helpers import findscu, node_config, pipeline_runner, write_study
from tests.receive_helpers import free_port, make_ct_series, storescu, wait_for

FAILED = status.CANNOT_UNDERSTAND


def _spooled(node: ServedNode) -> list[Path]:
    return list(node.data_dir.glob("spool/*/*/*.dcm"))


def test_deflate_bomb_is_refused_within_the_memory_budget(served: list[ServedNode], tmp_path: Path) -> None:
    """Row 4: a ~1 MB Deflated Explicit VR LE instance that inflates to 1 GiB."""
    node = ServedNode(tmp_path)
    served.append(node)
    ds, bomb = deflate_bomb(1024 * MB)
    assert len(bomb) < 2 * MB
    with node.memory() as memory:
        code = wire.store(node.port, bomb, ds.SOPClassUID, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian,
                          calling="DEFLATER")
    node.assert_alive()
    assert code == FAILED
    assert memory["growth"] < RSS_BUDGET_BYTES, f"RSS grew {memory['growth'] / MB:.0f} MB"
    assert not _spooled(node)
    assert re.search(r"127\.0\.0\.1 \(AE DEFLATER.*inflates", node.log_text())
    # An honest deflated instance is still stored, and its series processed.
    ok = ct_dataset()
    plain = wire.encode_dataset(ok)
    deflater = __import__("zlib").compressobj(9, __import__("zlib").DEFLATED, -15)
    packed = deflater.compress(plain) + deflater.flush()
    assert wire.store(node.port, packed, ok.SOPClassUID, ok.SOPInstanceUID, DeflatedExplicitVRLittleEndian) == 0
    assert len(_spooled(node)) == 1


def test_rle_geometry_bomb_is_refused_before_any_decode(served: list[ServedNode], tmp_path: Path) -> None:
    """Row 5: an RLE Lossless instance of under 1 kB declaring 65535 x 16384 pixels."""
    node = ServedNode(tmp_path)
    served.append(node)
    ds, bomb = rle_bomb()
    assert len(bomb) < 2048
    with node.memory() as memory:
        code = wire.store(node.port, bomb, ds.SOPClassUID, ds.SOPInstanceUID, RLELossless, calling="RLESENDER")
    node.assert_alive()
    assert code == FAILED
    assert memory["growth"] < 32 * MB, memory
    assert not _spooled(node)
    assert "max_pixel_bytes" in node.log_text()


def test_deep_nesting_is_refused_and_qr_keeps_working(served: list[ServedNode], tmp_path: Path) -> None:
    """Row 6: an undefined-length sequence nested 5000 deep after (0020,000E)."""
    node = ServedNode(tmp_path, {"query_retrieve": {"allowed_calling_aets": ["FINDSCU"]}})
    served.append(node)
    ds, nested = deeply_nested(5000)
    code = wire.store(node.port, nested, ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    assert code == FAILED
    assert not _spooled(node)
    files = make_ct_series(tmp_path / "ok", 2)
    assert storescu(node.port, files).returncode == 0
    proc, found = findscu(node.port, tmp_path / "find", "STUDY", StudyInstanceUID="")
    assert proc.returncode == 0 and len(found) == 1, proc.stderr
    log = node.log_text()
    assert "nested deeper than 32" in log
    assert "Traceback" not in log and "RecursionError" not in log
    node.assert_alive()


def test_bad_files_already_on_disk_are_quarantined_and_break_nothing(
    served: list[ServedNode], tmp_path: Path
) -> None:
    """Rows 5 and 6 for files an older version stored: a 5000-deep instance and an RLE bomb sit
    in a series folder beside good instances when the node starts."""
    files = make_ct_series(tmp_path / "ct", 3)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    folder = tmp_path / "var" / "spool" / study / series
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy(path, folder / f"{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm")
    planted = []
    same = {"StudyInstanceUID": study, "SeriesInstanceUID": series,
            "FrameOfReferenceUID": str(first.FrameOfReferenceUID)}
    for (ds, body), syntax in ((deeply_nested(5000, **same), ExplicitVRLittleEndian),
                               (rle_bomb(**same), RLELossless)):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(part10(ds, body, syntax))
        planted.append(path)
    (folder / ".origin.json").write_text(json.dumps({"calling_ae": "FINDSCU", "called_ae": "MMEDNODE"}))
    node = ServedNode(tmp_path, {"query_retrieve": {"allowed_calling_aets": ["FINDSCU"]}},
                      runner="testkit.served_node:loading_runner")
    served.append(node)
    proc, found = findscu(node.port, tmp_path / "find", "IMAGE", StudyInstanceUID=study,
                          SeriesInstanceUID=series, SOPInstanceUID="")
    assert proc.returncode == 0, proc.stderr
    assert len(found) == 3
    for path in planted:
        assert not path.exists() and path.with_name(path.name + ".quarantined").is_file()
    assert len(list((node.data_dir / "quarantine").rglob("*.dcm"))) == 2
    # The series is processed with its three good instances.
    record = wait_for(lambda: next((json.loads(p.read_text()) for p in (node.data_dir / "jobs").glob("*.json")
                                    if json.loads(p.read_text())["state"] in ("done", "failed")), None), 60)
    assert record["state"] == "done", record.get("error")
    manifest = json.loads(Path(record["manifest_path"]).read_text())
    assert manifest["instances"] == 3
    log = node.log_text()
    assert "Traceback" not in log and "RecursionError" not in log
    node.assert_alive()


@pytest.mark.parametrize("receivers", [1, 2])
def test_forged_log_line_through_a_uid(served: list[ServedNode], tmp_path: Path, receivers: int) -> None:
    """Row 7: an Affected SOP Instance UID carrying a newline and a fake log line; a dataset
    SOP Instance UID doing the same. Receiver processes log through the same escaping as the
    node (they once logged pynetdicom's quote of the forged UID, newline and all)."""
    node = ServedNode(tmp_path, {"node": {"receivers": receivers}})
    served.append(node)
    forged = "1.2.3\n2026-01-01 00:00:00,000 CRITICAL dicom_node: FORGED-LINE admin password reset"
    short = "1.2\n2026-01-01 00:00:00,000 CRITICAL FORGED-SHORT"
    for request_uid in (forged, short):
        ds = ct_dataset()
        try:  # pynetdicom aborts an association whose command set holds an over-long UID
            code = wire.store(node.port, wire.encode_dataset(ds), ds.SOPClassUID, ds.SOPInstanceUID,
                              request_uid=request_uid)
        except ConnectionError:
            code = FAILED
        assert code == FAILED
    ds2 = ct_dataset()
    ds2.SOPInstanceUID = "1.2\n2026-01-01 00:00:00,000 CRITICAL FORGED-TOO"
    assert wire.store(node.port, wire.encode_dataset(ds2), ds2.SOPClassUID, "1.2.3.4") == FAILED
    log = node.log_text()
    assert "FORGED" not in log, log[-2000:]
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
    assert "SOPInstanceUID missing or not a valid UID" in log


def _with_raw(path: Path, values: dict[str, str]) -> None:
    """Write ``values`` into the file as raw bytes, invalid or not (pydicom refuses to set some)."""
    ds = pydicom.dcmread(path)
    for keyword, text in values.items():
        tag = Tag(tag_for_keyword(keyword))
        raw = text.encode("latin-1")
        raw += b" " * (len(raw) % 2)
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path, enforce_file_format=True)


BAD_VALUES = {
    "PatientBirthDate": "1901-02-03", "StudyDate": "2024.01.02", "StudyTime": "12:30:45",
    "PatientName": "Doe^John\nINJECTED", "PatientAge": "45 years", "PatientSex": "male",
    "AccessionNumber": "ACC-0123456789-XYZ", "StudyID": "STUDY-ID-TOO-LONG-1", "PatientWeight": "70kg",
    "PatientSize": "1.755555555555555555", "StudyDescription": "D" * 80,
    "ReferringPhysicianName": "Dr^Who\\Dr^Else",
}


def _window_centers(spec: JobSpec, convert: Callable[[Any], float]) -> dict[str, Any]:
    centers = [convert(pydicom.dcmread(p, stop_before_pixels=True).WindowCenter)
               for p in sorted(Path(spec.series_dir).glob("*.dcm"))]
    manifest = {"job_id": spec.job_id, "instance_count": len(centers), "files": []}
    write_json_atomic(Path(spec.result_dir) / "manifest.json", manifest)
    return manifest


def converting_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in runner using a header value the loader does not vet (Window Center), as a tool
    reading display hints might: Python's float() raises on an invalid one, quoting it."""
    return _window_centers(spec, float)


def pydicom_runner(spec: JobSpec) -> dict[str, Any]:
    """The same through pydicom's DS: pydicom raises, quoting the value."""
    return _window_centers(spec, DSfloat)


@pytest.mark.parametrize(("runner", "error", "crashed"), [
    (converting_runner, "ValueError: could not convert string to float: '<not recorded>'", True),
    (pydicom_runner, ("a value in the series cannot be read: ValueError in pydicom.valuerep (its "
                      "message may quote a header value: not recorded)"), False),
])
def test_a_header_value_a_job_cannot_read_is_not_quoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, runner: JobRunner, error: str, crashed: bool
) -> None:
    """A header value a job cannot convert: the job fails with the exception's type and never
    its message's value (Python and pydicom quote it: maybe patient data), in the job record and
    in the log. Raised by pydicom on the series' data, it is bad input (a clean failure, one
    line); raised in the node's own code, a crash whose stack is logged without the value."""
    caplog.set_level(logging.INFO)
    files = make_ct_series(tmp_path / "ct", 2)
    _with_raw(files[0], {"WindowCenter": "40"})
    _with_raw(files[1], {"WindowCenter": "DOE^JANE"})
    config = node_config(tmp_path, free_port(), {})
    with Node(config, runner=runner, use_default_outbox=False) as node:
        assert storescu(node.port, files).returncode == 0
        (job,) = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished])
        record_text = (node.jobs.root / f"{job.job_id}.json").read_text()
    assert job.state is JobState.FAILED and job.error == error
    # pydicom's own notice of the invalid value is kept out by logsafe.install() in mmed-node.
    formatter = logging.Formatter()
    ours = "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith("pydicom"))
    assert "DOE^JANE" not in record_text and "DOE^JANE" not in ours
    assert ("crashed" in ours and "Traceback" in ours and "_window_centers" in ours) is crashed
    assert "crashed" in ours or "Traceback" not in ours


@pytest.mark.slow
def test_invalid_common_header_values_never_fail_a_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Row 8: PatientBirthDate 1901-02-03 and its kin, through the real pipeline of a running
    node: the job succeeds, SEG and SR conform (dciodvfy), nothing quotes the values."""
    caplog.set_level(logging.INFO)
    truth = write_study(tmp_path / "ct", accession="ACC-BAD-1")
    for path in truth.files:
        _with_raw(path, BAD_VALUES)
    config = node_config(tmp_path, free_port(), {})
    with Node(config, runner=pipeline_runner(config)) as node:
        assert storescu(node.port, truth.files).returncode == 0
        (job,) = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished], timeout=180)
        assert job.state is JobState.DONE, job.error
        outputs = sorted(Path(job.result_dir or "").glob("*.dcm"))
        assert {p.name for p in outputs} == {"seg.dcm", "sr.dcm"}
        for path in outputs:
            assert dciodvfy_errors(path) == [], path.name
            out = pydicom.dcmread(path)
            assert out.PatientBirthDate == "19010203" and out.StudyTime == "123045" and out.PatientSex == "M"
        record_text = (node.jobs.root / f"{job.job_id}.json").read_text()
    for text in ("1901-02-03", "12:30:45", "INJECTED", "70kg"):
        assert text not in caplog.text and text not in record_text


def test_disk_full_refuses_exactly_what_is_not_stored(served: list[ServedNode], tmp_path: Path) -> None:
    """What held before the limits and must keep holding: with the data_dir full, the instances
    that could not be stored are refused with 0xA700 and every acknowledged one is held (read back
    through the node's own Q/R: the spool is in the node's private mount)."""
    # The low-space watermark off (retention.min_free*: it refuses before the disk is full),
    # so the file system itself runs out mid-instance.
    node = ServedNode(tmp_path, {"query_retrieve": {"allowed_calling_aets": ["FINDSCU"]},
                                 "retention": {"min_free": 0, "min_free_percent": 0},
                                 "routes": [{"name": "none", "match": {"Modality": "XX"}, "instruction": "x"}]},
                      data_dir_bytes=3 * MB)
    served.append(node)
    study = ct_dataset().StudyInstanceUID
    statuses: dict[str, int] = {}
    for _ in range(12):
        ds = ct_dataset(512, 512, StudyInstanceUID=study)  # ~0.5 MB each
        statuses[ds.SOPInstanceUID] = wire.store(node.port, wire.encode_dataset(ds), ds.SOPClassUID,
                                                 ds.SOPInstanceUID)
    stored = {uid for uid, code in statuses.items() if code == 0}
    assert stored and len(stored) < 12
    assert set(statuses.values()) == {0, status.OUT_OF_RESOURCES}
    proc, found = findscu(node.port, tmp_path / "find", "IMAGE", StudyInstanceUID=study, SOPInstanceUID="")
    assert proc.returncode == 0, proc.stderr
    assert {str(f.SOPInstanceUID) for f in found} == stored
    node.assert_alive()
