"""``mmed-node status [--json]``: series, jobs, deliveries, disk use and the oldest undelivered
result, read from the files on disk.

It reads ``<data_dir>`` directly (it does not talk to a running node), so it also works while the
node is down.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.app.retention_plan import tree_bytes
from dicom_node.disk import DiskGuard
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


#: The data_dir's areas whose size ``status`` shows.
AREAS = ("spool", "results", "outbox", "jobs")


def disk_use(config: Any) -> dict[str, Any]:
    """Bytes per area of the data_dir, and the file system's free space against the watermark."""
    data_dir = Path(config.node.data_dir)
    use: dict[str, Any] = {f"{area}_bytes": tree_bytes(data_dir / area) for area in AREAS}
    use["data_dir_bytes"] = sum(use.values())
    guard = DiskGuard(data_dir, config.retention)
    space = guard.space() if data_dir.is_dir() else None
    if space is not None:
        use.update(filesystem_bytes=space.total, free_bytes=space.free,
                   free_percent=round(space.free_percent, 1),
                   low_mark_bytes=guard.low_mark(space.total), refusing_instances=guard.low())
    return use


def oldest_undelivered(deliveries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The oldest delivery not done (pending, being sent, or failed), with its age."""
    waiting = [d for d in deliveries if d["state"] != "done"]
    if not waiting:
        return None
    oldest = min(waiting, key=lambda d: d["created_at"])
    since = datetime.fromisoformat(oldest["created_at"])
    return {key: oldest[key] for key in ("delivery_id", "job_id", "destination", "state",
                                         "created_at", "last_error")} | {
        "age_seconds": round((datetime.now(UTC) - since).total_seconds())}


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
    deliveries = _deliveries(data_dir)
    return {
        "series": series,
        "jobs": [{k: v for k, v in j.to_dict().items() if k != "spec"} for j in jobs],
        "deliveries": deliveries,
        "oldest_undelivered": oldest_undelivered(deliveries),
        "disk": disk_use(config),
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
    disk = report["disk"]
    line = (f"disk: {disk['data_dir_bytes'] >> 20} MiB in {config.node.data_dir} ("
            + ", ".join(f"{area} {disk[area + '_bytes'] >> 20} MiB" for area in AREAS) + ")")
    if "free_bytes" in disk:
        line += (f"; {disk['free_bytes'] >> 20} MiB free ({disk['free_percent']}%), watermark "
                 f"{disk['low_mark_bytes'] >> 20} MiB"
                 + ("; REFUSING new instances" if disk["refusing_instances"] else ""))
    print(line)
    oldest = report["oldest_undelivered"]
    if oldest:
        print(f"oldest undelivered: {oldest['delivery_id']} -> {oldest['destination']} "
              f"({oldest['state']}, {oldest['age_seconds']} s old)"
              + (f": {oldest['last_error']}" if oldest.get("last_error") else ""))
    else:
        print("oldest undelivered: none")
    print(f"deliveries ({len(report['deliveries'])}):")
    for d in report["deliveries"]:
        err = f"  {d['last_error']}" if d.get("last_error") else ""
        print(
            f"  {d['delivery_id']}  {d['state']:<8} -> {d['destination']} job={d['job_id']} "
            f"sent={len(d['sent'])}/{len(d['files'])} attempts={d['attempts']}{err}"
        )
    return 0
