"""Compare the rules planner of an older commit with this tree's on the same item sets.

    python scripts/compare_planners.py --old 116238e tests/agent_sets/*.jsonl [--json out.json]

The old tree is exported with ``git archive`` into a temporary folder and its planner runs in a
subprocess with that folder on PYTHONPATH (only the old code is imported there); it reads the
item files with plain ``json`` and plans every item with its own tool specs. This tree's planner
is scored with ``agent.eval_sets``. Both are scored the same way (the set of tools over all
rounds equals the expected set) and reported per set and per item class.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Runs inside the old tree: JSON {set path: {item id: [tools]}, "_ms": ms per plan} on stdout.
OLD_RUNNER = r"""
import json, sys, time
from agent.planners.base import PlanContext
from agent.planners.rules import RulesPlanner
from agent.protocol import Message, first_human_message
from tests.agent_helpers import suite_specs

planner = RulesPlanner(embeddings=True)
out, total_ms, count = {}, 0.0, 0
for path in sys.argv[1:]:
    found = {}
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            continue
        item = json.loads(line)
        modality = item["modality"].upper()
        meta = {"Modality": modality}
        if item.get("body_part"):
            meta["BodyPartExamined"] = item["body_part"]
        ctx = PlanContext(
            instruction=item["instruction"], metadata_text=f"Modality: {modality}", image=None,
            history=[Message.human(first_human_message(item["instruction"]))],
            tools=suite_specs(item.get("available_tools")), modality=modality,
            volume_shape=tuple(item["shape"]), meta=meta,
        )
        start = time.perf_counter()
        found[item["id"]] = [name for name, _ in planner.plan(ctx).actions]
        total_ms += (time.perf_counter() - start) * 1000
        count += 1
    out[path] = found
out["_ms"] = total_ms / max(count, 1)
print(json.dumps(out))
"""


def old_plans(commit: str, sets: list[Path]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="old-planner-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", OLD_RUNNER, *[str(p.resolve()) for p in sets]],
            cwd=tmp, env=env, check=True, capture_output=True, text=True,
        )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="commit of the old planner")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("sets", type=Path, nargs="+")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from agent.dataset import tool_specs_of
    from agent.eval_sets import evaluate_items, read_items
    from agent.planners.rules import RulesPlanner
    from tools.registry import known_tool_classes

    old = old_plans(args.old, args.sets)
    planner = RulesPlanner()
    specs = tool_specs_of(known_tool_classes())
    figures: dict[str, object] = {"old_commit": args.old, "old_ms_per_plan": old["_ms"], "sets": {}}
    totals = {"old": [0, 0], "new": [0, 0]}
    start = time.perf_counter()
    for path in args.sets:
        items = {i.id: i for i in read_items(path)}
        new = evaluate_items(path, planner, specs)
        old_found = old[str(path.resolve())]
        assert isinstance(old_found, dict)
        per_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"old": [0, 0], "new": [0, 0]})
        for r in new.items:
            item = items[r.id]
            old_ok = set(old_found[r.id]) == set(item.expected_tools)
            for who, ok in (("old", old_ok), ("new", r.tools_ok)):
                per_class[r.item_class][who][0] += ok
                per_class[r.item_class][who][1] += 1
                totals[who][0] += ok
                totals[who][1] += 1
        old_right = sum(v["old"][0] for v in per_class.values())
        print(f"\n{path.name}: old {old_right}/{len(items)} ({old_right / len(items):.1%}), "
              f"new {sum(r.tools_ok for r in new.items)}/{len(items)} ({new.tool_accuracy:.1%})")
        for name, v in sorted(per_class.items()):
            print(f"  {name:<11} old {v['old'][0]:>3}/{v['old'][1]:<3} new {v['new'][0]:>3}/{v['new'][1]}")
        figures["sets"][path.name] = {k: dict(v) for k, v in per_class.items()}  # type: ignore[index]
    new_ms = (time.perf_counter() - start) * 1000 / max(totals["new"][1], 1)
    print(f"\nall: old {totals['old'][0]}/{totals['old'][1]}, new {totals['new'][0]}/{totals['new'][1]}; "
          f"ms per plan: old {float(old['_ms']):.1f}, new (with scoring) {new_ms:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
