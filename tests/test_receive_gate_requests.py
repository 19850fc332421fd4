"""The gate keeps the A-ASSOCIATE-RQs it decoded (gate.py ``DecodedRequests``): a sender that
repeats its request byte for byte is decoded once, and every association still negotiates as its
own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.app.node import Node
from dicom_node.receive.gate import CheckedRQ, DecodedRequests
from testkit import dicom_wire as wire
from testkit.crafted import ct_image
from tests.receive_helpers import counting_runner, free_port, node_config

CONTEXTS = [(wire.VERIFICATION, [ImplicitVRLittleEndian]), (CTImageStorage, [ExplicitVRLittleEndian])]


def _rq(calling: str = "WIRE") -> bytes:
    return wire.associate_rq(CONTEXTS, calling)


def _checked(result: CheckedRQ | str) -> CheckedRQ:
    assert isinstance(result, CheckedRQ), result
    return result


def test_a_repeated_request_is_decoded_once() -> None:
    requests = DecodedRequests()
    first = _checked(requests.check(_rq()))
    assert requests.check(_rq()) is first  # equal bytes, another object: the same decode
    other = _checked(requests.check(_rq("OTHER")))
    assert other is not first
    assert other.primitive.calling_ae_title == "OTHER"
    assert first.primitive.calling_ae_title == "WIRE"
    assert len(requests) == 2


def test_a_request_that_does_not_decode_is_not_kept() -> None:
    requests = DecodedRequests()
    broken = _rq()[:-7]  # the user information item cut short
    assert isinstance(requests.check(broken), str)
    assert isinstance(requests.check(broken), str)
    assert len(requests) == 0


def test_the_requests_kept_are_bounded_in_number_and_bytes() -> None:
    requests = DecodedRequests(entries=2, total_bytes=10 * len(_rq()))
    a = _checked(requests.check(_rq("A")))
    b = _checked(requests.check(_rq("B")))
    assert requests.check(_rq("A")) is a  # A is now the most recently used
    requests.check(_rq("C"))
    assert len(requests) == 2
    assert requests.check(_rq("A")) is a
    assert requests.check(_rq("B")) is not b  # B was the least recently used: decoded again

    small = DecodedRequests(entries=16, total_bytes=len(_rq()) + 10)
    small_a = _checked(small.check(_rq("A")))
    _checked(small.check(_rq("B")))  # over the byte budget together: A goes
    assert len(small) == 1
    assert small.check(_rq("A")) is not small_a
    big = wire.associate_rq(CONTEXTS * 8)
    assert len(big) > len(_rq()) + 10
    _checked(small.check(big))
    assert len(small) == 1  # never kept: larger than the whole budget


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = node_config(tmp_path / "var", free_port())
    with Node(config, runner=counting_runner, use_default_outbox=False) as running:
        yield running


def test_associations_with_the_same_request_negotiate_and_store_each(node: Node) -> None:
    """Three associations open at once with one request's bytes share its decode; each is accepted
    with the same contexts, answers its own C-ECHO and stores its own instance."""
    clients = [wire.WireClient(node.port) for _ in range(3)]
    try:
        answers = [client.associate(_rq()) for client in clients]
        assert all(a.pdu_type == wire.A_ASSOCIATE_AC for a in answers), answers
        assert all(a.accepted == {1: ImplicitVRLittleEndian, 3: ExplicitVRLittleEndian} for a in answers)
        datasets = [ct_image(np.full((8, 8), index, dtype=np.int16)) for index in range(len(clients))]
        for client, ds in zip(reversed(clients), reversed(datasets), strict=True):
            assert client.status(1, wire.echo_rq()) == 0
            encoded = wire.encode_dataset(ds)
            assert client.status(3, wire.store_rq(CTImageStorage, ds.SOPInstanceUID), encoded) == 0
        for client in clients:
            client.release()
    finally:
        for client in clients:
            client.close()
    stored = sorted(path.stem for path in node.spool.root.glob("*/*/*.dcm"))
    assert stored == sorted(str(ds.SOPInstanceUID) for ds in datasets)
