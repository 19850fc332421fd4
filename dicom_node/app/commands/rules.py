"""``mmed-node rules test FILE_OR_DIR``: which routes fire for a DICOM file, and why.

An administrator's dry run of the routing rules: it reads one file's header (or the first DICOM
file found in a folder), evaluates every route as the node would for that series, and prints each
condition with the value it saw. Image checks (a route's ``coverage``) run on the folder's files
(given one file, they have one slice to look at and fail, saying so). Exit status: 0 when some
route fires, 1 when none does (the series would be kept as unrouted or skipped), 2 when the config
or the file cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from config.schema import AppConfig
from dicom_node.app.commands import load_config_or_report
from dicom_node.receive.routing import CheckResult, RouteMatch, route_series, series_tags_from_dataset

EXIT_FIRES = 0
EXIT_NO_ROUTE = 1
EXIT_ERROR = 2
#: A folder is searched for its first DICOM file among at most this many files.
MAX_FILES_SCANNED = 10_000


def register(subparsers: Any) -> None:
    rules = subparsers.add_parser(
        "rules",
        help="inspect the routing rules",
        description="Inspect the routing rules (routes: in the config).",
    )
    actions = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    actions.required = True
    test = actions.add_parser(
        "test",
        help="show which routes match a DICOM file and why",
        description=(
            "Evaluate every route against one DICOM file's header (or the first DICOM file in a "
            "folder) and show each condition with the value seen. Exit 0 if a route fires, "
            "1 if none does, 2 on errors."
        ),
    )
    test.add_argument("path", metavar="FILE_OR_DIR", type=Path, help="a DICOM file or a folder")
    test.add_argument("--config", type=Path, help="config YAML (default: the embedded defaults)")
    test.add_argument("--calling-ae", help="calling AE title of the sending PACS (default: none)")
    test.add_argument("--called-ae", help="called AE title (default: the node's node.ae_title)")
    test.add_argument("--json", action="store_true", help="print the result as JSON")
    test.set_defaults(func=run_test)


def first_dicom_file(path: Path) -> tuple[Path, Dataset]:
    """The file itself, or the first readable DICOM file under a folder (sorted by path)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for candidate in candidates[:MAX_FILES_SCANNED]:
        try:
            return candidate, dcmread(candidate, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue
    raise FileNotFoundError(f"{path}: no readable DICOM file found")


def _as_json(
    source: Path, config: AppConfig, results: list[RouteMatch], fired: list[RouteMatch],
    calling_ae: str | None, called_ae: str,
) -> dict[str, Any]:
    names = {m.route.name for m in fired}
    return {
        "file": str(source),
        "calling_ae": calling_ae,
        "called_ae": called_ae,
        "routing_mode": config.routing_mode,
        "fired": [m.route.name for m in fired],
        "routes": [
            {
                "name": m.route.name,
                "priority": m.route.priority,
                "fallback": m.route.fallback,
                "matched": m.matched,
                "fires": m.route.name in names,
                "instruction": m.route.instruction,
                "send_to": m.route.send_to,
                "checks": [_check_json(c) for c in m.checks],
                "match_any": [[_check_json(c) for c in alternative] for alternative in m.alternatives],
                "coverage": None if m.coverage is None else {
                    "region": m.coverage.region, "held": m.coverage.covers, "reason": m.coverage.reason,
                },
            }
            for m in results
        ],
    }


def _check_json(c: CheckResult) -> dict[str, Any]:
    return {"key": c.key, "operator": c.operator, "expected": c.expected, "held": c.held, "reason": c.reason}


def _verdict(match: RouteMatch, fired: set[str], mode: str) -> str:
    if match.route.name in fired:
        return "FIRES"
    if match.coverage is not None and not match.coverage.covers:
        return "skipped (the image check failed)"
    if match.matched and match.route.fallback:
        return "matches, not fired (fallback: another route fired)"
    if match.matched:
        return f"matches, not fired (routing_mode {mode}: an earlier route fired)"
    return "no match"


def _print_text(
    source: Path, config: AppConfig, results: list[RouteMatch], fired: list[RouteMatch],
    calling_ae: str | None, called_ae: str,
) -> None:
    names = {m.route.name for m in fired}
    print(f"file: {source}")
    print(f"association: calling AE {calling_ae or '(none)'}, called AE {called_ae}")
    print(f"routing_mode: {config.routing_mode}; routes in the order tried (priority, then file order):")
    for match in results:
        route = match.route
        extra = ", fallback" if route.fallback else ""
        print(f"\n  {route.name} (priority {route.priority}{extra}): {_verdict(match, names, config.routing_mode)}")
        for reason in match.reasons:
            print(f"    - {reason}")
        if route.name in names:
            print(f"    instruction: {route.instruction}")
            print(f"    send to: {', '.join(route.send_to) or '(no destination)'}")
    print()
    if fired:
        print(f"result: {len(fired)} route(s) fire: {', '.join(m.route.name for m in fired)}")
    elif any(m.coverage is not None and not m.coverage.covers for m in results):
        print("result: no route fires; the series would be kept as skipped")
    else:
        print("result: no route fires; the series would be kept as unrouted")


def run_test(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config, sys.stderr)
    if config is None:
        return EXIT_ERROR
    try:
        source, ds = first_dicom_file(args.path)
    except FileNotFoundError as exc:
        print(f"rules test: {exc}", file=sys.stderr)
        return EXIT_ERROR
    called_ae = args.called_ae or config.node.ae_title
    tags = series_tags_from_dataset(ds)
    files = [source] if args.path.is_file() else sorted(p for p in args.path.rglob("*") if p.is_file())
    outcome = route_series(config, tags, args.calling_ae, called_ae, files[:MAX_FILES_SCANNED])
    results, fired = outcome.evaluated, outcome.fired
    if args.json:
        data = _as_json(source, config, results, fired, args.calling_ae, called_ae)
        print(json.dumps(data, indent=2))
    else:
        _print_text(source, config, results, fired, args.calling_ae, called_ae)
    return EXIT_FIRES if fired else EXIT_NO_ROUTE
