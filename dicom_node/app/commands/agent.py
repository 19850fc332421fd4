"""``mmed-node agent ...``: instruction data, planner evaluation, (fine-tuning: agent.training)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

#: Modules adding more ``agent`` subcommands; each defines ``add_train_parser``-style
#: ``ADD_PARSER`` callables taking the ``agent`` subparsers. Keep their import light
#: (torch/transformers are imported inside the command's function).
EXTRA_COMMANDS: tuple[tuple[str, str], ...] = (
    ("agent.training", "add_train_parser"),  # mmed-node agent train (fine-tuning)
    ("agent.reading.training", "add_train_intents_parser"),  # mmed-node agent train-intents
)


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser(
        "agent", help="the MMedAgent planner: instruction data, evaluation, fine-tuning",
        description="Tools for the MMedAgent planner: make instruction-tuning data, evaluate a planner, train.",
    )
    sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND")
    sub.required = True

    make = sub.add_parser(
        "make-data", help="write MMedAgent-format instruction data (train.jsonl, eval.jsonl)",
        description=(
            "Write OUT/train.jsonl and OUT/eval.jsonl (LLaVA JSON lines, MMedAgent conversations) and "
            "OUT/images/. Instructions come from templates with paraphrases; no template is in both "
            "files. Tool outputs are computed on the images: by the tool where it is available with "
            "the given config, else from ground truth (built-in synthetic series only)."
        ),
    )
    make.add_argument("--out", type=Path, required=True, help="output folder (created)")
    make.add_argument("--images", type=Path, default=None,
                      help="folder of DICOM series (one per subfolder) to use instead of the built-in synthetic set")
    make.add_argument("--seed", type=int, default=0, help="random seed (split, sampling, synthetic variation)")
    make.add_argument("--config", type=Path, default=None, help="node config (its tools section configures the tools)")
    make.set_defaults(func=run_make_data)

    ev = sub.add_parser(
        "eval", help="tool-selection and parameter accuracy of a planner on an eval file or item set",
        description=(
            "With --data: plan the first turn of every record of FILE (LLaVA JSON lines; image paths "
            "relative to the file's folder) and compare it with the record's first assistant turn. "
            "make-data's eval split is labelled by the rules planner's own tool choice, so on it the "
            "rules planner's score is self-consistency, not accuracy. With --items: score an item set "
            "(JSON lines, docs/agent-eval.md) per item class, tools over all rounds and slots."
        ),
    )
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="eval.jsonl (or a make-data folder holding one)")
    source.add_argument("--items", type=Path, nargs="+", help="item set(s), JSON lines (docs/agent-eval.md)")
    ev.add_argument("--per-item", action="store_true", help="print every item's result (with --items)")
    ev.add_argument("--planner", required=True, help="planner backend: rules, transformers, openai")
    ev.add_argument("--config", type=Path, default=None, help="node config (its planner section configures the backend)")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ev.set_defaults(func=run_eval)

    for module_name, function in EXTRA_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, function)(sub)


def _tool_classes() -> dict[str, Any]:
    from tools.registry import known_tool_classes

    return known_tool_classes()


def run_make_data(args: argparse.Namespace) -> int:
    from agent.dataset import make_data
    from dicom_node.app.commands import load_config_or_report
    from tools.registry import ToolRegistry

    config = load_config_or_report(args.config, sys.stderr)
    if config is None:
        return 2
    if args.images is not None and not args.images.is_dir():
        print(f"--images {args.images}: not a folder", file=sys.stderr)
        return 2
    made = make_data(args.out, _tool_classes(), ToolRegistry(config.tools), images_dir=args.images, seed=args.seed)
    print(
        f"wrote {made.train} train and {made.eval} eval records to {args.out} "
        f"({len(made.train_templates)} train / {len(made.eval_templates)} eval templates; "
        f"tools run for real: {', '.join(made.real_tools) or 'none'})"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from agent.dataset import tool_specs_of
    from agent.evaluate import evaluate
    from agent.planners.base import UnknownPlanner, build_planner
    from config.loader import ConfigError, load_config

    try:
        config = load_config(args.config)
        planner = build_planner(args.planner, config.planner)
    except (ConfigError, UnknownPlanner) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.items is not None:
        return _eval_items(args, planner, tool_specs_of(_tool_classes()))
    data = args.data / "eval.jsonl" if args.data.is_dir() else args.data
    if not data.is_file():
        print(f"--data {args.data}: no such file", file=sys.stderr)
        return 2
    result = evaluate(data, planner, tool_specs_of(_tool_classes()))
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"planner          {args.planner}")
        print(f"records          {result.n}")
        print(f"tool accuracy    {result.tool_accuracy:.3f}")
        print(f"param accuracy   {result.param_accuracy:.3f}")
        print(f"parse failures   {result.parse_failure_rate:.3f}")
    return 0


def _eval_items(args: argparse.Namespace, planner: Any, specs: list[Any]) -> int:
    from agent.eval_sets import ItemError, evaluate_items, format_report

    reports = []
    for path in args.items:
        if not path.is_file():
            print(f"--items {path}: no such file", file=sys.stderr)
            return 2
        try:
            reports.append(evaluate_items(path, planner, specs))
        except ItemError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps([r.to_json() for r in reports]))
    else:
        print("\n\n".join(format_report(r, args.per_item) for r in reports))
    return 0
