"""End-user scenario: late instances of a series arrive while its first job is still waiting in
the queue (workers busy, or the node was killed and restarted). The waiting job must process the
instance set it was created for, not whatever the spool holds when it finally runs: otherwise it
produces the superseding job's SEG/SR UIDs itself, without a predecessor, and the superseding SR
then names itself as its own predecessor (PS3.3 C.17.2.3) -- one SOP Instance UID sent twice with
different content."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from config.loader import load_config
from dicom_node.app.commands.status import collect
from dicom_node.app.node import Node
from dicom_node.jobs.pipeline import JobSpec
from dicom_node.jobs.runner import pipeline_runner
from dicom_node.jobs.store import JobState
from testkit.phantoms import write_ct_phantom
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import free_port, storescu, wait_for


def _predecessors(sr: pydicom.Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


@pytest.mark.slow
def test_queued_job_processes_its_own_instance_set(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path / "ct", slices=12, rows=48, cols=48, slice_spacing=10.0)
    pacs_port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(tmp_path / "var"), "series_quiet_seconds": 0.3},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
    })
    real = pipeline_runner(config)
    gate = threading.Event()

    def held_runner(spec: JobSpec) -> dict[str, Any]:
        gate.wait(60)  # the worker is busy until the late instances have been received
        return real(spec)

    node = Node(config, runner=held_runner)
    node.start()
    try:
        first, late = truth.files[:8], truth.files[8:]
        assert storescu(node.port, first).returncode == 0
        assert wait_for(lambda: len(node.jobs.all()) == 1, timeout=20)
        assert storescu(node.port, late).returncode == 0
        assert wait_for(lambda: len(node.jobs.all()) == 2, timeout=20)
        gate.set()
        assert wait_for(
            lambda: [d["state"] for d in collect(config)["deliveries"]] == ["done", "done"],
            timeout=60,
        )
        assert all(j.state is JobState.DONE for j in node.jobs.all())
        jobs = sorted(node.jobs.all(), key=lambda j: j.instance_count)
        assert [j.instance_count for j in jobs] == [8, 12]
        srs = {
            uid: pydicom.dcmread(path)
            for uid, path in pacs.received().items()
            if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SR"
        }
        assert len(srs) == 2  # two results, not one UID sent twice
        evidence = {
            uid: {
                str(sop.ReferencedSOPInstanceUID)
                for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence
                if sop.ReferencedSOPClassUID == truth.datasets[0].SOPClassUID
            }
            for uid, sr in srs.items()
        }
        assert sorted(len(v) for v in evidence.values()) == [8, 12]
        (old,) = [uid for uid, refs in evidence.items() if len(refs) == 8]
        (new,) = [uid for uid, refs in evidence.items() if len(refs) == 12]
        assert _predecessors(srs[new]) == {old}
        assert _predecessors(srs[old]) == set()
    finally:
        gate.set()
        node.stop()
        pacs.stop()
