"""A receiver process of the node (``node.receivers`` above 1): the receive side of
dicom_node/receive/processes.py plus what the application adds to the listener, the Q/R SCP and
the association outcomes told to the node's observer.

    python -m dicom_node.app.receiver LISTEN_FD CHANNEL_FD     (started by the node only)
"""

from __future__ import annotations

import sys
from pathlib import Path

from config.schema import AppConfig
from dicom_node.app.telemetry import association_handlers
from dicom_node.data_dir import JOBS_FOLDER, RESULTS_FOLDER
from dicom_node.events import Emit
from dicom_node.qr.handlers import QRDeps, add_qr_contexts, qr_event_handlers
from dicom_node.qr.index import QRIndex
from dicom_node.receive.processes import serve_receiver
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, ExtraService
from dicom_node.receive.spool import Spool


def qr_service(config: AppConfig, data_dir: Path, emit: Emit, spool: Spool) -> ExtraService:
    """The Q/R SCP over the node's holdings (``spool``, the one its C-STORE handlers write) and
    the association outcomes told to ``emit``: what the listener hosts besides storage, in the
    node's process (node.py) and in each receiver process."""
    index = QRIndex(spool.root, data_dir / RESULTS_FOLDER, data_dir / JOBS_FOLDER, spool.limits, spool.quarantine)
    return ExtraService(
        add_contexts=lambda ae: add_qr_contexts(ae, STORAGE_SOP_CLASSES),
        handlers=qr_event_handlers(QRDeps(index, config)) + association_handlers(emit),
    )


if __name__ == "__main__":
    raise SystemExit(serve_receiver(sys.argv[1:], qr_service))
