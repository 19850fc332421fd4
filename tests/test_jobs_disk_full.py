"""The disk fills up during a run, then space returns: no acknowledged instance is lost, no
partial result is sent, every job completes by itself, and the node says so once, not every
half second.

The node's data_dir lies on a small tmpfs mounted for the test (as root); the disk is filled
with a plain file while the first job runs (held at a gate), a second series arrives just before,
so it becomes due on the full disk, and a third is sent while the disk is full: its instances are
refused with status 0xA700 (Refused: Out of Resources) and sent again once space returned. The
jobs run the real pipeline; dcmtk storescp (unique file names, so a second copy would show) is
the PACS.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.tag
import pytest

from config.loader import load_config
from dicom_node.app.node import Node
from dicom_node.jobs.retry import RetryPolicy, classify
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobState
from tests.outbox_helpers import StoreSCP, results_by_source
from tests.qr_helpers import pipeline_runner, write_study
from tests.receive_helpers import free_port, storescu, wait_for

pytestmark = pytest.mark.slow

TMPFS_MB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (1 << 20, 4096):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_during_a_run(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node")
    pacs = StoreSCP(tmp_path / "pacs", free_port(), extra=["-uf"]).start()
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(small_disk / "var"),
                 "series_quiet_seconds": 1.0},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        "outbox": {"retry_initial_seconds": 0.3, "retry_max_seconds": 1},
        "routes": [{"name": "ct-lungs", "match": {"Modality": "CT"},
                    "instruction": "Segment the lungs and measure their volumes.",
                    "send_to": ["pacs"]}],
        "queue": {"retry_backoff_seconds": 0.3, "retry_backoff_max_seconds": 1},
        "retention": {"min_free": "2MiB", "min_free_percent": 0, "resume_margin_percent": 4},
    })
    studies = [write_study(tmp_path / f"ct{i}", seed=i) for i in range(3)]
    real = pipeline_runner(config)
    gate = threading.Event()

    def held(spec: JobSpec) -> Any:
        gate.wait(120)
        return real(spec)

    try:
        with Node(config, runner=held) as node:
            first, second, third = studies
            assert storescu(node.port, first.files).returncode == 0
            wait_for(lambda: [r for r in node.jobs.all() if r.state is JobState.RUNNING], 30)
            assert storescu(node.port, second.files).returncode == 0  # due in a second
            filler = fill(small_disk)
            wait_for(node.disk.low, 10)  # the watermark, read at most once a second
            refused = storescu(node.port, third.files, options=["-v"])
            assert (refused.stdout + refused.stderr).count("Refused: OutOfResources") == len(
                third.files), refused
            gate.set()  # the first job writes its results onto the full disk
            wait_for(lambda: "job records cannot be written" in caplog.text
                     and "scheduler pass failed" in caplog.text, 30)
            threading.Event().wait(4.0)  # the full disk lasts a while
            assert not list(pacs.out_dir.iterdir())  # nothing partial, nothing at all
            tracebacks = [r for r in caplog.records if r.exc_info and r.getMessage() in (
                "scheduler pass failed", "job records cannot be written; run events wait")]
            assert len(tracebacks) <= 2, [r.getMessage() for r in tracebacks]

            filler.unlink()  # space returns; nobody touches the node
            wait_for(lambda: len(list(pacs.out_dir.iterdir())) >= 4, 120)
            assert storescu(node.port, third.files).returncode == 0  # sent again, accepted
            wait_for(lambda: len(list(pacs.out_dir.iterdir())) >= 6, 120)
            threading.Event().wait(1.0)  # a duplicate delivery would arrive now
            sources = {s.series_uid for s in studies}
            # Whole objects only (read to the last byte): nothing partial was sent.
            assert results_by_source(pacs, sources, whole=True) == {
                uid: Counter({"SEG": 1, "SR": 1}) for uid in sources}
            records = [r for r in node.jobs.all() if r.route]
            assert len(records) == 3 and all(r.state is JobState.DONE for r in records)
            assert all(r.retries == 0 and r.waiting_since is None for r in records)
            # Every acknowledged instance is in the spool; none of the refused ones was kept.
            held_uids = {s.series_uid: len(s.sop_uids) for s in node.spool.scan()}
            assert held_uids == {s.series_uid: len(s.files) for s in studies}
            assert "disk low" in caplog.text and "disk space back" in caplog.text
    finally:
        pacs.stop()


def test_a_full_disk_is_told_apart_and_uses_no_retries() -> None:
    """The policy on its own: ENOSPC, also re-raised by pydicom's writer without its errno, is
    waited out (backoff as long as waited so far, up to the cap) and uses no retries."""
    try:
        with pydicom.tag.tag_in_exception(pydicom.tag.Tag(0x00082112)):
            raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as exc:
        wrapped = classify(exc)
    assert wrapped.transient and wrapped.disk_full and "\n" not in wrapped.reason
    policy = RetryPolicy(max_retries=1, backoff_seconds=2, backoff_max_seconds=60,
                         disk_full_patience_seconds=3600)
    assert [policy.retry_delay(wrapped, retries=5, waited=w) for w in (0, 10, 500, 4000)] == [
        2, 10, 60, None]
    io_error = classify(OSError(errno.EIO, "I/O error"))
    assert io_error.transient and not io_error.disk_full
    assert [policy.retry_delay(io_error, retries=r) for r in (0, 1)] == [2, None]
