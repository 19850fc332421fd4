"""Upper-layer protocol abuse the fuzzer found or the limits promise, against an in-process node
on real loopback sockets: association counts, a stall in the middle of a PDU, malformed requests
and DIMSE messages that used to leave pynetdicom's threads dead and the association slot taken."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from dicom_node.app.node import Node
from testkit import dicom_wire as wire
from tests.receive_helpers import counting_runner, free_port, node_config, wait_for

ECHO_CONTEXT = [(wire.VERIFICATION, [ImplicitVRLittleEndian])]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = node_config(tmp_path / "var", free_port(), limits={
        "max_associations": 6, "max_associations_per_peer": 4, "read_timeout_seconds": 1.0,
        "associate_timeout_seconds": 2.0,
    })
    with Node(config, runner=counting_runner, use_default_outbox=False) as running:
        yield running


def _held(port: int, count: int, source: str | None = None) -> list[wire.WireClient]:
    """``count`` established associations left open."""
    clients = []
    for _ in range(count):
        client = wire.WireClient(port, source=source)
        answer = client.associate(wire.associate_rq(ECHO_CONTEXT))
        assert answer.pdu_type == wire.A_ASSOCIATE_AC, answer
        clients.append(client)
    return clients


def test_association_limits_per_peer_and_in_total(node: Node) -> None:
    held = _held(node.port, 4)
    try:
        with wire.WireClient(node.port) as fifth:
            answer = fifth.associate(wire.associate_rq(ECHO_CONTEXT))
        assert answer.reject == (2, 3, 2)  # transient, service provider, local limit exceeded
        held += _held(node.port, 2, source="127.0.0.2")  # another address: 6 in total
        with wire.WireClient(node.port, source="127.0.0.3") as seventh:
            assert seventh.associate(wire.associate_rq(ECHO_CONTEXT)).reject == (2, 3, 2)
    finally:
        for client in held:
            client.close()
    assert wait_for(lambda: _echo_ok(node.port), 10)
    counts = node.refusals()  # more refusals while the held associations close: >= 1
    assert counts["too_many_per_peer"] >= 1 and counts["too_many_associations"] >= 1


def _slots_free(port: int, count: int) -> bool:
    """Whether ``count`` associations can be established at once (all closed again)."""
    clients: list[wire.WireClient] = []
    try:
        for _ in range(count):
            clients.append(wire.WireClient(port))
            if clients[-1].associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type != wire.A_ASSOCIATE_AC:
                return False
        return True
    finally:
        for client in clients:
            client.close()


def _echo_ok(port: int) -> bool:
    try:
        wire.echo(port)
    except (ConnectionError, OSError):
        return False
    return True


def test_stall_in_the_middle_of_a_pdu_is_dropped(node: Node) -> None:
    with wire.WireClient(node.port) as client:
        assert client.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
        client.send(b"\x04\x00\x00\x00\x01\x00\x00")  # a P-DATA-TF header announcing 256 bytes, 1 sent
        client.sock.settimeout(10)
        pdu_type, _ = client.read_pdu()  # the node's A-ABORT, after read_timeout_seconds
        assert pdu_type == wire.A_ABORT
    assert wait_for(lambda: node.refusals().get("read_timeout") == 1, 5)


def _command_without_command_field() -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = wire.VERIFICATION
    ds.MessageID = 1
    ds.CommandDataSetType = 0x0101
    return wire.command_set(ds)


@pytest.mark.parametrize("attack", ["no_command_field", "garbage_after_rq", "context_without_syntax"])
def test_malformed_traffic_does_not_leak_associations(node: Node, attack: str) -> None:
    """Each of these once left an association (and its slot) held for ever; 12 of them, with a
    limit of 4 per peer, would lock the peer out."""
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            if attack == "no_command_field":
                sock.sendall(wire.associate_rq(ECHO_CONTEXT))
                sock.recv(4096)
                sock.sendall(b"".join(wire.p_data(1, _command_without_command_field())))
            elif attack == "garbage_after_rq":
                sock.sendall(wire.associate_rq(ECHO_CONTEXT) + b"\x04\x00\x00\x00\x00\x08" + b"\xff" * 8)
            else:  # a presentation context with a transfer syntax but no abstract syntax sub-item
                context = wire.item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + wire.item(0x40, b"1.2.840.10008.1.2"))
                body = (struct.pack(">HH", 1, 0) + b"MMEDNODE".ljust(16) + b"WIRE".ljust(16) + bytes(32)
                        + wire.item(0x10, wire.APPLICATION_CONTEXT.encode()) + context
                        + wire.item(0x50, wire.item(0x51, struct.pack(">L", 16384))))
                sock.sendall(wire.pdu(wire.A_ASSOCIATE_RQ, body))
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    assert wait_for(lambda: _echo_ok(node.port), 10)
    # Every slot is free again: at once, or as soon as the node has closed the connections it
    # just answered (the peer can read the last answer a moment before the node closes).
    assert wait_for(lambda: _slots_free(node.port, 4), 5)
