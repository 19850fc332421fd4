"""The spine through the node's own wiring, with the real pipeline (default runner): dcmtk
storescu sends a phantom CT series, dcmtk storescp standing in as the PACS receives the SEG and
the SR. Tool accuracy and IOD conformance are tested beside the tools and encoders."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from config.loader import load_config
from dicom_node.app.commands.status import collect
from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from testkit.phantoms import write_ct_phantom
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import free_port, storescu, wait_for


@pytest.mark.slow
def test_ct_series_in_seg_and_sr_out(tmp_path: Path) -> None:
    truth = write_ct_phantom(
        tmp_path / "ct", slices=16, rows=64, cols=64, slice_spacing=8.0
    )
    pacs_port, received = free_port(), tmp_path / "pacs"
    pacs = StoreSCP(received, pacs_port).start()
    config = load_config(
        overrides={
            "node": {
                "port": free_port(),
                "data_dir": str(tmp_path / "var"),
                "series_quiet_seconds": 0.3,
            },
            "destinations": {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}
            },
        }
    )
    node = Node(config)  # default runner: dicom_node.jobs.pipeline.run_job, default outbox
    node.start()
    try:
        assert storescu(node.port, truth.files).returncode == 0
        got = wait_for(
            lambda: len(list(received.iterdir())) >= 2 and list(received.iterdir()),
            timeout=120,
        )
        by_modality = {pydicom.dcmread(p).Modality: p for p in got}
        assert set(by_modality) == {"SEG", "SR"}
        seg = hd.seg.segread(by_modality["SEG"])
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        sent = {
            str(ds.SOPInstanceUID)
            for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in truth.files)
        }
        assert referenced == sent
        (job,) = node.jobs.all()
        assert (
            job.state is JobState.DONE
            and job.instance_count == len(truth.files)
            and job.route == "ct-lungs"
        )
        # The PACS holds both files as soon as it answered the last C-STORE; the node records
        # the delivery done when it has read that answer.
        deliveries = wait_for(
            lambda: all(d["state"] == "done" for d in collect(config)["deliveries"])
            and collect(config)["deliveries"],
            timeout=10,
        )
        (delivery,) = deliveries
        assert delivery["job_id"] == job.job_id
    finally:
        node.stop()
        pacs.stop()
