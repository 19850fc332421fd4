"""Fuzz campaign (not a test): the mutation fuzzer of testkit/fuzz_dicom.py against ``mmed-node
serve`` of the working tree, on a large budget (issue 11 asks for 100 000 inputs with 0 crashes
and 0 invariant violations).

The invariants are checked every ``--check-every`` cases and at the end; the run stops at the
first violation and prints the seed and case number, which replay it (the cases are a pure
function of the seed). Progress goes to stderr, the report (JSON) to stdout or ``--json``.
Run inside a private network namespace:

    bench/run.sh bench.bench_fuzz --cases 100000 --seed 1 [--json bench/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from testkit.crafted import MB
from testkit.fuzz_dicom import FUZZ_CONFIG, Report, fuzz
from testkit.served_node import RSS_BUDGET_BYTES, ServedNode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check-every", type=int, default=500)
    parser.add_argument("--rss-budget-mb", type=int, default=RSS_BUDGET_BYTES // MB)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the node's folder (log, spool) afterwards")
    args = parser.parse_args(argv)

    def progress(report: Report) -> None:
        rate = report.cases / report.seconds if report.seconds else 0.0
        print(f"{report.cases} cases, {rate:.0f}/s, {len(report.acknowledged)} acknowledged, "
              f"peak RSS +{report.peak_rss_growth / MB:.0f} MB, echo max {report.max_echo_seconds:.2f} s, "
              f"violations {len(report.violations)}", file=sys.stderr, flush=True)

    folder = Path(tempfile.mkdtemp(prefix="mmed-fuzz-"))
    # The node's jobs load each series through the real loader (testkit/served_node.py).
    node = ServedNode(folder, FUZZ_CONFIG, runner="testkit.served_node:loading_runner")
    try:
        report = fuzz(node, args.seed, args.cases, args.rss_budget_mb * MB, args.check_every, progress)
    finally:
        node.stop()
    result = {"seed": args.seed, "budget": args.cases, "rss_budget_mb": args.rss_budget_mb,
              "node_start_rss_mb": round(node.start_rss / MB, 1), **report.as_dict(),
              "folder": str(folder) if args.keep else None}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
