"""``mmed-node tools list`` and ``mmed-node tools run``: see which tools this config makes
available (and why not), and run one tool on a folder of DICOM files, for debugging and trying
models without a PACS.

``tools run`` writes ``summary.json`` (what the tool returned, masks as voxel counts) and, when
the DICOM encoders can express the result, ``seg.dcm`` (masks) and ``sr.dcm`` (TID 1500 report)
built exactly as the node builds them for a PACS.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from config.loader import ConfigError, load_config
from image_model.findings import ToolOutput
from tools.base import ToolRefused
from tools.registry import ParamsInvalid, ToolRegistry, known_tool_classes

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
SUMMARY_FILE = "summary.json"


def register(subparsers: Any) -> None:
    tools = subparsers.add_parser("tools", help="list the agent's tools, or run one on a DICOM folder")
    sub = tools.add_subparsers(dest="tools_command", metavar="SUBCOMMAND")
    sub.required = True

    lister = sub.add_parser("list", help="every known tool, whether it is available and, if not, why")
    lister.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    lister.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    lister.set_defaults(func=cmd_list)

    runner = sub.add_parser("run", help="run one tool on a folder of DICOM files and write its outputs")
    runner.add_argument("name", metavar="NAME", help="the tool's API_name, e.g. 'organ segmentation 3d'")
    runner.add_argument("--series", required=True, type=Path, metavar="DIR", help="folder of one series' files")
    runner.add_argument("--params", default="{}", metavar="JSON",
                        help="API_params as JSON (or @file.json); default {}")
    runner.add_argument("--config", metavar="FILE", help="YAML config merged over the embedded defaults")
    runner.add_argument("--out", type=Path, default=Path("tool-output"), metavar="DIR",
                        help="output folder (default ./tool-output)")
    runner.add_argument("--no-dicom", action="store_true", help="write summary.json only (no SEG/SR)")
    runner.set_defaults(func=cmd_run)


def _settings(config_path: str | None) -> tuple[Any, dict[str, dict[str, Any]]]:
    config = load_config(config_path)
    return config, dict(config.tools)


def cmd_list(args: argparse.Namespace) -> int:
    try:
        _, settings = _settings(args.config)
        registry = ToolRegistry(settings)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = [
        {"name": s.name, "available": s.available, "reason": s.reason, "queue": s.queue, "description": s.description}
        for s in registry.statuses()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max((len(s.name) for s in registry.statuses()), default=4)
    print(f"{'TOOL':<{width}}  {'AVAILABLE':<9}  {'QUEUE':<5}  REASON / DESCRIPTION")
    for r in rows:
        detail = r["description"] if r["available"] else r["reason"]
        print(f"{r['name']:<{width}}  {'yes' if r['available'] else 'no':<9}  {r['queue']:<5}  {detail}")
    return EXIT_OK


def _parse_params(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    params = json.loads(text)
    if not isinstance(params, dict):
        raise TypeError("--params must be a JSON object")
    return params


def output_record(output: ToolOutput) -> dict[str, Any]:
    """A ToolOutput as JSON: everything but the mask arrays (given as voxel counts and shape)."""
    return {
        "api_name": output.api_name,
        "algorithm": asdict(output.algorithm),
        "summary": output.summary,
        "text": output.text,
        "labels": [asdict(s) for s in output.labels],
        "boxes": [asdict(b) for b in output.boxes],
        "measurements": [asdict(m) for m in output.measurements],
        "segments": [
            {
                "label": s.label,
                "category": asdict(s.category),
                "type": asdict(s.type),
                "voxels": int(s.mask.sum()),
                "shape": list(s.mask.shape),
                "measurements": [asdict(m) for m in s.measurements],
            }
            for s in output.segments
        ],
    }


def cmd_run(args: argparse.Namespace) -> int:
    from image_model.loader import load_series

    try:
        config, settings = _settings(args.config)
        classes = known_tool_classes()
        if args.name not in classes:
            print(f"error: unknown tool {args.name!r}; known: {', '.join(sorted(classes))}", file=sys.stderr)
            return EXIT_USAGE
        registry = ToolRegistry({args.name: settings.get(args.name) or {}}, classes={args.name: classes[args.name]})
        params = _parse_params(args.params)
        tool = registry.get(args.name)
        registry.validate_params(args.name, params)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ParamsInvalid, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        volume = load_series(args.series)
    except (ValueError, OSError) as exc:
        print(f"error: cannot load {args.series}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        output = tool.run(volume, params)
    except ToolRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    args.out.mkdir(parents=True, exist_ok=True)
    record = output_record(output)
    record["series"] = {"series_instance_uid": volume.series_instance_uid, "modality": volume.modality,
                        "shape": list(volume.pixels.shape)}
    written = [SUMMARY_FILE]
    if not args.no_dicom:
        written += _write_dicom(volume, output, config, args, params)
    (args.out / SUMMARY_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    print(json.dumps({"tool": args.name, "out": str(args.out), "files": written, "summary": output.summary},
                     default=str))
    return EXIT_OK


def _write_dicom(
    volume: Any, output: ToolOutput, config: Any, args: argparse.Namespace, params: dict[str, Any]
) -> list[str]:
    """SEG + SR through the node's own encoders (sr_templates), as the pipeline would send them.

    Their UIDs are derived from the series' instances and from this request (tool and parameters),
    as the pipeline derives them from the job's route and instruction: two tools, or one tool with
    other parameters, on the same image never share a UID (a PACS would keep only the first)."""
    from agent.planners.aggregate import describe_output
    from sr_templates.identity import variant_of
    from sr_templates.outputs import build_outputs, identity_for

    # The sentence the agent's aggregator would write, not the raw summary: viewers show this
    # text as the finding's label.
    answer = output.text or describe_output(output.api_name, output.summary)
    request = variant_of(tool=args.name, params=json.dumps(params, sort_keys=True, default=str))
    datasets = build_outputs(
        volume, [output], answer, config.output, instruction=f"tools run {args.name}",
        planner_name="mmed-node tools run", identity=identity_for(volume, config.output, variant=request),
    )
    names = []
    for ds in datasets:
        name = "seg.dcm" if ds.Modality == "SEG" else "sr.dcm"
        ds.save_as(args.out / name, enforce_file_format=True)
        names.append(name)
    return names
