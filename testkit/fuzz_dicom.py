"""A seeded, bounded mutation fuzzer for the node's receive path: PDUs on raw connections and
datasets in C-STOREs (explicit and implicit VR, deflate, RLE, nested sequences), against a
running ``mmed-node serve`` (testkit/served_node.py ServedNode).

Every case is derived from ``random.Random(seed)``: the same seed and budget replay the same
inputs. Invariants, checked every ``check_every`` cases and at the end (a breach is recorded with
the case number that preceded it):

* liveness: a C-ECHO on a fresh association completes within ``ECHO_SECONDS``;
* memory: the node's peak RSS stays under its start + ``rss_budget``;
* nothing acknowledged is lost: every C-STORE answered SUCCESS has its SOP instance in the spool;
* nothing is written outside ``data_dir`` (the node's working folder holds nothing else), and
  every spool path is ``<UID>/<UID>/<UID>.dcm``;
* no uncaught exception in the node's log (no traceback, no thread death, no RecursionError).

``tests/test_fuzz_small.py`` runs a small budget in the suite; ``bench/bench_fuzz.py`` the large
one (issue 11: 100 000 inputs).
"""

from __future__ import annotations

import functools
import random
import re
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from testkit import dicom_wire as wire
from testkit.crafted import MB, ct_dataset
from testkit.served_node import ServedNode

ECHO_SECONDS = 2.0
CT = "1.2.840.10008.5.1.4.1.1.2"
#: Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2.1.1).
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: UIDs of fuzzed instances: a fixed prefix and a 10-digit counter, so fresh UIDs replace the
#: seed's in place (same length) before the dataset is mutated. Every case is its own study and
#: series: the memory invariant then measures each input, not a series growing over the run.
UID_PREFIX = "1.2.826.0.1.3680043.10.1337.9."
STUDY_PREFIX = "1.2.826.0.1.3680043.10.1337.7."
SERIES_PREFIX = "1.2.826.0.1.3680043.10.1337.8."
UID_WIDTH = 10
#: The fuzzed node's config: its Q/R SCP answers the fuzzer's C-FINDs.
FUZZ_CONFIG = {"query_retrieve": {"allowed_calling_aets": ["FUZZER", "FUZZSTORE"]}}
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless)
_LOG_FAILURES = re.compile(r"Traceback|Exception in thread|RecursionError|MemoryError|Segmentation fault")
_UID = r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
_SPOOL_PATH = re.compile(rf"spool/{_UID}/{_UID}/{_UID}\.dcm")
INTERESTING32 = (0, 1, 2, 6, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _uid(counter: int, prefix: str = UID_PREFIX) -> str:
    return f"{prefix}{1_000_000_000 + counter:0{UID_WIDTH}d}"


def _fresh(data: bytes, counter: int) -> bytes:
    """``data`` with the seed's SOP Instance, Study and Series UIDs replaced by case ``counter``'s."""
    for prefix in (UID_PREFIX, STUDY_PREFIX, SERIES_PREFIX):
        data = data.replace(_uid(0, prefix).encode(), _uid(counter, prefix).encode())
    return data


def _seed_datasets() -> list[tuple[str, Dataset]]:
    """(transfer syntax, dataset) seeds with the placeholder UIDs ``_uid(0, ...)``."""
    placeholders = {"SOPInstanceUID": _uid(0), "StudyInstanceUID": _uid(0, STUDY_PREFIX),
                    "SeriesInstanceUID": _uid(0, SERIES_PREFIX)}
    plain = ct_dataset(8, 8, **placeholders)
    nested = ct_dataset(8, 8, **placeholders)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D0050", "SRT", "Tissue"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    nested.ReferencedImageSequence = Sequence([item, Dataset(item)])
    rle = ct_dataset(8, 8, **placeholders)
    rle.file_meta = FileMetaDataset()
    rle.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rle.compress(RLELossless, encoding_plugin="pydicom")
    del rle.file_meta
    return [
        (ExplicitVRLittleEndian, plain), (ImplicitVRLittleEndian, plain), (DeflatedExplicitVRLittleEndian, plain),
        (ExplicitVRLittleEndian, nested), (RLELossless, rle),
    ]


def _encode(ds: Dataset, syntax: str) -> bytes:
    if syntax == DeflatedExplicitVRLittleEndian:
        return _deflate(wire.encode_dataset(ds, ExplicitVRLittleEndian))
    return wire.encode_dataset(ds, ImplicitVRLittleEndian if syntax == ImplicitVRLittleEndian else ExplicitVRLittleEndian)


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


# ---- mutations ---------------------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _interesting_byte(rng: random.Random, data: bytearray) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF))


def _length_field(rng: random.Random, data: bytearray) -> None:
    """A 2- or 4-byte little/big endian field set to an interesting value (a length, mostly)."""
    if len(data) < 4:
        return
    pos = rng.randrange(len(data) - 3)
    value = rng.choice(INTERESTING32)
    if rng.random() < 0.5:
        data[pos : pos + 4] = struct.pack(rng.choice("<>") + "L", value)
    else:
        data[pos : pos + 2] = struct.pack(rng.choice("<>") + "H", value & 0xFFFF)


def _insert(rng: random.Random, data: bytearray) -> None:
    pos = rng.randrange(len(data) + 1)
    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))


def _delete(rng: random.Random, data: bytearray) -> None:
    if data:
        pos = rng.randrange(len(data))
        del data[pos : pos + rng.randint(1, 64)]


def _duplicate(rng: random.Random, data: bytearray) -> None:
    if data:
        pos = rng.randrange(len(data))
        chunk = data[pos : pos + rng.randint(1, 256)]
        data[pos:pos] = chunk * rng.randint(1, 4)


def _truncate(rng: random.Random, data: bytearray) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


def _nest(rng: random.Random, data: bytearray) -> None:
    """Undefined-length sequences nested 2-6000 deep at a random point."""
    depth = rng.choice((2, 40, 200, 6000))
    opening = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\x00\x00" + struct.pack("<L", 0xFFFFFFFF)
    opening += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    pos = rng.randrange(len(data) + 1)
    data[pos:pos] = opening * depth + (closing * depth if rng.random() < 0.7 else b"")


MUTATORS: tuple[Callable[[random.Random, bytearray], None], ...] = (
    _flip, _interesting_byte, _length_field, _insert, _delete, _duplicate, _truncate, _nest,
)


#: Mutations that keep every length (so the structure usually survives and the values reach
#: pydicom, the loader and the job).
IN_PLACE_MUTATORS = (_flip, _interesting_byte)


def mutate(rng: random.Random, data: bytes, rounds: int | None = None, in_place: bool = False) -> bytes:
    out = bytearray(data)
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 3, 6))):
        rng.choice(IN_PLACE_MUTATORS if in_place else MUTATORS)(rng, out)
    return bytes(out)


#: Header values a real PACS has sent at some point, valid structure, wrong meaning.
_ODD_VALUES: dict[str, tuple[object, ...]] = {
    "Rows": (0, 1, 7, 65535), "Columns": (0, 1, 9, 65535), "BitsAllocated": (0, 1, 7, 12, 32, 64),
    "BitsStored": (0, 17, 64), "HighBit": (0, 15, 63), "PixelRepresentation": (1, 2, 255),
    "SamplesPerPixel": (0, 2, 3, 4), "PhotometricInterpretation": ("RGB", "YBR_FULL", "PALETTE COLOR", "X"),
    "NumberOfFrames": ("0", "2", "-1", "99"), "PixelSpacing": (["0", "0"], ["-1", "1"], ["1e308", "1"]),
    "ImageOrientationPatient": ([0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]), "ImagePositionPatient": (["nan", "0", "0"],),
    "RescaleSlope": ("0", "1e30", "-1"), "RescaleIntercept": ("1e30",), "PatientBirthDate": ("1901-02-03", "00000000"),
    "StudyTime": ("25:61:61",), "PatientName": ("A" * 70, "x\ny"), "SpecificCharacterSet": ("ISO_IR 999", "ISO 2022 IR 87"),
    "Modality": ("ct", ""), "SOPClassUID": ("1.2.3",), "WindowCenter": ("abc",),
}


def _odd_header(rng: random.Random, ds: Dataset) -> Dataset:
    odd = Dataset(ds)
    for keyword in rng.sample(sorted(_ODD_VALUES), rng.randint(1, 4)):
        try:
            setattr(odd, keyword, rng.choice(_ODD_VALUES[keyword]))
        except (TypeError, ValueError, OverflowError):
            pass
    return odd


def _geometry_bomb(rng: random.Random, ds: Dataset) -> Dataset:
    bomb = Dataset(ds)
    bomb.Rows, bomb.Columns = rng.choice(((65535, 65535), (16384, 16384), (4096, 8192), (1, 65535)))
    if rng.random() < 0.5:
        bomb.NumberOfFrames = str(rng.choice((2, 1000, 99999999)))
    return bomb


@functools.cache
def _deflated_zeros(size: int) -> bytes:
    """``size`` zero bytes as raw deflate blocks ending on a full flush (byte-aligned, no final
    block): they can be spliced between other such segments of one stream (RFC 1951 3.2.3)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(4 * MB)
    parts = [packer.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join(parts) + packer.flush(zlib.Z_FULL_FLUSH)


def _deflate_bomb(rng: random.Random, plain: bytes) -> bytes:
    """The plain dataset with a private OB of zeros (up to 256 MiB inflated), deflated."""
    size = rng.choice((4 * MB, 64 * MB, 256 * MB))
    cut = plain.find(struct.pack("<HH", 0x7FE0, 0x0010))
    cut = len(plain) if cut < 0 else cut
    private = struct.pack("<HH", 0x0029, 0x0010) + b"LO" + struct.pack("<H", 4) + b"FUZZ"
    private += struct.pack("<HH", 0x0029, 0x1000) + b"OB\x00\x00" + struct.pack("<L", size)
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (head.compress(plain[:cut] + private) + head.flush(zlib.Z_FULL_FLUSH) + _deflated_zeros(size)
            + tail.compress(plain[cut:]) + tail.flush())


# ---- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    number: int
    kind: str  # "pdu" (a raw byte stream on its own connection) or "store" (one C-STORE)
    data: bytes
    syntax: str = ExplicitVRLittleEndian
    sop_uid: str = ""


class CaseMaker:
    """The seeded stream of cases."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seeds = _seed_datasets()
        self.counter = 0

    def _conversation(self, sop_uid: str) -> list[bytes]:
        """A valid association: echo, then a C-STORE or a C-FIND (its identifier mutated too)."""
        syntax, ds = self.rng.choice(self.seeds)
        contexts = [(wire.VERIFICATION, [ImplicitVRLittleEndian]), (CT, [syntax]), (FIND, [ExplicitVRLittleEndian])]
        pdus = [wire.associate_rq(contexts, "FUZZER")]
        pdus += wire.p_data(1, wire.echo_rq(1))
        if self.rng.random() < 0.25:
            query = Dataset()
            query.QueryRetrieveLevel = self.rng.choice(("PATIENT", "STUDY", "SERIES", "IMAGE"))
            query.StudyInstanceUID, query.PatientName, query.StudyDate = "", "*", "20200101-"
            query.ModalitiesInStudy, query.NumberOfStudyRelatedInstances = "", ""
            identifier = mutate(self.rng, wire.encode_dataset(query)) if self.rng.random() < 0.7 else (
                wire.encode_dataset(query))
            pdus += wire.p_data(5, wire.find_rq(FIND, 2), identifier)
        else:
            body = _fresh(_encode(ds, syntax), self.counter)
            pdus += wire.p_data(3, wire.store_rq(CT, sop_uid, 2), body, max_pdu=self.rng.choice((128, 4096, 16384)))
        pdus.append(wire.release_rq())
        return pdus

    def make(self, number: int) -> Case:
        rng = self.rng
        self.counter += 1
        sop = _uid(self.counter)
        roll = rng.random()
        if roll < 0.4:
            pdus = self._conversation(sop)
            if rng.random() < 0.3:  # mutate one PDU only, keep the rest intact
                index = rng.randrange(len(pdus))
                pdus[index] = mutate(rng, pdus[index])
                stream = b"".join(pdus)
            else:
                stream = mutate(rng, b"".join(pdus))
            return Case(number, "pdu", stream, sop_uid=sop)
        syntax, ds = rng.choice(self.seeds)
        if roll < 0.45:
            ds = _geometry_bomb(rng, ds)
        elif roll < 0.6:
            ds = _odd_header(rng, ds)
        try:
            plain = _encode(ds, ExplicitVRLittleEndian if syntax == DeflatedExplicitVRLittleEndian else syntax)
        except (TypeError, ValueError, OverflowError, struct.error):
            plain = _encode(self.seeds[0][1], ExplicitVRLittleEndian)
        plain = _fresh(plain, self.counter)
        in_place = rng.random() < 0.5
        if syntax == DeflatedExplicitVRLittleEndian:
            if roll < 0.47:
                return Case(number, "store", _deflate_bomb(rng, plain), syntax, sop)
            if roll < 0.6:
                return Case(number, "store", _deflate(plain), syntax, sop)
            data = (_deflate(mutate(rng, plain, in_place=in_place)) if rng.random() < 0.5
                    else mutate(rng, _deflate(plain)))
        elif roll < 0.6:
            data = plain  # valid structure: a geometry bomb, or odd header values
        else:
            data = mutate(rng, plain, in_place=in_place)
        return Case(number, "store", data, syntax, sop)


# ---- running -----------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    max_echo_seconds: float = 0.0
    peak_rss_growth: int = 0
    seconds: float = 0.0
    #: How much of the node's log the checks have read.
    log_offset: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "cases": self.cases, "outcomes": dict(self.outcomes), "acknowledged": len(self.acknowledged),
            "violations": self.violations, "max_echo_seconds": round(self.max_echo_seconds, 3),
            "peak_rss_growth_mb": round(self.peak_rss_growth / MB, 1), "seconds": round(self.seconds, 1),
        }


def _send_stream(port: int, stream: bytes) -> str:
    """Send a raw byte stream on a new connection, half-close, read until the node closes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(stream)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return "dropped-while-sending"
            got = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return "answered-closed" if got else "closed"
                got += len(chunk)
    except TimeoutError:
        return "stalled"
    except OSError:
        return "reset"


class _StoreSession:
    """One association for consecutive C-STORE cases of one transfer syntax."""

    def __init__(self, port: int, syntax: str) -> None:
        self.client = wire.WireClient(port, timeout=10)
        answer = self.client.associate(wire.associate_rq([(CT, [syntax])], "FUZZSTORE", max_pdu=65536))
        if answer.pdu_type != wire.A_ASSOCIATE_AC or 1 not in answer.accepted:
            self.client.close()
            raise ConnectionError(f"store association refused: {answer}")
        self.syntax = syntax
        self.message_id = 0

    def store(self, case: Case) -> int:
        self.message_id = self.message_id % 65535 + 1
        return self.client.status(1, wire.store_rq(CT, case.sop_uid, self.message_id), case.data, 65536)

    def close(self) -> None:
        try:
            self.client.release()
        finally:
            self.client.close()


def run_cases(node: ServedNode, cases: Iterator[Case], report: Report, rss_budget: int, check_every: int = 200,
              progress: Callable[[Report], None] | None = None) -> Report:
    start = time.monotonic()
    session: _StoreSession | None = None
    base_rss = node.start_rss
    for case in cases:
        report.cases += 1
        if case.kind == "pdu":
            if session is not None:
                session.close()
                session = None
            report.outcomes["pdu:" + _send_stream(node.port, case.data)] += 1
        else:
            try:
                if session is None or session.syntax != case.syntax:
                    if session is not None:
                        session.close()
                    session = _StoreSession(node.port, case.syntax)
                status = session.store(case)
                report.outcomes[f"store:0x{status:04x}"] += 1
                if status == 0:
                    report.acknowledged.append(case.sop_uid)
            except (ConnectionError, OSError):
                report.outcomes["store:dropped"] += 1
                if session is not None:
                    session.client.close()
                session = None
        if report.cases % check_every == 0:
            check_invariants(node, report, base_rss, rss_budget, case.number)
            if progress:
                report.seconds = time.monotonic() - start
                progress(report)
            if report.violations:
                break
    if session is not None:
        session.close()
    if not report.violations:
        check_invariants(node, report, base_rss, rss_budget, report.cases)
    report.seconds = time.monotonic() - start
    return report


def check_invariants(node: ServedNode, report: Report, base_rss: int, rss_budget: int, after: int) -> None:
    def breach(what: str) -> None:
        report.violations.append(f"after case {after}: {what}")

    if node.proc.poll() is not None or node.killed_at_bytes is not None:
        breach(f"node died (exit {node.proc.returncode}, watchdog {node.killed_at_bytes})")
        return
    try:
        took = wire.echo(node.port, "FUZZECHO", timeout=ECHO_SECONDS + 1)
        report.max_echo_seconds = max(report.max_echo_seconds, took)
        if took > ECHO_SECONDS:
            breach(f"C-ECHO took {took:.2f} s")
    except (OSError, ConnectionError) as exc:
        breach(f"C-ECHO failed: {exc}")
    growth = node.peak() - base_rss
    report.peak_rss_growth = max(report.peak_rss_growth, growth)
    if growth > rss_budget:
        breach(f"peak RSS {growth / MB:.0f} MB over the start")
    spool = node.data_dir / "spool"
    held = {p.stem for p in spool.glob("*/*/*.dcm")}
    lost = [uid for uid in report.acknowledged if uid not in held]
    if lost:
        breach(f"{len(lost)} acknowledged instance(s) not in the spool, e.g. {lost[0]}")
    for path in node.data_dir.rglob("*"):
        rel = path.relative_to(node.data_dir).as_posix()
        if path.is_file() and rel.startswith("spool/") and path.suffix == ".dcm" and not _SPOOL_PATH.fullmatch(rel):
            breach(f"unexpected spool path {rel[:100]!r}")
    outside = [p.name for p in node.tmp.iterdir() if p.name not in ("var", "node.yaml", "node.log")]
    if outside:
        breach(f"written outside data_dir: {outside[:5]}")
    with node.log.open("rb") as fh:
        fh.seek(report.log_offset)
        raw = fh.read()
    report.log_offset += len(raw)
    log = raw.decode("utf-8", "replace")
    match = _LOG_FAILURES.search(log)
    if match:
        breach(f"log: {log[max(0, match.start() - 200) : match.start() + 300]!r}")


def fuzz(node: ServedNode, seed: int, budget: int, rss_budget: int, check_every: int = 200,
         progress: Callable[[Report], None] | None = None) -> Report:
    maker = CaseMaker(seed)
    return run_cases(node, (maker.make(i) for i in range(1, budget + 1)), Report(), rss_budget, check_every, progress)
