"""A DICOM upper-layer client written byte by byte (PS3.8 9.3), for the hostile-input tests and
the fuzzer: it sends whatever it is told to, valid or not, where a real SCU library would refuse.

:class:`WireClient` opens a TCP connection, sends an A-ASSOCIATE-RQ, reads the answer, and can
then send DIMSE messages (C-ECHO, C-STORE) as P-DATA-TF PDUs and read their statuses. The encoders
(:func:`associate_rq`, :func:`p_data`, :func:`command_set`) are separate so a fuzzer can mutate
their output before it is sent.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1337.1"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def associate_rq(
    contexts: Sequence[tuple[str, Sequence[str]]],
    calling: str = "WIRE",
    called: str = "MMEDNODE",
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU: presentation contexts 1, 3, 5... = ``(abstract syntax, [transfer
    syntaxes])`` in order."""
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16)[:16] + calling.encode().ljust(16)[:16]
    body += bytes(32) + item(0x10, _uid(APPLICATION_CONTEXT))
    for index, (abstract, syntaxes) in enumerate(contexts):
        sub = item(0x30, _uid(abstract)) + b"".join(item(0x40, _uid(ts)) for ts in syntaxes)
        body += item(0x20, struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + sub)
    user = item(0x51, struct.pack(">L", max_pdu)) + item(0x52, _uid(IMPLEMENTATION_UID))
    body += item(0x50, user)
    return pdu(A_ASSOCIATE_RQ, body)


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, bytes(4))


def command_set(ds: Dataset) -> bytes:
    """A DIMSE command set (always implicit VR little endian, PS3.7 6.3.1), with its group length."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    body = fp.getvalue()
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def echo_rq(message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = VERIFICATION
    ds.CommandField = 0x0030
    ds.MessageID = message_id
    ds.CommandDataSetType = 0x0101
    return command_set(ds)


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance
    return command_set(ds)


def find_rq(sop_class: str, message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0020
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    return command_set(ds)


def p_data(context_id: int, command: bytes, dataset: bytes | None = None, max_pdu: int = 16384) -> list[bytes]:
    """P-DATA-TF PDUs carrying one DIMSE message, fragmented to ``max_pdu`` (PS3.8 9.3.5, E.2)."""
    pdus = []
    chunk = max(max_pdu - 6, 1)
    for payload, command_bit in ((command, 1), (dataset, 0)):
        if payload is None:
            continue
        pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
        for n, piece in enumerate(pieces):
            control = command_bit | (2 if n == len(pieces) - 1 else 0)
            pdv = struct.pack(">LBB", len(piece) + 2, context_id, control) + piece
            pdus.append(pdu(P_DATA_TF, pdv))
    return pdus


def encode_dataset(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A dataset without file meta, as a C-STORE carries it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


@dataclass
class Answer:
    """What the acceptor answered to an A-ASSOCIATE-RQ."""

    pdu_type: int
    #: Accepted presentation context ID -> transfer syntax (A-ASSOCIATE-AC only).
    accepted: dict[int, str] = field(default_factory=dict)
    #: (result, source, reason) of an A-ASSOCIATE-RJ.
    reject: tuple[int, int, int] | None = None


class WireClient:
    """One TCP connection to an SCP, driven PDU by PDU."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes | Iterable[bytes]) -> None:
        self.sock.sendall(data if isinstance(data, (bytes, bytearray)) else b"".join(data))

    def _read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(min(n - len(out), 1 << 16))
            if not got:
                raise ConnectionError(f"connection closed after {len(out)} of {n} bytes")
            out += got
        return bytes(out)

    def read_pdu(self) -> tuple[int, bytes]:
        head = self._read_exact(6)
        pdu_type, _, length = struct.unpack(">BBL", head)
        return pdu_type, self._read_exact(length)

    def associate(self, rq: bytes) -> Answer:
        self.send(rq)
        pdu_type, body = self.read_pdu()
        answer = Answer(pdu_type)
        if pdu_type == A_ASSOCIATE_RJ:
            answer.reject = (body[1], body[2], body[3])
        elif pdu_type == A_ASSOCIATE_AC:
            offset = 68
            while offset + 4 <= len(body):
                item_type, _, length = struct.unpack(">BBH", body[offset : offset + 4])
                value = body[offset + 4 : offset + 4 + length]
                if item_type == 0x21 and value[2] == 0 and len(value) > 8:
                    answer.accepted[value[0]] = value[8:].decode("ascii").rstrip("\x00 ")
                offset += 4 + length
        return answer

    def read_response(self) -> Dataset:
        """The next DIMSE response's command set (datasets of pending C-FIND answers skipped)."""
        command = bytearray()
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type != P_DATA_TF:
                raise ConnectionError(f"PDU type 0x{pdu_type:02x} instead of a DIMSE response")
            offset = 0
            while offset + 6 <= len(body):
                length, _, control = struct.unpack(">LBB", body[offset : offset + 6])
                if control & 1:
                    command += body[offset + 6 : offset + 4 + length]
                    if control & 2:
                        return read_dataset(DicomBytesIO(bytes(command)), True, True)
                offset += 4 + length

    def status(self, context_id: int, command: bytes, dataset: bytes | None = None, max_pdu: int = 16384) -> int:
        """Send one DIMSE request and return the Status (0000,0900) of its response."""
        self.send(p_data(context_id, command, dataset, max_pdu))
        return int(self.read_response().Status)

    def release(self) -> None:
        self.send(release_rq())
        try:
            self.read_pdu()
        except (ConnectionError, OSError):
            pass


def echo(port: int, calling: str = "WIRE", timeout: float = 10.0) -> float:
    """C-ECHO over a fresh association; returns the seconds it took (raises on any failure)."""
    start = time.monotonic()
    with WireClient(port, timeout=timeout) as client:
        answer = client.associate(associate_rq([(VERIFICATION, [ImplicitVRLittleEndian])], calling))
        if answer.pdu_type != A_ASSOCIATE_AC or 1 not in answer.accepted:
            raise ConnectionError(f"association not accepted: {answer}")
        status = client.status(1, echo_rq())
        if status != 0:
            raise ConnectionError(f"C-ECHO status 0x{status:04x}")
        client.release()
    return time.monotonic() - start


def store(
    port: int,
    dataset: bytes,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    calling: str = "WIRE",
    max_pdu: int = 16384,
    timeout: float = 30.0,
    request_uid: str | None = None,
) -> int:
    """C-STORE ``dataset`` (encoded, no file meta) over a fresh association; returns the status.
    ``request_uid`` replaces the Affected SOP Instance UID of the request (default: the
    dataset's). Raises ConnectionError when the association is refused or dropped."""
    with WireClient(port, timeout=timeout) as client:
        answer = client.associate(associate_rq([(sop_class, [transfer_syntax])], calling, max_pdu=max_pdu))
        if answer.pdu_type != A_ASSOCIATE_AC or 1 not in answer.accepted:
            raise ConnectionError(f"association not accepted: {answer}")
        try:
            status = client.status(1, store_rq(sop_class, request_uid or sop_instance), dataset, max_pdu)
        except OSError as exc:
            raise ConnectionError(f"dropped during C-STORE: {exc}") from exc
        client.release()
        return status
