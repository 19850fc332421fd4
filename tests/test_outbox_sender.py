"""The one C-STORE SCU against dcmtk storescp: statuses, syntaxes, refusals, TLS."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000, ImplicitVRLittleEndian
from pynetdicom import AE

from config.schema import DestinationConfig
from dicom_node.deliver.sender import send_files
from dicom_node.status import Status
from tests.outbox_helpers import (
    StoreSCP,
    free_port,
    make_tls_files,
    payload,
    sop_instance_uid,
)

PATIENT_NAME = "CompressedSamples"  # in CT_small.dcm; must never reach the log


@pytest.fixture
def scps() -> Iterator[list[StoreSCP]]:
    started: list[StoreSCP] = []
    yield started
    for scp in started:
        scp.stop()


def start(scps: list[StoreSCP], folder: Path, *extra: str, ae: str = "PACS") -> StoreSCP:
    scp = StoreSCP(folder, free_port(), ae_title=ae, extra=list(extra)).start()
    scps.append(scp)
    return scp


def dest(port: int, **extra: Any) -> DestinationConfig:
    return DestinationConfig.model_validate(
        {"ae_title": "PACS", "host": "127.0.0.1", "port": port, **extra})


def test_per_file_status_one_association(tmp_path: Path, scps: list[StoreSCP],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dicom_node")
    scp = start(scps, tmp_path / "pacs")
    files = payload(tmp_path / "in", "CT_small.dcm", "MR_small.dcm", "liver.dcm")
    report = send_files(dest(scp.port), files, "MMEDNODE", timeout=5)
    assert report.ok and report.association_error is None
    assert [f.status for f in report.files] == [Status.SUCCESS] * 3
    assert [f.sop_instance_uid for f in report.files] == [sop_instance_uid(f) for f in files]
    assert set(scp.received()) == {sop_instance_uid(f) for f in files}
    assert PATIENT_NAME not in caplog.text
    assert "3/3" in caplog.text


def test_uncompressed_file_converted_to_the_accepted_syntax(tmp_path: Path,
                                                            scps: list[StoreSCP]) -> None:
    scp = start(scps, tmp_path / "pacs", "+xi")  # accepts Implicit VR Little Endian only
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")  # stored as Explicit VR Little Endian
    report = send_files(dest(scp.port), [ct], "MMEDNODE", timeout=5)
    assert report.ok, report
    stored = dcmread(scp.received()[sop_instance_uid(ct)])
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.pixel_array.shape == dcmread(ct).pixel_array.shape


def test_compressed_file_sent_as_stored(tmp_path: Path, scps: list[StoreSCP]) -> None:
    scp = start(scps, tmp_path / "pacs", "+xa")
    (j2k,) = payload(tmp_path / "in", "JPEG2000.dcm")
    report = send_files(dest(scp.port), [j2k], "MMEDNODE", timeout=5)
    assert report.ok, report
    stored = dcmread(scp.received()[sop_instance_uid(j2k)])
    assert stored.file_meta.TransferSyntaxUID == JPEG2000
    assert stored.PixelData == dcmread(j2k).PixelData  # not transcoded


def test_refused_syntax_is_permanent_per_file(tmp_path: Path, scps: list[StoreSCP]) -> None:
    scp = start(scps, tmp_path / "pacs")  # default: uncompressed only
    ct, j2k = payload(tmp_path / "in", "CT_small.dcm", "JPEG2000.dcm")
    report = send_files(dest(scp.port), [ct, j2k], "MMEDNODE", timeout=5)
    assert not report.ok and report.association_error is None
    by_name = {f.path.name: f for f in report.files}
    assert by_name["CT_small.dcm"].delivered
    refused = by_name["JPEG2000.dcm"]
    assert refused.status is None and refused.permanent and "JPEG 2000" in (refused.error or "")


def test_rejected_association_says_why(tmp_path: Path, scps: list[StoreSCP],
                                       caplog: pytest.LogCaptureFixture) -> None:
    scp = start(scps, tmp_path / "pacs", "--refuse")
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")
    # The production timeout: on a loaded CI machine 5 s was seen to expire before the reply.
    report = send_files(dest(scp.port), [ct], "MMEDNODE", timeout=30)
    assert report.association_error and "rejected by PACS@127.0.0.1" in report.association_error
    assert "reason" in report.association_error
    assert not report.files[0].delivered and not report.files[0].permanent
    assert report.association_error in caplog.text
    assert PATIENT_NAME not in caplog.text


def test_nobody_listening_and_unreadable_file(tmp_path: Path) -> None:
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    report = send_files(dest(free_port()), [ct, junk], "MMEDNODE", timeout=2)
    assert report.association_error and "cannot connect" in report.association_error
    by_name = {f.path.name: f for f in report.files}
    assert by_name["junk.dcm"].permanent and "file meta" in (by_name["junk.dcm"].error or "")
    assert not by_name["CT_small.dcm"].permanent


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def tls_scp(scps: list[StoreSCP], folder: Path, tls: dict[str, Path]) -> StoreSCP:
    # +tls key cert; +cf trusted CA; -rc (default) requires a client certificate
    return start(scps, folder, "+tls", str(tls["server.key"]), str(tls["server.pem"]),
                 "+cf", str(tls["ca.pem"]))


def test_tls_with_client_certificate(tmp_path: Path, scps: list[StoreSCP],
                                     tls_files: dict[str, Path]) -> None:
    scp = tls_scp(scps, tmp_path / "pacs", tls_files)
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")
    tls = {"enabled": True, "ca_file": str(tls_files["ca.pem"]),
           "cert_file": str(tls_files["client.pem"]), "key_file": str(tls_files["client.key"])}
    report = send_files(dest(scp.port, tls=tls), [ct], "MMEDNODE", timeout=5)
    assert report.ok, report
    assert set(scp.received()) == {sop_instance_uid(ct)}


@pytest.mark.parametrize("case", ["no-client-cert", "wrong-ca", "plain-to-tls"])
def test_tls_failures_are_clean(case: str, tmp_path: Path, scps: list[StoreSCP],
                                tls_files: dict[str, Path]) -> None:
    scp = tls_scp(scps, tmp_path / "pacs", tls_files)
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")
    tls: dict[str, Any] = {"enabled": True, "ca_file": str(tls_files["ca.pem"]),
                           "cert_file": str(tls_files["client.pem"]),
                           "key_file": str(tls_files["client.key"])}
    if case == "no-client-cert":
        del tls["cert_file"], tls["key_file"]
    elif case == "wrong-ca":
        tls["ca_file"] = str(tls_files["other-ca.pem"])
    else:
        tls = {"enabled": False}
    report = send_files(dest(scp.port, tls=tls), [ct], "MMEDNODE", timeout=3)
    assert not report.ok
    assert report.association_error
    assert scp.received() == {}


def test_status_from_a_pynetdicom_pacs(tmp_path: Path) -> None:
    """A PACS answering Duplicate SOP Instance (already held: delivered) and Out of Resources
    (a failure worth retrying, named in the error)."""
    from pynetdicom import AE, evt
    from pynetdicom.events import Event
    from pynetdicom.presentation import AllStoragePresentationContexts

    ct, mr = payload(tmp_path / "in", "CT_small.dcm", "MR_small.dcm")
    answers = {sop_instance_uid(ct): Status.DUPLICATE_SOP_INSTANCE,
               sop_instance_uid(mr): Status.OUT_OF_RESOURCES}

    def on_store(event: Event) -> int:
        return int(answers[str(event.dataset.SOPInstanceUID)])

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        report = send_files(dest(port), [ct, mr], "MMEDNODE", timeout=5)
    finally:
        server.shutdown()
    first, second = report.files
    assert first.status == Status.DUPLICATE_SOP_INSTANCE and first.delivered
    assert second.status == Status.OUT_OF_RESOURCES and not second.delivered
    assert not second.permanent and "OUT_OF_RESOURCES" in (second.error or "")


def test_reject_seen_on_the_wire_is_reported_when_pynetdicom_aborted_first() -> None:
    """storescp --refuse sends A-ASSOCIATE-RJ and closes at once; under load pynetdicom can see
    the closed socket before it takes the reply and aborts (seen in CI). The reject PDU kept by
    the EVT_PDU_RECV handler still gives the reason."""
    from pynetdicom.association import Association
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    from dicom_node.deliver.association import describe_failure

    assoc = Association(AE(), "requestor")
    reject = A_ASSOCIATE_RJ()
    reject.result, reject.source, reject.reason_diagnostic = 0x01, 0x01, 0x07
    message, permanent = describe_failure(assoc, dest(4242), reject)
    assert message.startswith("association rejected by PACS@127.0.0.1:4242")
    assert "Called AE title not recognised" in message and not permanent
    assert describe_failure(assoc, dest(4242))[0].startswith("cannot connect to PACS@127.0.0.1:4242")
