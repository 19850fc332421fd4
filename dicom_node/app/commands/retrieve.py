"""``mmed-node retrieve``: pull a study from a PACS and process it (optionally with a question)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from config.loader import ConfigError, load_config

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "retrieve",
        help="find a study on a PACS (C-FIND), pull its series (C-MOVE or C-GET) and process them",
        description=(
            "Query the PACS named by --from (a key of `destinations` in the config) for a study, "
            "pull the matching series and process them like routed ones. --method move asks the "
            "PACS to send them to the node's own AE title: the node must be running with the same "
            "data_dir and be declared on the PACS. --method get (default) pulls them into the spool "
            "directly; no running node is needed. With --instruction the question replaces the "
            "route's instruction and the answer SR goes back to the PACS (or --send-to)."
        ),
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="Study Instance UID")
    which.add_argument("--accession", metavar="N", help="Accession Number")
    which.add_argument("--patient", metavar="ID", help="Patient ID (every study of the patient)")
    parser.add_argument("--series-description", metavar="REGEX",
                        help="only series whose description matches (case-insensitive search)")
    parser.add_argument("--modality", help="only series of this modality")
    parser.add_argument("--from", dest="source", required=True, metavar="PACS",
                        help="the PACS to query: a name under `destinations` in the config")
    parser.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    parser.add_argument("--method", choices=("move", "get"), default="get")
    parser.add_argument("--instruction", metavar="TEXT", help="the question to ask about the series")
    parser.add_argument("--send-to", action="append", metavar="NAME",
                        help="destination for the results (repeatable; default: the route's, or the "
                        "--from PACS for a question)")
    parser.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                        help="longest wait for the node's jobs after a C-MOVE (default 600)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_node.qr.retrieve import RetrieveError, RetrieveQuery, retrieve_and_process

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc)
        return 2
    query = RetrieveQuery(
        study_uid=args.study, accession=args.accession, patient_id=args.patient,
        series_description=args.series_description, modality=args.modality,
    )
    from tools.progress import progress_bar

    try:
        with progress_bar(None, "retrieve", unit="instance") as bar:

            def arrived(count: int, expected: int | None) -> None:
                if expected is not None and bar.total != expected:
                    bar.total = expected
                bar.update(count)

            result = retrieve_and_process(
                config, args.source, query, method=args.method, instruction=args.instruction,
                send_to=args.send_to, wait_seconds=args.wait, progress=arrived,
            )
    except RetrieveError as exc:
        print(f"retrieve failed: {exc}")
        return 1
    if args.json:
        print(json.dumps({
            "series": [s.__dict__ for s in result.series],
            "pulled": result.pulled,
            "jobs": [j.to_dict() for j in result.jobs],
            "skipped": result.skipped,
            "errors": result.errors,
            "ok": result.ok,
        }, indent=2, default=str))
    else:
        for s in result.series:
            print(f"series {s.series_uid} {s.modality} {s.description!r}: "
                  f"{result.pulled.get(s.series_uid, 0)} instance(s) pulled")
        for j in result.jobs:
            print(f"job {j.job_id} route {j.route}: {j.state.value}"
                  + (f" ({j.error})" if j.error else "") + f" -> {j.result_dir}")
        for why in result.skipped:
            print(f"skipped: {why}")
        for error in result.errors:
            print(f"error: {error}")
    return 0 if result.ok else 1
