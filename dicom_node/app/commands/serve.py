"""``mmed-node serve --config FILE``: run the node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.data_dir import DATA_DIR_LOCK, lock_data_dir

if TYPE_CHECKING:
    from dicom_node.jobs.runner import JobRunner

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (storage SCP, series assembly, routing, embedded job queue, outbox)",
        description=(
            "Listen for C-STORE/C-ECHO on node.host:node.port as node.ae_title, spool every instance "
            "durably under node.data_dir, process complete series through the matching route and send "
            "results to the route's destinations. Runs until SIGTERM or SIGINT, then shuts down cleanly; "
            "work not finished is resumed at the next start."
        ),
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config merged over the embedded defaults"
    )
    parser.add_argument(
        "--runner",
        metavar="MODULE:FUNCTION",
        help="job runner to call instead of the pipeline (a function JobSpec -> manifest dict; for "
        "tests and custom pipelines)",
    )
    parser.set_defaults(func=run)


def load_runner(spec: str) -> JobRunner:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--runner must be MODULE:FUNCTION, got {spec!r}")
    runner = getattr(importlib.import_module(module_name), attr)
    if not callable(runner):
        raise TypeError(f"--runner {spec} is not callable")
    return runner


def run(args: argparse.Namespace) -> int:
    # Imported here: every mmed-node command builds this parser, only ``serve`` needs the node.
    from dicom_node.app.http_api import ApiSetupError
    from dicom_node.app.node import Node
    from dicom_node.tls import TLSSetupError

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if config.node.log_phi:
        # The operator opted in: pynetdicom's INFO lines include query identifiers (PHI).
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    lock = lock_data_dir(Path(config.node.data_dir))
    if lock is None:
        print(
            f"another mmed-node serve already uses {config.node.data_dir} "
            f"(lock {Path(config.node.data_dir) / DATA_DIR_LOCK}); refusing to start a second one",
            file=sys.stderr,
        )
        return 2
    runner = load_runner(args.runner) if args.runner else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s received, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node = Node(config, runner=runner, data_dir_lock=lock)
    except ValueError as exc:  # e.g. an unknown tool name in the config's tools section
        print(f"config: {exc}", file=sys.stderr)
        return 2
    try:
        node.start(freeze=True)
    except (TLSSetupError, ApiSetupError) as exc:
        print(exc)
        return 2
    except OSError as exc:
        print(
            f"cannot listen on {config.node.host}:{config.node.port}: {exc.strerror or exc}"
        )
        return 1
    print(
        f"mmed-node serving AE {config.node.ae_title} on {config.node.host}:{node.port}, "
        f"data in {config.node.data_dir}",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        lock.close()
        log.info("stopped")
    return 0
