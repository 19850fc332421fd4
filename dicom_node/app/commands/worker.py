"""``mmed-node worker --config FILE [--queues gpu,cpu] [--concurrency N]``: a Celery worker that
runs the node's jobs (the same ``run_job`` as the embedded pool).

One worker process per GPU: give each its GPU with ``--gpu INDEX`` (or ``CUDA_VISIBLE_DEVICES``);
tools whose ``device`` is ``auto`` then use that GPU. The pool never forks after torch started:
``--concurrency 1`` runs the ``solo`` pool, ``N > 1`` the ``threads`` pool (the threads share
one set of warm models).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.jobs.celery_app import QUEUES

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a Celery worker for the node's jobs (needs queue.broker_url)",
        description=(
            "Consume jobs from the Redis broker at queue.broker_url and run the pipeline on them. "
            "Series are read from the path in each job, i.e. the node's data volume mounted at "
            "the same path on this host (docs/scaling.md). Models load once at start and stay "
            "warm. Stop with SIGTERM (finishes the running job) or kill: an unfinished job's lease "
            "lapses after queue.lease_seconds and the node hands it to another worker."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    parser.add_argument(
        "--queues", default=",".join(QUEUES), metavar="LIST",
        help=f"comma-separated queues to consume (default: {','.join(QUEUES)})",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, metavar="N",
        help="jobs at once: 1 runs the solo pool, N > 1 a threads pool (never prefork with torch)",
    )
    parser.add_argument(
        "--gpu", metavar="INDEX",
        help="run on this GPU only (sets CUDA_VISIBLE_DEVICES before CUDA starts)",
    )
    parser.add_argument(
        "--hostname", metavar="NAME",
        help="worker name shown in job state (default: mmed-<pid>@<host>)",
    )
    parser.add_argument(
        "--no-warm", action="store_true",
        help="build the tool registry at the first job instead of at start",
    )
    parser.set_defaults(func=run)


def celery_argv(args: argparse.Namespace) -> list[str]:
    """The ``celery worker`` arguments for our options."""
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise ValueError(f"--queues: unknown queue(s) {unknown}; known: {', '.join(QUEUES)}")
    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    pool = ["--pool=solo"] if args.concurrency == 1 else ["--pool=threads", f"--concurrency={args.concurrency}"]
    hostname = args.hostname or f"mmed-{os.getpid()}@{socket.gethostname()}"
    return [
        "worker", *pool, f"--queues={','.join(queues)}", f"--hostname={hostname}",
        "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


def run(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    if not config.queue.broker_url:
        print("queue.broker_url is not set: workers need a Redis broker (see docs/scaling.md)")
        return EXIT_CONFIG
    try:
        argv = celery_argv(args)
    except ValueError as exc:
        print(exc)
        return EXIT_CONFIG

    from dicom_node.jobs.celery_app import make_celery_app
    from dicom_node.jobs.worker_tasks import register_tasks

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # per-attribute INFO lines
    app = make_celery_app(config)
    runtime = register_tasks(app, config)
    log.info("worker: CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    if not args.no_warm:
        runtime.context()  # load the tools (and their models) before taking the first job
    app.worker_main(argv)
    return 0
