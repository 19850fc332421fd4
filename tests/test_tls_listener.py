"""DICOM TLS on the node's listener (PS3.15 B.1) with client-certificate verification.

The right client certificate associates (pynetdicom through the node's own sender, and dcmtk);
a certificate from another CA, no certificate, and a plain TCP association all fail cleanly,
the refusal is logged with its reason, and the listener keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from config.schema import DestinationConfig, TLSConfig
from dicom_node.app.node import Node
from dicom_node.deliver.sender import send_files
from dicom_node.tls import TLSSetupError, server_tls_context
from tests.qr_helpers import dcmtk, node_config
from tests.receive_helpers import counting_runner, free_port, make_ct_series, wait_for
from tests.tls_helpers import Certs, make_certs


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-receivers"])
def tls_node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The node receiving in its own process, and in two receiver processes (each with its own
    TLS context from the same files; Q/R served by the receivers)."""
    tmp = tmp_path_factory.mktemp("tls")
    certs = make_certs(tmp / "certs")
    config = node_config(tmp, free_port(), {}, node={"tls": {
        "enabled": True, "cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
        "ca_file": str(certs.ca), "verify_peer": True,
    }, "receivers": request.param}, query_retrieve={"allowed_calling_aets": ["FINDSCU"]})
    node = Node(config, runner=counting_runner)
    node.start()
    try:
        yield {"node": node, "certs": certs, "tmp": tmp}
    finally:
        node.stop()


def _dest(port: int, certs: Certs, cert: Path | None, key: Path | None) -> DestinationConfig:
    return DestinationConfig(
        ae_title="MMEDNODE", host="127.0.0.1", port=port,
        tls=TLSConfig(enabled=True, cert_file=cert, key_file=key, ca_file=certs.ca, verify_peer=True),
    )


def test_right_client_certificate_stores(tls_node: dict[str, Any]) -> None:
    node, certs, tmp = tls_node["node"], tls_node["certs"], tls_node["tmp"]
    files = make_ct_series(tmp / "ok", n=3)
    report = send_files(_dest(node.port, certs, certs.client_cert, certs.client_key), files, "WORKSTN")
    assert report.ok, report
    job = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished])[0]
    assert job.instance_count == 3


def test_dcmtk_echo_over_tls(tls_node: dict[str, Any]) -> None:
    node, certs = tls_node["node"], tls_node["certs"]
    ok = dcmtk("echoscu", ["+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca),
                           "-aec", "MMEDNODE", "127.0.0.1", str(node.port)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rogue = dcmtk("echoscu", ["+tls", str(certs.rogue_key), str(certs.rogue_cert), "+cf", str(certs.ca),
                              "-aec", "MMEDNODE", "127.0.0.1", str(node.port)])
    assert rogue.returncode != 0


@pytest.mark.parametrize("who", ["rogue", "none"])
def test_wrong_or_missing_client_certificate_fails(
    tls_node: dict[str, Any], who: str, caplog: pytest.LogCaptureFixture
) -> None:
    node, certs, tmp = tls_node["node"], tls_node["certs"], tls_node["tmp"]
    cert, key = (certs.rogue_cert, certs.rogue_key) if who == "rogue" else (None, None)
    before = node.refusals().get("tls_handshake", 0)
    caplog.set_level(logging.WARNING, logger="dicom_node.receive.refusals")
    report = send_files(_dest(node.port, certs, cert, key), make_ct_series(tmp / who, n=1), "INTRUDER")
    assert not report.ok and report.association_error
    if node.receivers is not None:  # logged by the receiver process; counted by the node
        assert wait_for(lambda: node.refusals().get("tls_handshake", 0) >= before + 1)
        return
    refusals = wait_for(lambda: [r for r in caplog.records
                                 if "dropped peer 127.0.0.1" in r.getMessage() and "TLS handshake" in r.getMessage()])
    assert "CERTIFICATE" in refusals[0].getMessage().upper()


def test_plain_association_to_tls_port_fails_cleanly(
    tls_node: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    node, certs, tmp = tls_node["node"], tls_node["certs"], tls_node["tmp"]
    before = node.refusals().get("tls_handshake", 0)
    caplog.set_level(logging.WARNING, logger="dicom_node.receive.refusals")
    plain = DestinationConfig(ae_title="MMEDNODE", host="127.0.0.1", port=node.port)
    report = send_files(plain, make_ct_series(tmp / "plain", n=1), "PLAIN", timeout=10)
    assert not report.ok and report.association_error
    if node.receivers is None:
        assert wait_for(lambda: [r for r in caplog.records if "not a TLS client" in r.getMessage()])
    assert wait_for(lambda: node.refusals().get("tls_handshake", 0) >= before + 1)
    echo = dcmtk("echoscu", ["-to", "10", "-aec", "MMEDNODE", "127.0.0.1", str(node.port)])
    assert echo.returncode != 0
    # The listener still serves TLS clients afterwards.
    again = send_files(_dest(node.port, certs, certs.client_cert, certs.client_key),
                       make_ct_series(tmp / "again", n=1), "WORKSTN")
    assert again.ok, again


def test_missing_key_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="key_file"):
        server_tls_context(TLSConfig(enabled=True, cert_file=tmp_path / "x.pem", verify_peer=False))


def test_query_over_tls(tls_node: dict[str, Any]) -> None:
    """Q/R shares the listener: dcmtk findscu with the right certificate finds the stored study."""
    node, certs, tmp = tls_node["node"], tls_node["certs"], tls_node["tmp"]
    send_files(_dest(node.port, certs, certs.client_cert, certs.client_key),
               make_ct_series(tmp / "query", n=2, study_uid="1.2.826.0.1.3680043.10.999.1"), "WORKSTN")
    out = tmp / "found"
    out.mkdir()
    proc = dcmtk("findscu", ["+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca),
                             "-S", "-aec", "MMEDNODE", "-X", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.10.999.1",
                             "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(node.port)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert int(found.NumberOfStudyRelatedInstances) == 2
