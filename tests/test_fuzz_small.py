"""Issue 11: the mutation fuzzer (testkit/fuzz_dicom.py) on a small budget against a running node.

PDU streams and C-STORE datasets (explicit, implicit, deflate, RLE, nested sequences; geometry
and deflate bombs) mutated from seeds; every 100 cases and at the end the invariants hold:
C-ECHO within 2 s, peak RSS under start + 256 MB, every acknowledged instance in the spool,
nothing outside data_dir, no uncaught exception in the log. The large budget is bench/bench_fuzz.py.
"""

from __future__ import annotations

from pathlib import Path

from testkit.fuzz_dicom import FUZZ_CONFIG, fuzz
from testkit.served_node import RSS_BUDGET_BYTES, ServedNode

#: Cases per run: a few seconds on a busy 2-core machine. The seed is fixed: a failure replays.
BUDGET = 400
SEED = 11


def test_fuzz_small_budget(served: list[ServedNode], tmp_path: Path) -> None:
    node = ServedNode(tmp_path, FUZZ_CONFIG, runner="testkit.served_node:loading_runner")
    served.append(node)
    report = fuzz(node, SEED, BUDGET, RSS_BUDGET_BYTES, check_every=100)
    assert report.violations == [], report.as_dict()
    assert report.cases == BUDGET
    # The campaign reached both outcomes: some inputs stored, some refused or dropped.
    assert report.acknowledged and any(k.startswith(("store:0xc", "store:dropped")) for k in report.outcomes)
