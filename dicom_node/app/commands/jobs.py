"""``mmed-node jobs list|show|retry``: job records for an operator.

``list`` and ``show`` read the records (``<data_dir>/jobs/<id>.json``). ``retry`` asks the owner
of the data_dir to run a failed job again from scratch: it leaves a request file that the running
node applies within a second, or a stopped node when it starts (one owner writes job records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.data_dir import JOBS_FOLDER, data_dir_owned
from dicom_node.jobs.service import request_retry
from dicom_node.jobs.store import JobState, JobStore


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "jobs", help="list, show or retry jobs",
        description="Job records under node.data_dir: list them, show one, or retry a failed one.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="one line per job, oldest first")
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="print one job record (JSON)")
    show.add_argument("job_id")
    retry = actions.add_parser("retry", help="run a failed job again from scratch")
    retry.add_argument("job_id")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    data_dir = Path(config.node.data_dir)
    store = JobStore(data_dir / JOBS_FOLDER)
    if args.action == "list":
        records = [r for r in store.all() if args.state is None or r.state.value == args.state]
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
            return 0
        for r in records:
            print(f"{r.job_id}  {r.state.value:<8} attempt={r.attempt} route={r.route or '-'} "
                  f"series={r.series_uid}" + (f"  {r.error}" if r.error else ""))
        return 0
    try:
        record = store.get(args.job_id)
    except ValueError as exc:
        print(exc)
        return 2
    if record is None:
        print(f"no job {args.job_id} in {store.root}")
        return 1
    if args.action == "show":
        print(json.dumps(record.to_dict(), indent=2, default=str))
        return 0
    if record.state is not JobState.FAILED:
        print(f"job {record.job_id} is {record.state.value}; only a failed job can be retried")
        return 1
    request_retry(store.root, record.job_id)
    if data_dir_owned(data_dir):
        print(f"job {record.job_id}: retry requested; the running node takes it up within a second")
    else:
        print(f"job {record.job_id}: retry requested; the node runs it when it starts")
    return 0
