"""``mmed-node prune [--dry-run]``: one retention pass by hand (dicom_node/app/retention.py).

The node runs retention by itself every ``retention.interval_seconds``; this command shows what a
pass would remove (``--dry-run``, also while the node runs) or runs one while no node serves the
data_dir (it holds the data_dir lock meanwhile).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.app.commands import load_config_or_report
from dicom_node.app.retention import Retention, settle_trash
from dicom_node.app.retention_plan import PrunePlan
from dicom_node.data_dir import JOBS_FOLDER, lock_data_dir
from dicom_node.deliver.outbox import Outbox
from dicom_node.disk import DiskGuard
from dicom_node.jobs.store import JobStore


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prune", help="remove finished, delivered series by the retention rules (or show them)",
        description=(
            "Apply the retention rules (retention.max_age_days, retention.max_size, the low-space "
            "watermark) once. Only finished series whose results were delivered everywhere go. "
            "With --dry-run nothing is removed."),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    parser.add_argument("--dry-run", action="store_true", help="show what would be removed")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def _print(plan: PrunePlan, dry_run: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**plan.summary(), "dry_run": dry_run}, indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for unit, why in plan.remove:
        print(f"{verb} series {unit.series_uid} ({unit.bytes >> 10} KiB, {len(unit.jobs)} job(s)): "
              f"{why}")
    kept = ", ".join(f"{n} {kind}" for kind, n in sorted(plan.kept().items()))
    print(f"{verb} {len(plan.remove)} of {len(plan.units)} series, {plan.freed_bytes >> 20} MiB of "
          f"{plan.total_bytes >> 20} MiB; kept: {kept or 'nothing else'}")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    data_dir = Path(config.node.data_dir).resolve()

    def retention() -> Retention:
        return Retention(config, JobStore(data_dir / JOBS_FOLDER), Outbox(data_dir, config),
                         DiskGuard(data_dir, config.retention))

    if args.dry_run:
        _print(retention().run(dry_run=True), True, args.json)
        return 0
    lock = lock_data_dir(data_dir)
    if lock is None:
        print(f"a node serves {data_dir} and prunes it by itself every "
              f"{config.retention.interval_seconds:g} s; see what it would remove with --dry-run")
        return 2
    try:
        settle_trash(data_dir)
        _print(retention().run(), False, args.json)
    finally:
        lock.close()
    return 0
