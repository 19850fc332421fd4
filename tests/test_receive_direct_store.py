"""C-STORE served straight from its P-DATA-TF PDUs (dicom_node/receive/direct_store.py): the
command sets it reads and writes against pynetdicom's own encoder, and an in-process node on
real loopback sockets driven PDU by PDU, where this path and pynetdicom's differ in what they
answer (two requests in one PDU), where the path hands a message over (a command set in two
fragments), and where a peer breaks a message in the middle."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.app.node import Node
from dicom_node.receive.direct_store import StoreCommand, decode_store_command, encode_store_response
from dicom_node.receive.guard import GuardedSocket
from testkit import dicom_wire as wire
from testkit.crafted import ct_image
from tests.receive_helpers import counting_runner, free_port, node_config, wait_for

CT_CONTEXT = [(CTImageStorage, [ExplicitVRLittleEndian])]


def _pynetdicom_command(primitive: C_STORE, message: C_STORE_RQ | C_STORE_RSP) -> bytes:
    """The command set pynetdicom encodes for ``primitive`` (its PDV fragments joined)."""
    message.primitive_to_message(primitive)
    fragments = [pdv for p_data in message.encode_msg(1, 0) for _, pdv in p_data.presentation_data_value_list]
    return b"".join(pdv[1:] for pdv in fragments if pdv[0] & 1)


@pytest.mark.parametrize("status", [0x0000, 0xC000, 0xA700, 0x0110])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567"])
def test_response_is_what_pynetdicom_encodes(status: int, instance: str) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    expected = _pynetdicom_command(rsp, C_STORE_RSP())
    assert encode_store_response(StoreCommand(7, CTImageStorage, instance), status) == expected


def _request(**fields: object) -> bytes:
    rq = C_STORE()
    rq.MessageID = 12
    rq.AffectedSOPClassUID = CTImageStorage
    rq.AffectedSOPInstanceUID = "1.2.3.45"
    rq.Priority = 2
    for name, value in fields.items():
        setattr(rq, name, value)
    rq.DataSet = BytesIO(b"\x00\x00")
    return _pynetdicom_command(rq, C_STORE_RQ())


def test_request_decoding() -> None:
    assert decode_store_command(_request()) == StoreCommand(12, CTImageStorage, "1.2.3.45")
    moved = _request(MoveOriginatorApplicationEntityTitle="QRSCP", MoveOriginatorMessageID=3)
    assert decode_store_command(moved) == StoreCommand(12, CTImageStorage, "1.2.3.45")


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


@pytest.mark.parametrize("case", [
    "echo", "no_data_set", "bad_uid", "not_ascii", "unknown_element", "priority", "truncated", "repeated",
])
def test_requests_left_to_pynetdicom(case: str) -> None:
    """Anything but a plain C-STORE-RQ is None: pynetdicom validates, answers or aborts it."""
    plain = _request()
    command = {
        "echo": wire.echo_rq(),
        "no_data_set": plain.replace(_element(0x0800, struct.pack("<H", 0x0001)), _element(0x0800, b"\x01\x01")),
        "bad_uid": plain.replace(b"1.2.3.45", b"1.2.3.04"),
        "not_ascii": plain.replace(b"1.2.3.45", "1.2.\u00e945".encode("latin-1")),
        "unknown_element": plain + _element(0x0902, b"hi"),
        "priority": plain.replace(_element(0x0700, struct.pack("<H", 2)), _element(0x0700, struct.pack("<H", 9))),
        "truncated": plain[:-3],
        "repeated": plain + _element(0x0110, struct.pack("<H", 1)),
    }[case]
    assert command != plain
    assert decode_store_command(command) is None


# -- against a node -------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = node_config(tmp_path / "var", free_port(), limits={"read_timeout_seconds": 2.0})
    with Node(config, runner=counting_runner, use_default_outbox=False) as running:
        yield running


def _instance(size: int = 64) -> tuple[str, bytes]:
    ds = ct_image(np.arange(size * size, dtype=np.int16).reshape(size, size))
    return str(ds.SOPInstanceUID), wire.encode_dataset(ds)


def _pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context_id, control) + value


def _stored(node: Node) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in node.spool.root.glob("*/*/*.dcm")}


def _associated(node: Node) -> wire.WireClient:
    client = wire.WireClient(node.port)
    answer = client.associate(wire.associate_rq(CT_CONTEXT, max_pdu=1 << 20))
    assert answer.pdu_type == wire.A_ASSOCIATE_AC and 1 in answer.accepted, answer
    return client


def test_two_requests_in_one_pdu_are_both_stored_and_answered(node: Node) -> None:
    """PS3.8 9.3.5 lets a P-DATA-TF PDU carry any PDVs in order; pynetdicom stops reading a PDU
    at the end of the first message in it, so only this path answers the second."""
    (first, first_data), (second, second_data) = _instance(), _instance()
    pdvs = [
        _pdv(1, 3, wire.store_rq(CTImageStorage, first, message_id=1)),
        _pdv(1, 0, first_data[:1000]),
        _pdv(1, 2, first_data[1000:]),
        _pdv(1, 3, wire.store_rq(CTImageStorage, second, message_id=2)),
        _pdv(1, 2, second_data),
    ]
    with _associated(node) as client:
        client.send(wire.pdu(wire.P_DATA_TF, b"".join(pdvs)))
        answers = [client.read_response(), client.read_response()]
        assert [(int(a.MessageIDBeingRespondedTo), int(a.Status), a.AffectedSOPInstanceUID) for a in answers] == [
            (1, 0, first), (2, 0, second)]
        # The same association still serves through pynetdicom: a C-ECHO is not this path's.
        assert client.status(1, wire.echo_rq(3)) == 0
        client.release()
    stored = _stored(node)
    # The files hold the data sets as sent, after the file meta (PS3.10 7.1).
    assert stored[first].endswith(first_data) and stored[second].endswith(second_data)
    assert stored[first][128:132] == b"DICM"


def test_requests_sent_back_to_back_are_all_answered(node: Node) -> None:
    """Five requests in one write: each PDU header after the first is already in the guarded
    socket's read-ahead (or the kernel's buffer) when the one before it is served."""
    instances = [_instance(32) for _ in range(5)]
    with _associated(node) as client:
        client.send([pdu for n, (sop, data) in enumerate(instances, 1)
                     for pdu in wire.p_data(1, wire.store_rq(CTImageStorage, sop, n), data, 8192)])
        answers = [client.read_response() for _ in instances]
        assert [int(a.Status) for a in answers] == [0] * 5
        assert [int(a.MessageIDBeingRespondedTo) for a in answers] == [1, 2, 3, 4, 5]
        client.release()
    assert sorted(_stored(node)) == sorted(sop for sop, _ in instances)


def test_data_sets_of_different_sizes_on_one_association(node: Node) -> None:
    """Each data set is read into the association's buffer, reused and grown from one message
    to the next: a larger, a smaller, then a much larger instance, each over many PDUs."""
    instances = [_instance(64), _instance(16), _instance(256)]
    with _associated(node) as client:
        for message_id, (sop, data) in enumerate(instances, 1):
            assert client.status(1, wire.store_rq(CTImageStorage, sop, message_id), data, max_pdu=4096) == 0
        client.release()
    stored = _stored(node)
    for sop, data in instances:
        # The data set as sent, after a file meta group padded to whole 4 KB blocks (file_meta.py).
        assert stored[sop].endswith(data) and len(stored[sop]) < len(data) + 400 + 4096
        assert len(stored[sop]) % 4096 == 0


def test_command_in_two_fragments_is_served_by_pynetdicom(node: Node) -> None:
    sop, data = _instance()
    command = wire.store_rq(CTImageStorage, sop)
    with _associated(node) as client:
        client.send([
            wire.pdu(wire.P_DATA_TF, _pdv(1, 1, command[:20])),
            wire.pdu(wire.P_DATA_TF, _pdv(1, 3, command[20:])),
            wire.pdu(wire.P_DATA_TF, _pdv(1, 2, data)),
        ])
        assert int(client.read_response().Status) == 0
        client.release()
    assert _stored(node)[sop].endswith(data)


@pytest.mark.parametrize("breach", ["command_among_data", "other_context"])
def test_message_broken_mid_way_aborts_the_association(node: Node, breach: str) -> None:
    sop, data = _instance()
    with _associated(node) as client:
        client.send(wire.pdu(wire.P_DATA_TF, _pdv(1, 3, wire.store_rq(CTImageStorage, sop)) + _pdv(1, 0, data[:500])))
        broken = _pdv(1, 3, wire.echo_rq()) if breach == "command_among_data" else _pdv(3, 2, data[500:])
        client.send(wire.pdu(wire.P_DATA_TF, broken))
        pdu_type, _ = client.read_pdu()
        assert pdu_type == wire.A_ABORT
    assert wait_for(lambda: node.refusals().get("malformed_message") == 1, 5)
    assert not _stored(node)
    # The node goes on: a new association stores the same instance.
    assert wire.store(node.port, data, CTImageStorage, sop) == 0
    assert list(_stored(node)) == [sop]


def test_refused_instance_is_answered_and_counted(node: Node) -> None:
    """The same refusal as through pynetdicom: the request names another instance (0xC000)."""
    sop, data = _instance()
    other = generate_uid()
    with _associated(node) as client:
        client.send(wire.pdu(wire.P_DATA_TF, _pdv(1, 3, wire.store_rq(CTImageStorage, other)) + _pdv(1, 2, data)))
        assert int(client.read_response().Status) == 0xC000
        client.send(wire.pdu(wire.P_DATA_TF, _pdv(1, 3, wire.store_rq(CTImageStorage, sop, 2)) + _pdv(1, 2, data)))
        assert int(client.read_response().Status) == 0
        client.release()
    assert wait_for(lambda: node.refusals().get("refused_instance") == 1, 5)
    assert list(_stored(node)) == [sop]


def test_data_set_fragments_sent_with_pauses_between_pdus(node: Node) -> None:
    """Between the PDUs of a data set the node first reads what has arrived without waiting,
    and waits in ``poll`` only when nothing has: fragments sent at once, then after pauses (each
    under the read timeout), make up the same stored instance."""
    sop, data = _instance(128)
    pdus = wire.p_data(1, wire.store_rq(CTImageStorage, sop), data, 4096)
    with _associated(node) as client:
        client.send(pdus[:4])
        for pdu in pdus[4:8]:
            time.sleep(0.3)
            client.send(pdu)
        client.send(pdus[8:])
        assert int(client.read_response().Status) == 0
        client.release()
    assert _stored(node)[sop].endswith(data)


def test_peer_closing_in_the_middle_of_a_data_set(node: Node) -> None:
    """The connection closes between two fragments of a data set: nothing is stored or
    answered, and the node goes on serving."""
    sop, data = _instance(128)
    pdus = wire.p_data(1, wire.store_rq(CTImageStorage, sop), data, 4096)
    client = _associated(node)
    client.send(pdus[: len(pdus) // 2])
    time.sleep(0.3)
    client.close()
    time.sleep(0.3)
    assert not _stored(node)
    assert wire.store(node.port, data, CTImageStorage, sop) == 0
    assert list(_stored(node)) == [sop]


def test_read_ahead_now_takes_what_arrived_and_never_waits() -> None:
    """GuardedSocket.read_ahead_now on a real socket pair: nothing there -> False at once;
    bytes there -> True and kept for the next read; the peer gone -> True (the read finds the
    end); before the association is answered it reads nothing."""
    ours, peer = socket.socketpair()
    try:
        guarded = GuardedSocket.__new__(GuardedSocket)
        guarded.socket, guarded._ahead, guarded._dropped, guarded._answered = ours, b"", False, False
        peer.sendall(b"early")
        assert not guarded.read_ahead_now() and guarded._ahead == b""  # not answered yet
        guarded._answered = True
        assert guarded.read_ahead_now() and guarded._ahead == b"early"
        assert guarded.read_ahead_now() and guarded._ahead == b"early"  # nothing read twice
        guarded._ahead = b""
        start = time.monotonic()
        assert not guarded.read_ahead_now()
        assert time.monotonic() - start < 0.1
        peer.sendall(b"late")
        ours.settimeout(1.0)  # Python's timeout (a TLS-less socket not set up by the gate): not read
        assert not guarded.read_ahead_now() and guarded._ahead == b""
        ours.settimeout(None)
        assert guarded.read_ahead_now() and guarded._ahead == b"late"
        guarded._ahead = b""
        peer.close()
        assert guarded.read_ahead_now() and guarded._ahead == b""
    finally:
        ours.close()
        peer.close()
