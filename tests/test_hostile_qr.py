"""Issue 11, query/retrieve access against ``mmed-node serve``: wildcard retrieves, callers that
may store but not read, a spoofed AE title, and callers limited to what they sent.

The SCU is pynetdicom (statuses read exactly); the node is the real command in a subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicom_node.status import QRStatus
from testkit.served_node import ServedNode
from tests.receive_helpers import make_ct_series, storescu

PACS = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}}


def _find(port: int, calling: str, query: dict[str, str], level: str = "STUDY",
          source: str | None = None) -> tuple[list[int], list[Dataset]]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    kwargs: dict[str, Any] = {"bind_address": (source, 0)} if source else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="MMEDNODE", **kwargs)
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in query.items():
        setattr(ds, keyword, value)
    statuses, found = [], []
    for rsp, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        if rsp:
            statuses.append(int(rsp.Status))
        if identifier is not None:
            found.append(identifier)
    assoc.release()
    return statuses, found


def _get(port: int, calling: str, query: dict[str, str], level: str = "STUDY",
         model: Any = StudyRootQueryRetrieveInformationModelGet) -> tuple[list[int], list[Dataset]]:
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        got.append(event.dataset)
        return 0

    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MMEDNODE", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(__import__("pynetdicom").evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in query.items():
        setattr(ds, keyword, value)
    statuses = [int(rsp.Status) for rsp, _ in assoc.send_c_get(ds, model) if rsp]
    assoc.release()
    return statuses, got


def _store_study(node: ServedNode, tmp: Path, calling: str, patient: str) -> str:
    files = make_ct_series(tmp, 2)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient, f"{patient}^Name"
        ds.save_as(path, enforce_file_format=True)
    assert storescu(node.port, files, calling_ae=calling).returncode == 0
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_wildcard_retrieve_and_open_find_are_refused(served: list[ServedNode], tmp_path: Path) -> None:
    """Row 9: C-GET with StudyInstanceUID=* or PatientID=*; C-FIND PatientName=* from any AE."""
    node = ServedNode(tmp_path, {"destinations": PACS})
    served.append(node)
    study = _store_study(node, tmp_path / "a", "MODALITY", "PAT-A")
    _store_study(node, tmp_path / "b", "MODALITY", "PAT-B")
    # Any caller: refused, nothing disclosed.
    statuses, found = _find(node.port, "ANYONE", {"PatientName": "*", "PatientID": "", "PatientBirthDate": ""})
    assert statuses == [QRStatus.NOT_AUTHORIZED] and found == []
    statuses, got = _get(node.port, "ANYONE", {"StudyInstanceUID": study})
    assert statuses[-1] == QRStatus.NOT_AUTHORIZED and got == []
    # The configured destination (its AE title, from its host): wildcards on unique keys refused.
    statuses, got = _get(node.port, "PACS", {"StudyInstanceUID": "*"})
    assert statuses[-1] == QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS and got == []
    statuses, got = _get(node.port, "PACS", {"PatientID": "*"}, "PATIENT", PatientRootQueryRetrieveInformationModelGet)
    assert statuses[-1] == QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS and got == []
    statuses, got = _get(node.port, "PACS", {"StudyInstanceUID": "1.2.*"})
    assert statuses[-1] == QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS and got == []
    # A named study still comes back, and a find with wildcards on patient names works for it.
    statuses, got = _get(node.port, "PACS", {"StudyInstanceUID": study})
    assert statuses[-1] == QRStatus.SUCCESS and len(got) == 2
    statuses, found = _find(node.port, "PACS", {"PatientName": "PAT*", "StudyInstanceUID": ""})
    assert statuses[-1] == QRStatus.SUCCESS and len(found) == 2
    assert "ANYONE" in node.log_text() and "not authorized" in node.log_text()


def test_storing_does_not_grant_reading_and_a_spoofed_ae_is_refused(
    served: list[ServedNode], tmp_path: Path
) -> None:
    """Row 10: allowlists on; a caller presenting an allowed AE title reads nothing; a destination's
    AE title from another address is refused too."""
    node = ServedNode(tmp_path, {"destinations": PACS,
                                 "node": {"allowed_calling_aets": ["MODALITY", "PACS"]}})
    served.append(node)
    study = _store_study(node, tmp_path / "a", "MODALITY", "PAT-A")
    statuses, found = _find(node.port, "MODALITY", {"StudyInstanceUID": "", "PatientID": ""})
    assert statuses == [QRStatus.NOT_AUTHORIZED] and found == []
    statuses, got = _get(node.port, "MODALITY", {"StudyInstanceUID": study})
    assert statuses[-1] == QRStatus.NOT_AUTHORIZED and got == []
    statuses, found = _find(node.port, "PACS", {"StudyInstanceUID": ""}, source="127.0.0.2")
    assert statuses == [QRStatus.NOT_AUTHORIZED] and found == []
    statuses, found = _find(node.port, "PACS", {"StudyInstanceUID": ""})
    assert statuses[-1] == QRStatus.SUCCESS and len(found) == 1


def test_callers_see_only_what_they_sent(served: list[ServedNode], tmp_path: Path) -> None:
    """visibility: own, and also_sees: a caller sees its own deliveries (plus those it is given)."""
    node = ServedNode(tmp_path, {"query_retrieve": {
        "allowed_calling_aets": ["MODA", "MODB", "VIEWER"], "visibility": "own",
        "also_sees": {"VIEWER": ["MODA", "MODB"]}}})
    served.append(node)
    study_a = _store_study(node, tmp_path / "a", "MODA", "PAT-A")
    study_b = _store_study(node, tmp_path / "b", "MODB", "PAT-B")
    _, found = _find(node.port, "MODA", {"StudyInstanceUID": "", "NumberOfStudyRelatedInstances": ""})
    assert [str(f.StudyInstanceUID) for f in found] == [study_a]
    _, got = _get(node.port, "MODA", {"StudyInstanceUID": study_b})
    assert got == []
    _, found = _find(node.port, "VIEWER", {"StudyInstanceUID": ""})
    assert {str(f.StudyInstanceUID) for f in found} == {study_a, study_b}
