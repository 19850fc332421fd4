"""The lean receive path: header-only parse in every transfer syntax a C-STORE may carry,
both durable write paths (O_TMPFILE and named temp files) under racing duplicates, and
implicit/deflated datasets sent by dcmtk storescu through the running node."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_node.app.node import Node
from dicom_node.receive.spool import (
    CorruptInstance,
    InstanceInfo,
    Spool,
    parse_dataset,
    parse_instance,
)
from tests.receive_helpers import (
    counting_runner,
    free_port,
    make_ct_series,
    node_config,
    storescu,
    wait_for,
)


def split_part10(raw: bytes) -> tuple[bytes, str]:
    """(dataset bytes as a C-STORE carries them, transfer syntax) of a Part 10 stream."""
    fp = BytesIO(raw)
    fp.seek(132)
    meta = read_dataset(
        fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
    )
    return raw[fp.tell() :], str(meta.TransferSyntaxUID)


def expected_info(raw: bytes) -> InstanceInfo:
    """What a full pydicom read says the receive tags are."""
    ds = pydicom.dcmread(BytesIO(raw))
    return InstanceInfo(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        modality=str(ds.get("Modality", "")),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
    )


def encoded(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = BytesIO()
    ds.save_as(
        out,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
    )
    return out.getvalue()


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
)
def test_header_parse_in_each_transfer_syntax(
    tmp_path: Path, transfer_syntax: str
) -> None:
    (path,) = make_ct_series(tmp_path, 1)
    ds = pydicom.dcmread(path)
    # A nested sequence of undefined length before the UIDs (group 0008) must be walked over.
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([ref])
    raw = encoded(ds, transfer_syntax)
    want = expected_info(raw)
    assert parse_instance(raw) == want
    dataset, tsyntax = split_part10(raw)
    assert tsyntax == transfer_syntax
    assert parse_dataset(dataset, tsyntax) == want


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "693_J2KR.dcm"]
)
def test_header_parse_of_real_files(name: str) -> None:
    raw = Path(str(get_testdata_file(name))).read_bytes()
    want = expected_info(raw)
    assert parse_instance(raw) == want
    dataset, tsyntax = split_part10(raw)
    assert parse_dataset(dataset, tsyntax) == want


def test_parse_reads_nothing_after_series_uid(tmp_path: Path) -> None:
    """Bytes after the header (here: Pixel Data turned to garbage) are never decoded."""
    (path,) = make_ct_series(tmp_path, 1, rows=64, cols=64)
    raw = path.read_bytes()
    want = expected_info(raw)
    garbage = raw[: -64 * 64] + b"\xff" * (64 * 64)
    dataset, tsyntax = split_part10(garbage)
    assert parse_dataset(dataset, tsyntax) == want
    # ...but a header cut short before the UIDs is refused.
    with pytest.raises(CorruptInstance):
        parse_dataset(dataset[:40], tsyntax)
    with pytest.raises(CorruptInstance):
        parse_dataset(b"\x78\x9c" + dataset[:100], DeflatedExplicitVRLittleEndian)


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named_temp"])
def test_racing_duplicates_stored_once(tmp_path: Path, unnamed: bool) -> None:
    files = make_ct_series(tmp_path / "in", 3)
    spool = Spool(tmp_path / "spool", unnamed_temp_files=unnamed)
    results = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send(data: bytes) -> None:
        start.wait()
        result = spool.store(data, calling_ae="PACS")
        with lock:
            results.append(result)

    # 8 threads: every instance sent by two or three of them at once.
    payloads = [files[i % 3].read_bytes() for i in range(8)]
    threads = [threading.Thread(target=send, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [r for r in results if not r.duplicate]
    assert len(results) == 8 and len(stored) == 3
    assert {r.info.sop_uid for r in stored} == {
        expected_info(p.read_bytes()).sop_uid for p in files
    }
    (series,) = list(spool.scan())
    assert len(series.sop_uids) == 3 and series.calling_ae == "PACS"
    names = sorted(p.name for p in series.folder.iterdir())
    assert names == sorted([".origin.json", *(f"{s}.dcm" for s in series.sop_uids)])
    for r in stored:
        assert r.path.read_bytes() in payloads


def test_store_recreates_a_removed_series_folder(tmp_path: Path) -> None:
    first, second = make_ct_series(tmp_path / "in", 2)
    spool = Spool(tmp_path / "spool")
    result = spool.store(first.read_bytes())
    for p in result.path.parent.iterdir():
        p.unlink()
    result.path.parent.rmdir()
    again = spool.store(second.read_bytes(), calling_ae="PACS")
    assert not again.duplicate and again.path.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(
    "option,transfer_syntax",
    [("-xi", ImplicitVRLittleEndian), ("-xd", DeflatedExplicitVRLittleEndian)],
)
def test_storescu_transfer_syntaxes_stored_as_received(
    tmp_path: Path, option: str, transfer_syntax: str
) -> None:
    """dcmtk re-encodes to the proposed syntax; the node parses in the context's syntax and
    stores those bytes (deflated stays deflated)."""
    files = make_ct_series(tmp_path / "in", 3)
    node = Node(
        node_config(tmp_path / "var", free_port()),
        runner=counting_runner,
        use_default_outbox=False,
    )
    node.start()
    try:
        sent = storescu(node.port, files, options=[option])
        assert sent.returncode == 0, sent.stderr
        stored = wait_for(
            lambda: (
                list(node.spool.root.rglob("*.dcm"))
                if len(list(node.spool.root.rglob("*.dcm"))) == 3
                else None
            )
        )
    finally:
        node.stop()
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in files}
    for path in stored:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        original = originals[ds.SOPInstanceUID]
        assert ds.SeriesInstanceUID == original.SeriesInstanceUID
        assert ds.PixelData == original.PixelData
