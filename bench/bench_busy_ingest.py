"""Benchmark (not a test): C-STORE ingest while the node works on another series, against the same
node idle.

A node receives while it runs jobs: in the embedded queue (the default) a job's stages run on
threads of the node's process. This measures what that does to ingest, per ``node.receivers``
setting. One node (``mmed-node serve`` of the working tree, embedded defaults, the default CT lung
route, a dcmtk storescp PACS stand-in: :class:`bench.bench_job.LatencyRig`) per ``--receivers``
value, warmed up on a small series (imports, the planner's models). Then, per repetition and per
``--parallel`` value:

1. *idle*: a series of ``--slices`` CT slices sent over that many associations to the idle node;
2. series A sent over one association; once the node's own process is busy with it (work ahead
   or the job: above half a core of CPU over 0.1 s, polled after A's association ended),
3. *busy*: a third series sent over that many associations while A's work runs;
4. the node is left to finish every job and delivery before the next step.

Each series is new to the node (fresh UIDs). Reported per setting: the idle and busy rates
(instances/s, best and median) and the median of busy/idle paired by repetition. A repetition
in which A's job finished before the busy series' last instance was acknowledged is flagged
(``busy throughout``): its busy rate then covers some idle time. Absolute rates drift with the
machine; compare the ratios, in one run on one machine. Run in a private network namespace:

    bench/run.sh bench.bench_busy_ingest [--receivers 1 auto] [--parallel 1 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_job import CALLED_AE, LatencyRig, _renamed_copy, series
from bench.bench_receive import own_cpu_seconds, send

WARM_SLICES = 48
#: The node's own process counts as busy above this share of a core ...
BUSY_SHARE = 0.5
#: ... over this window.
BUSY_WINDOW_S = 0.1
#: A's work must start within this long after its association ended.
BUSY_WAIT_S = 20.0
#: Every job and delivery must be done within this long after the busy series.
SETTLE_TIMEOUT_S = 900.0


def _records(rig: LatencyRig, folder: str) -> list[dict[str, Any]]:
    path = rig.data_dir / folder
    return [json.loads(p.read_text()) for p in path.glob("*.json")] if path.is_dir() else []


def _series_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(min(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def wait_busy(pid: int) -> float:
    """Seconds until process ``pid`` (the node's own, without its receivers) uses more than
    :data:`BUSY_SHARE` of a core over :data:`BUSY_WINDOW_S`."""
    start = time.perf_counter()
    while time.perf_counter() - start < BUSY_WAIT_S:
        before = own_cpu_seconds(pid)
        time.sleep(BUSY_WINDOW_S)
        if own_cpu_seconds(pid) - before > BUSY_SHARE * BUSY_WINDOW_S:
            return time.perf_counter() - start
    raise RuntimeError(f"the node did not start work on the series within {BUSY_WAIT_S:.0f} s")


def wait_settled(rig: LatencyRig, jobs: int) -> None:
    """Until ``jobs`` job records are finished and every delivery is done."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        records = _records(rig, "jobs")
        outbox = _records(rig, "outbox")
        if len(records) >= jobs and all(r.get("finished") for r in records) and \
                all(r.get("state") in ("done", "failed") for r in outbox):
            return
        time.sleep(0.1)
    raise RuntimeError("jobs still running: " + (rig.work / "node.log").read_text()[-2000:])


def rate(rig: LatencyRig, folder: Path, parallel: int) -> tuple[float, float]:
    """(instances/s, the time the last association ended) for ``folder`` sent over ``parallel``."""
    files = sorted(folder.glob("*.dcm"))
    seconds = send(rig.port, files, parallel, called_ae=CALLED_AE)
    return len(files) / seconds, time.time()


def measure(rig: LatencyRig, base: Path, work: Path, parallel: list[int], reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sent = 1  # the warm-up series
    for rep in range(reps):
        for n in parallel:
            tag = f"{n}-{rep}"
            idle, _ = rate(rig, _renamed_copy(base, work / f"idle-{tag}", rep), n)
            sent += 1
            wait_settled(rig, sent)
            job = _renamed_copy(base, work / f"job-{tag}", rep)
            busy_series = _renamed_copy(base, work / f"busy-{tag}", rep)
            send(rig.port, sorted(job.glob("*.dcm")), 1, called_ae=CALLED_AE)
            waited = wait_busy(rig.node.pid)
            busy, ended = rate(rig, busy_series, n)
            uid = _series_uid(job)
            finished = [r.get("finished") for r in _records(rig, "jobs") if r.get("series_uid") == uid]
            throughout = not finished or not finished[0] or finished[0] > ended
            sent += 2
            wait_settled(rig, sent)
            row = {"receivers": rig.receivers, "parallel": n, "rep": rep, "idle": idle, "busy": busy,
                   "ratio": busy / idle, "busy_throughout": throughout, "busy_after_s": waited}
            rows.append(row)
            print(f"  receivers {rig.receivers}, {n} assoc, rep {rep}: idle {idle:.0f}, busy {busy:.0f} inst/s "
                  f"(ratio {busy / idle:.2f}; work started {waited:.2f} s after the association"
                  f"{'' if throughout else '; the job ended before the busy series did'})", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> None:
    print("\n| receivers | assoc | idle best | idle median | busy best | busy median | busy/idle (paired median) "
          "| reps busy throughout |")
    print("|---|---|---|---|---|---|---|---|")
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((str(r["receivers"]), r["parallel"]), []).append(r)
    for (receivers, n), cell in cells.items():
        idle = [r["idle"] for r in cell]
        busy = [r["busy"] for r in cell]
        print(f"| {receivers} | {n} | {max(idle):.0f} | {statistics.median(idle):.0f} | {max(busy):.0f} "
              f"| {statistics.median(busy):.0f} | {statistics.median(r['ratio'] for r in cell):.2f} "
              f"| {sum(r['busy_throughout'] for r in cell)} of {len(cell)} |")


def _receivers(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ingest while the node works on another series")
    parser.add_argument("--receivers", type=_receivers, nargs="+", default=[1, "auto"],
                        help="node.receivers values (a number or auto)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--quiet", type=float, default=1.0, help="series_quiet_seconds")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mmed-bench-series")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    base, warm = series(args.cache, args.slices), series(args.cache, WARM_SLICES, 128)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
        for receivers in args.receivers:
            work = Path(tmp) / f"receivers-{receivers}"
            rig = LatencyRig(work, args.quiet, receivers=receivers)
            try:
                rig.start()
                rig.send_and_wait(warm)
                rows += measure(rig, base, work, args.parallel, args.reps)
            finally:
                rig.stop()
    table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
