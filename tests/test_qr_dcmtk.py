"""The node's Query/Retrieve SCP against dcmtk findscu / movescu / getscu.

One node (real pipeline) receives a phantom CT series and produces its SEG + SR; then a
workstation finds the study, series and images (study root and patient root), moves the results
to a dcmtk storescp configured as a destination, and gets them over the same association."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from dicom_node.status import QRStatus
from tests.qr_helpers import (
    dcmtk,
    findscu,
    keys,
    node_config,
    pipeline_runner,
    write_study,
)
from tests.receive_helpers import DCMTK_BIN, dcmtk_env, free_port, storescu, wait_for


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("qr")
    ws_port, ws_dir = free_port(), tmp / "ws"
    ws_dir.mkdir()
    ws = subprocess.Popen(
        [str(DCMTK_BIN / "storescp"), "-aet", "WORKSTN", "-od", str(ws_dir), str(ws_port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    config = node_config(tmp, free_port(), {
        "ws": {"ae_title": "WORKSTN", "host": "127.0.0.1", "port": ws_port},
    }, query_retrieve={"allowed_calling_aets": ["FINDSCU", "MOVESCU", "GETSCU"]})
    truth = write_study(tmp / "ct", accession="ACC-QR-1", patient_id="QR-PAT-7")
    node = Node(config, runner=pipeline_runner(config))
    node.start()
    try:
        assert storescu(node.port, truth.files).returncode == 0
        job = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished], timeout=120)[0]
        assert job.state is JobState.DONE, job.error
        results = sorted(Path(job.result_dir or "").glob("*.dcm"))
        assert len(results) == 2
        yield {"node": node, "truth": truth, "tmp": tmp, "ws_dir": ws_dir, "results": results}
    finally:
        node.stop()
        ws.terminate()
        ws.wait(10)


def _uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_find_study_by_accession_counts_series_and_instances(held: dict[str, Any]) -> None:
    port, tmp = held["node"].port, held["tmp"]
    proc, found = findscu(
        port, tmp / "f1", "STUDY", AccessionNumber="ACC-QR-1", StudyInstanceUID="",
        ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
        PatientID="",
    )
    assert proc.returncode == 0, proc.stderr
    (study,) = found
    assert study.StudyInstanceUID == held["truth"].study_uid
    assert set(study.ModalitiesInStudy) == {"CT", "SEG", "SR"}
    assert int(study.NumberOfStudyRelatedSeries) == 3
    assert int(study.NumberOfStudyRelatedInstances) == len(held["truth"].files) + 2
    assert study.PatientID == "QR-PAT-7"
    # No match: another accession, a wildcard that excludes it.
    assert findscu(port, tmp / "f2", "STUDY", AccessionNumber="OTHER")[1] == []
    assert findscu(port, tmp / "f3", "STUDY", PatientID="XX*")[1] == []


def test_find_series_wildcard_and_date_range(held: dict[str, Any]) -> None:
    port, tmp, truth = held["node"].port, held["tmp"], held["truth"]
    _, series = findscu(port, tmp / "s1", "SERIES", StudyInstanceUID=truth.study_uid,
                        SeriesInstanceUID="", Modality="", NumberOfSeriesRelatedInstances="")
    by_modality = {str(s.Modality): s for s in series}
    assert set(by_modality) == {"CT", "SEG", "SR"}
    assert int(by_modality["CT"].NumberOfSeriesRelatedInstances) == len(truth.files)
    _, only_ct = findscu(port, tmp / "s2", "SERIES", StudyInstanceUID=truth.study_uid,
                         Modality="C?", SeriesDescription="*phantom")
    assert [str(s.SeriesInstanceUID) for s in only_ct] == [truth.series_uid]
    _, in_range = findscu(port, tmp / "s3", "STUDY", StudyDate="20251201-20260102")
    _, out_range = findscu(port, tmp / "s4", "STUDY", StudyDate="20260102-")
    assert len(in_range) == 1 and out_range == []


def test_find_images_patient_root(held: dict[str, Any]) -> None:
    port, tmp, truth = held["node"].port, held["tmp"], held["truth"]
    proc, patients = findscu(port, tmp / "p1", "PATIENT", model="-P", PatientID="QR-PAT-7",
                             PatientName="", NumberOfPatientRelatedStudies="")
    assert proc.returncode == 0, proc.stderr
    (patient,) = patients
    assert str(patient.PatientName) == "Phantom^Lung"
    assert int(patient.NumberOfPatientRelatedStudies) == 1
    # PN matching is case-insensitive, with wildcards.
    assert len(findscu(port, tmp / "p2", "PATIENT", model="-P", PatientName="phantom^*")[1]) == 1
    _, images = findscu(port, tmp / "p3", "IMAGE", model="-P", PatientID="QR-PAT-7",
                        StudyInstanceUID=truth.study_uid, SeriesInstanceUID=truth.series_uid,
                        SOPInstanceUID="", InstanceNumber="")
    assert {str(i.SOPInstanceUID) for i in images} == _uids(truth.files)
    # UID list matching.
    two = sorted(_uids(truth.files))[:2]
    _, listed = findscu(port, tmp / "p4", "IMAGE", StudyInstanceUID=truth.study_uid,
                        SeriesInstanceUID=truth.series_uid, SOPInstanceUID="\\".join(two))
    assert sorted(str(i.SOPInstanceUID) for i in listed) == two


def test_bad_level_is_refused(held: dict[str, Any]) -> None:
    # Study Root has no PATIENT level (PS3.4 C.6.2): A900.
    proc = dcmtk("findscu", ["-v", "-S", "-aet", "FINDSCU", "-aec", "MMEDNODE", *keys("PATIENT"),
                             "127.0.0.1", str(held["node"].port)])
    # dcmtk names 0xA900 (QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS) this way.
    assert QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert "error: datasetdoesnotmatchsopclass" in (proc.stdout + proc.stderr).lower()


def test_move_results_to_configured_destination(held: dict[str, Any]) -> None:
    truth, results = held["truth"], held["results"]
    result_ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in results]
    series = "\\".join(str(ds.SeriesInstanceUID) for ds in result_ds)
    proc = dcmtk("movescu", [
        "-S", "-aet", "MOVESCU", "-aec", "MMEDNODE", "-aem", "WORKSTN",
        *keys("SERIES", StudyInstanceUID=truth.study_uid, SeriesInstanceUID=series),
        "127.0.0.1", str(held["node"].port),
    ])
    assert proc.returncode == 0, proc.stderr
    got = wait_for(lambda: len(list(held["ws_dir"].iterdir())) >= 2 and list(held["ws_dir"].iterdir()))
    assert _uids(got) == _uids(results)


def test_move_to_unknown_destination_fails_with_a801(held: dict[str, Any]) -> None:
    proc = dcmtk("movescu", [
        "-v", "-S", "-aet", "MOVESCU", "-aec", "MMEDNODE", "-aem", "NOBODY",
        *keys("STUDY", StudyInstanceUID=held["truth"].study_uid),
        "127.0.0.1", str(held["node"].port),
    ])
    assert "refused: movedestinationunknown" in (proc.stdout + proc.stderr).lower()
    # The exact status, read with a pynetdicom SCU.
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", held["node"].port, ae_title="MMEDNODE")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = held["truth"].study_uid
    statuses = [int(rsp.Status) for rsp, _ in assoc.send_c_move(
        query, "NOBODY", StudyRootQueryRetrieveInformationModelMove) if rsp]
    assoc.release()
    assert statuses == [QRStatus.MOVE_DESTINATION_UNKNOWN]


def test_get_whole_study(held: dict[str, Any]) -> None:
    out = held["tmp"] / "get"
    out.mkdir()
    proc = dcmtk("getscu", [
        "-S", "-aet", "GETSCU", "-aec", "MMEDNODE", "-od", str(out),
        *keys("STUDY", StudyInstanceUID=held["truth"].study_uid),
        "127.0.0.1", str(held["node"].port),
    ])
    assert proc.returncode == 0, proc.stderr
    got = list(out.iterdir())
    assert _uids(got) == _uids(held["truth"].files) | _uids(held["results"])
    seg = next(pydicom.dcmread(p) for p in got if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == held["truth"].series_uid
