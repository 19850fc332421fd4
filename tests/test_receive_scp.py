"""The storage SCP against real dcmtk peers (storescu, echoscu) on free loopback ports."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE

from dicom_node import status
from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from dicom_node.receive.scp import quiet_protocol_summaries
from tests.receive_helpers import (
    counting_runner,
    echoscu,
    free_port,
    make_ct_series,
    node_config,
    storescu,
    wait_for,
)


def dataset_bytes(raw: bytes) -> bytes:
    """The dataset part of a Part 10 stream (after preamble, prefix and file meta group)."""
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value
    return raw[144 + group_length :]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def start(**node_overrides: Any) -> Node:
        config = node_config(tmp_path / "var", free_port(), **node_overrides)
        node = Node(config, runner=counting_runner, use_default_outbox=False)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def spooled(node: Node) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in node.spool.root.rglob("*.dcm")}


def test_echo_and_series_stored_as_received(start_node: Any, tmp_path: Path) -> None:
    node = start_node()
    assert echoscu(node.port).returncode == 0
    files = make_ct_series(tmp_path / "ct", 4)
    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    stored = spooled(node)
    assert len(stored) == 4
    for path in files:
        raw = path.read_bytes()
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        # Bytes as received, not re-encoded.
        assert dataset_bytes(stored[sop]) == dataset_bytes(raw)
    record = wait_for(lambda: next(iter(node.jobs.all()), None))
    record = wait_for(
        lambda: (r := node.jobs.load(record.job_id)).state is JobState.DONE and r
    )
    assert record.instance_count == 4 and record.route == "ct-count"
    assert record.calling_ae == "STORESCU"


def test_duplicate_instance_stored_and_counted_once(
    start_node: Any, tmp_path: Path
) -> None:
    node = start_node()
    files = make_ct_series(tmp_path / "ct", 3)
    # A duplicate inside one association.
    first = storescu(node.port, [*files, files[0]])
    assert first.returncode == 0, first.stderr
    (record,) = wait_for(
        lambda: [r for r in node.jobs.all() if r.state is JobState.DONE]
    )
    again = storescu(node.port, files[:2])  # and a re-send on a later association
    assert again.returncode == 0
    assert len(spooled(node)) == 3
    assert record.instance_count == 3
    # Well past the quiet period: the unchanged instance set must not re-run.
    time.sleep(1.0)
    assert [r.job_id for r in node.jobs.all()] == [record.job_id]


def test_disallowed_calling_ae_is_rejected(start_node: Any, tmp_path: Path) -> None:
    node = start_node(allowed_calling_aets=["GOODPACS"])
    files = make_ct_series(tmp_path / "ct", 2)
    bad = storescu(node.port, files, calling_ae="EVILPACS")
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr + bad.stdout
    assert spooled(node) == {}
    good = storescu(node.port, files, calling_ae="GOODPACS")
    assert good.returncode == 0, good.stderr
    assert len(spooled(node)) == 2


def test_disallowed_peer_address_is_rejected(start_node: Any) -> None:
    node = start_node(allowed_peer_addresses=["10.11.12.13"])
    result = echoscu(node.port)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout


def test_corrupt_instance_fails_alone(start_node: Any, tmp_path: Path) -> None:
    node = start_node()
    good = make_ct_series(tmp_path / "ct", 2)
    ds = pydicom.dcmread(good[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    del ds.SeriesInstanceUID  # the node cannot place this instance in a series
    broken = tmp_path / "no_series.dcm"
    ds.save_as(broken, enforce_file_format=True)
    result = storescu(node.port, [good[0], broken, good[1]], options=["-v"])
    responses = [
        line for line in result.stderr.splitlines() if "Store Response" in line
    ]
    assert responses == [
        "I: Received Store Response (Success)",
        "I: Received Store Response (Error: CannotUnderstand)",
        "I: Received Store Response (Success)",
    ]
    assert len(spooled(node)) == 2 and "1.2.3.999" not in spooled(node)

    # A truncated dataset whose Study Instance UID element claims 32 kB that never come, sent raw
    # by a pynetdicom SCU (it sends a file's bytes without re-encoding them).
    garbage = tmp_path / "truncated.dcm"
    raw = good[0].read_bytes()
    cut = raw.index(b"\x20\x00\x0d\x00UI", len(raw) - len(dataset_bytes(raw)))
    garbage.write_bytes(raw[:cut] + b"\x20\x00\x0d\x00UI\xff\x7f" + b"1.2.3")
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(
        pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian
    )
    assoc = ae.associate("127.0.0.1", node.port, ae_title="MMEDNODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(garbage)
        assert rsp.Status == status.CANNOT_UNDERSTAND
        rsp_ok = assoc.send_c_store(good[1])  # same association still works afterwards
        assert rsp_ok.Status == status.SUCCESS
    finally:
        assoc.release()
    assert echoscu(node.port).returncode == 0
    assert len(spooled(node)) == 2


def test_real_files_including_jpeg2000_stay_compressed_and_decode(
    start_node: Any,
) -> None:
    node = start_node()
    ct_small = Path(get_testdata_file("CT_small.dcm"))
    j2k = Path(get_testdata_file("RG1_J2KR.dcm"))
    assert storescu(node.port, [ct_small]).returncode == 0
    # Propose JPEG 2000 lossless: sent as is.
    sent = storescu(node.port, [j2k], options=["-xv"])
    assert sent.returncode == 0, sent.stderr
    stored = {p.stem: p for p in node.spool.root.rglob("*.dcm")}
    for source in (ct_small, j2k):
        original = pydicom.dcmread(source)
        copy = pydicom.dcmread(stored[str(original.SOPInstanceUID)])
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert np.array_equal(copy.pixel_array, original.pixel_array)
    j2k_copy = pydicom.dcmread(
        stored[str(pydicom.dcmread(j2k, stop_before_pixels=True).SOPInstanceUID)]
    )
    assert j2k_copy.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert j2k_copy.pixel_array.shape == (1955, 1841)
    # The CR goes nowhere (only a CT route exists): it is kept and recorded as unrouted, with why.
    records = wait_for(lambda: len(node.jobs.all()) == 2 and node.jobs.all())
    unrouted = [r for r in records if r.state is JobState.UNROUTED]
    assert len(unrouted) == 1 and "Modality" in (unrouted[0].error or "")


def test_non_image_sop_class_is_refused_at_negotiation(
    start_node: Any, tmp_path: Path
) -> None:
    """A SOP class the node does not store (here Raw Data) gets no accepted presentation context
    (PS3.8 9.3.3.2: abstract syntax not supported); the other instances still go through."""
    node = start_node()
    good = make_ct_series(tmp_path / "ct", 1)
    raw = pydicom.dcmread(good[0])
    raw.SOPClassUID = raw.file_meta.MediaStorageSOPClassUID = pydicom.uid.RawDataStorage
    raw.SOPInstanceUID = raw.file_meta.MediaStorageSOPInstanceUID = (
        pydicom.uid.generate_uid()
    )
    raw_file = tmp_path / "raw.dcm"
    raw.save_as(raw_file, enforce_file_format=True)
    result = storescu(node.port, [raw_file, *good], options=["-v"])
    assert (
        "No presentation context" in result.stderr
        or "no presentation context" in result.stderr.lower()
    )
    assert set(spooled(node)) == {str(pydicom.dcmread(good[0]).SOPInstanceUID)}


@pytest.mark.parametrize(("level", "bound"), [(logging.WARNING, False), (logging.INFO, True), (logging.DEBUG, True)])
def test_protocol_summaries_only_when_pynetdicom_would_log_them(level: int, bound: bool) -> None:
    """pynetdicom's PDU and DIMSE summary handlers are bound to an association only when its
    logger prints INFO (``-vv``, ``node.log_phi``); otherwise they build text nobody reads."""
    from pynetdicom import _config as pynetdicom_config
    from pynetdicom import evt
    from pynetdicom._handlers import standard_dimse_recv_handler, standard_pdu_recv_handler
    from pynetdicom.association import Association

    logger = logging.getLogger("pynetdicom")
    before = logger.level, pynetdicom_config.LOG_HANDLER_LEVEL
    logger.setLevel(level)
    try:
        quiet_protocol_summaries()
        assoc = Association(AE(), "acceptor")
        pdu_handlers = [handler for handler, _ in assoc.get_handlers(evt.EVT_PDU_RECV)]
        dimse_handlers = [handler for handler, _ in assoc.get_handlers(evt.EVT_DIMSE_RECV)]
    finally:
        logger.setLevel(before[0])
        pynetdicom_config.LOG_HANDLER_LEVEL = before[1]
    assert (standard_pdu_recv_handler in pdu_handlers) is bound
    assert (standard_dimse_recv_handler in dimse_handlers) is bound
