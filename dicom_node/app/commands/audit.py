"""``mmed-node audit --study UID``: one study's audit trail (dicom_node/app/audit.py), read from
``<data_dir>/audit/`` (the current file and the rotated ones), oldest first."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.app.audit import AUDIT_FOLDER, study_trail
from dicom_node.app.commands import load_config_or_report

#: Keys every line has; the rest are the hop's details.
COMMON = ("ts", "at", "hop", "study_uid", "series_uid", "job_id")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="print a study's audit trail (one line per hop, no patient data)",
        description="Every hop of a study's series and jobs (received, routed, queued, started, "
                    "tool, encoded, sent, failed, disclosed), oldest first, from "
                    "<data_dir>/audit/audit.jsonl and its rotated files.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    parser.add_argument("--study", metavar="UID", required=True, help="Study Instance UID")
    parser.add_argument("--json", action="store_true", help="print the JSON lines as stored")
    parser.set_defaults(func=run)


def describe(line: dict[str, Any]) -> str:
    details = "  ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                        for k, v in line.items() if k not in COMMON and v not in (None, "", [], {}))
    job = (line.get("job_id") or "-")[:12]
    series = line.get("series_uid") or "-"
    return f"{line.get('ts', '?')}  {line.get('hop', '?'):<9} job={job}  series={series}  {details}".rstrip()


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    lines = study_trail(Path(config.node.data_dir) / AUDIT_FOLDER, args.study)
    if not lines:
        print(f"no audit lines for study {args.study}")
        return 1
    for line in lines:
        print(json.dumps(line, separators=(",", ":")) if args.json else describe(line))
    return 0
