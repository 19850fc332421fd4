"""``mmed-node status [--json]``: series, jobs and deliveries, read from the files on disk.

It reads ``<data_dir>/spool`` and ``<data_dir>/jobs`` directly (it does not talk to a running
node), so it also works while the node is down.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.jobs.store import JobStore
from dicom_node.receive.spool import Spool
from image_model.fingerprint import instance_set_fingerprint

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="list received series, jobs and deliveries (from the files under node.data_dir)",
        description="Show what the node holds: spooled series, job records and outbox deliveries.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config merged over the embedded defaults"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.set_defaults(func=run)


def _deliveries(data_dir: Path) -> list[dict[str, Any]]:
    try:
        from dicom_node.deliver.outbox import OUTBOX_FOLDER, load_deliveries
    except ImportError:  # outbox not installed in this build
        return []
    folder = data_dir / OUTBOX_FOLDER
    return [d.to_dict() for d in load_deliveries(folder)] if folder.is_dir() else []


def collect(config: Any) -> dict[str, Any]:
    data_dir = Path(config.node.data_dir)
    jobs = JobStore(data_dir / "jobs").all() if (data_dir / "jobs").is_dir() else []
    series = []
    if (data_dir / "spool").is_dir():
        for s in Spool(data_dir / "spool").scan():
            fp = instance_set_fingerprint(s.sop_uids)
            current = [
                j for j in jobs if j.series_uid == s.series_uid and j.fingerprint == fp
            ]
            series.append(
                {
                    "study_uid": s.study_uid,
                    "series_uid": s.series_uid,
                    "instances": len(s.sop_uids),
                    "calling_ae": s.calling_ae,
                    "jobs": [j.job_id for j in current],
                    "state": ",".join(sorted({j.state.value for j in current}))
                    or "waiting",
                }
            )
    return {
        "series": series,
        "jobs": [{k: v for k, v in j.to_dict().items() if k != "spec"} for j in jobs],
        "deliveries": _deliveries(data_dir),
    }


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    report = collect(config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"series ({len(report['series'])}):")
    for s in report["series"]:
        print(
            f"  {s['series_uid']}  {s['instances']:>5} inst  {s['state']:<10} from {s['calling_ae'] or '?'}"
        )
    print(f"jobs ({len(report['jobs'])}):")
    for j in report["jobs"]:
        err = f"  {j['error']}" if j.get("error") else ""
        print(
            f"  {j['job_id']}  {j['state']:<8} route={j['route'] or '-'} n={j['instance_count']} series={j['series_uid']}"
            f"{' worker=' + j['worker'] if j.get('worker') else ''}{err}"
        )
    print(f"deliveries ({len(report['deliveries'])}):")
    for d in report["deliveries"]:
        err = f"  {d['last_error']}" if d.get("last_error") else ""
        print(
            f"  {d['delivery_id']}  {d['state']:<8} -> {d['destination']} job={d['job_id']} "
            f"sent={len(d['sent'])}/{len(d['files'])} attempts={d['attempts']}{err}"
        )
    return 0
