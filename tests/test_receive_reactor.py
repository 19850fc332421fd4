"""The event-driven association threads (dicom_node/receive/reactor.py): open associations wait
without using the CPU, and the timers that used to be noticed by polling still fire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.acse import ACSE

from dicom_node.app.node import Node
from testkit import dicom_wire as wire
from tests.receive_helpers import counting_runner, free_port, make_ct_series, node_config

ECHO_CONTEXT = [(wire.VERIFICATION, [ImplicitVRLittleEndian])]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = node_config(tmp_path / "var", free_port(), limits={"idle_timeout_seconds": 1.5})
    with Node(config, runner=counting_runner, use_default_outbox=False) as running:
        yield running


def test_idle_associations_wait_without_polling(node: Node) -> None:
    """Four open, silent associations (eight pynetdicom threads): pynetdicom's own loops wake
    every millisecond each, some 0.2 s of CPU per second here; waiting threads use next to none."""
    clients = [wire.WireClient(node.port) for _ in range(4)]
    try:
        for client in clients:
            assert client.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
        time.sleep(0.2)
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(1.0)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert cpu < 0.05 * wall, f"{cpu:.3f} s of CPU in {wall:.2f} s with 4 idle associations"
        # Still served at once after the wait.
        assert clients[0].status(1, wire.echo_rq()) == 0
    finally:
        for client in clients:
            client.close()


def test_silent_association_is_aborted_at_the_idle_timeout(node: Node) -> None:
    """``node.limits.idle_timeout_seconds`` (pynetdicom's network timeout) ends an association
    that stays silent between PDUs: an A-ABORT, then the connection closes; one that keeps
    talking is not cut."""
    with wire.WireClient(node.port) as talking, wire.WireClient(node.port) as silent:
        assert talking.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
        assert silent.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
        start = time.monotonic()
        for _ in range(4):
            time.sleep(0.5)
            assert talking.status(1, wire.echo_rq()) == 0
        pdu_type, _ = silent.read_pdu()
        waited = time.monotonic() - start
        assert pdu_type == wire.A_ABORT
        assert 1.0 <= waited < 4.0, waited
        talking.release()
    wire.echo(node.port)  # the node still serves


@pytest.mark.parametrize("request_kind", ["C-ECHO", "C-STORE"])
def test_a_request_sent_as_soon_as_the_accept_arrives_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request_kind: str
) -> None:
    """A peer may send its first request the moment it reads the A-ASSOCIATE-AC, while the
    node's association thread is still handling the accept (pynetdicom marks the association
    established only after sending the AC and running the EVT_ACCEPTED handlers); pynetdicom's
    service classes answer nothing on an association not yet established. Such a request must
    wait for that thread, not be served at once on the DUL's thread and left unanswered (seen
    as one storescu in about a hundred waiting for the idle timeout on a loaded machine). Here
    the window is held open for 0.5 s after the AC is sent."""
    accept = ACSE.send_accept

    def slow_accept(self: ACSE) -> None:
        accept(self)
        time.sleep(0.5)

    monkeypatch.setattr(ACSE, "send_accept", slow_accept)
    (path,) = make_ct_series(tmp_path / "in", 1)
    ds = pydicom.dcmread(path)
    config = node_config(tmp_path / "var", free_port(), limits={"idle_timeout_seconds": 20})
    with Node(config, runner=counting_runner, use_default_outbox=False) as node:
        contexts = ECHO_CONTEXT if request_kind == "C-ECHO" else [(str(ds.SOPClassUID), [ExplicitVRLittleEndian])]
        with wire.WireClient(node.port, timeout=5.0) as client:
            assert client.associate(wire.associate_rq(contexts)).pdu_type == wire.A_ASSOCIATE_AC
            if request_kind == "C-ECHO":
                assert client.status(1, wire.echo_rq()) == 0
            else:
                data = wire.encode_dataset(ds)
                command = wire.store_rq(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
                assert client.status(1, command, data) == 0
                assert node.spool.instance_path(
                    str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)).is_file()
            client.release()
