"""Benchmark (not a test): what one job costs in memory and in time, against a floor run the same way.

The input is a CT phantom of 512x512 slices (:mod:`testkit.phantoms`, a chest 300 mm long, so
the default route's thorax check passes at any slice count), written once per size into
``--cache``. The **floor** is the least a program must do for the same result: read the slices
with pydicom, stack them, label the two largest air components inside the body with scipy,
encode a 2-segment BINARY SEG with highdicom and write it (:mod:`bench.job_floor`).

``memory``: for each ``--slices`` size, a fresh process warms up on a small series (imports,
the planner's models), then the job runs (:func:`dicom_node.jobs.pipeline.run_job`, embedded
defaults) and its peak RSS above the warm process is measured (VmHWM reset before the job). The
same for the floor. Reported: the fixed cost (RSS of the warm process), the peak increase per
size, each as a multiple of the series' int16 size, and the slope between the two sizes per
slice, as a multiple of one int16 slice (512 KiB).

``latency``: a node (``mmed-node serve``, embedded defaults, the default CT lung route, a quiet
period of ``--quiet`` seconds) sends to a dcmtk storescp PACS stand-in. After a warm-up series,
the measured series is sent with storescu over one association; the latency is the time from
storescu's exit (the last instance acknowledged, the association released) until the SEG+SR
delivery records are ``done`` (the PACS acknowledged both), minus the quiet period. The split:
``dispatch`` (quiet period's end -> the job starts: scheduler pass, routing's thorax check
unless it was done ahead, queue), the run's own stages (``load``, ``tools``, ``encode``,
``write``, from its manifest) and ``send`` (manifest written -> acknowledged). With work ahead
(``node.work_ahead``, the default) the node routes the series and runs load, tools and encode
during the quiet period, once the association is released and nothing arrived for 0.5 s; the
job adopts that work: ``ahead`` is the seconds of those stages, ``overlap`` the part of them
done before the quiet period ended (the rest delays the job's start, and counts in the latency;
it is not in ``dispatch``). ``hand-off``: the quiet period's end -> the job record queued
(issue 14: within 1 s). ``--work-ahead both`` starts two nodes, with and without work ahead,
and sends each repetition's series to both in turn, the first one alternating (a comparison
within one run). The node's
peak RSS during the measured series is reported too. The floor runs on the same files, in its
own process, in the same invocation.

    bench/run.sh bench.bench_job memory --slices 100 400
    bench/run.sh bench.bench_job latency --slices 200 --reps 2
    bench/run.sh bench.bench_job latency --slices 500 --quiet 5 --work-ahead both
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_receive import ECHOSCU, STORESCP, STORESCU, dcmtk_env, free_port
from testkit import procfs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CALLED_AE = "MMEDNODE"
CHEST_MM = 300.0
PIXEL_MM = 0.7
SLICE_INT16_BYTES = 512 * 512 * 2
WARM_SLICES = 48
INSTRUCTION = "Segment the lungs and measure their volumes."


def series(cache: Path, slices: int, size: int = 512) -> Path:
    """The phantom series of ``slices`` slices (written once into ``cache``)."""
    from testkit.phantoms import write_ct_phantom

    folder = cache / f"ct{size}x{slices}"
    if len(list(folder.glob("*.dcm"))) != slices:
        shutil.rmtree(folder, ignore_errors=True)
        pixel = PIXEL_MM * 512 / size
        write_ct_phantom(folder, slices=slices, rows=size, cols=size, pixel_spacing=pixel,
                         slice_spacing=CHEST_MM / slices, bronchi=True, seed=slices)
    return folder


# -- inside one measured process ------------------------------------------------------------------


def _status(key: str, pid: int | str = "self") -> float:
    """A VmRSS/VmHWM line of /proc/PID/status, in MB."""
    return procfs.status_kb(pid, key) / 1024


def _reset_peak(pid: int | str = "self") -> None:
    """VmHWM := VmRSS (proc(5), clear_refs value 5)."""
    procfs.reset_peak(pid)


def _job_spec(folder: Path, result_dir: Path) -> Any:
    import pydicom

    from dicom_node.jobs.spec import JobSpec

    first = pydicom.dcmread(min(folder.glob("*.dcm")), stop_before_pixels=True)
    return JobSpec(
        job_id=f"bench-{folder.name}", study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID), series_dir=str(folder), result_dir=str(result_dir),
        route="ct-lungs", instruction=INSTRUCTION, planner="rules", destinations=["pacs"],
    )


def measure_in_process(kind: str, folder: Path, warm: Path, work: Path) -> dict[str, Any]:
    """Warm up on ``warm``, then run ``kind`` (job or floor) on ``folder``; peak above warm."""
    if kind == "job":
        from config.loader import load_config
        from dicom_node.jobs.pipeline import WorkerContext, run_job

        config = load_config(overrides={"node": {"data_dir": str(work / "var")}})
        ctx = WorkerContext.build(config)

        def run(source: Path, out: Path) -> dict[str, float]:
            return dict(getattr(run_job(_job_spec(source, out), ctx), "timings", {}))
    else:
        from bench.job_floor import floor

        def run(source: Path, out: Path) -> dict[str, float]:
            return floor(source, out / "seg.dcm")

    run(warm, work / "warm")
    fixed = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    timings = run(folder, work / "measured")
    seconds = time.perf_counter() - start
    return {"fixed_mb": fixed, "peak_mb": _status("VmHWM"), "seconds": seconds, "timings": timings}


def measure(kind: str, folder: Path, warm: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-job-") as work:
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_job", "_measure", kind, str(folder), str(warm), work],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} on {folder.name} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- memory ---------------------------------------------------------------------------------------


def memory(args: argparse.Namespace) -> dict[str, Any]:
    warm = series(args.cache, WARM_SLICES, 128)
    rows: list[dict[str, Any]] = []
    for slices in args.slices:
        folder = series(args.cache, slices)
        for kind in ("floor", "job"):
            r = measure(kind, folder, warm)
            r.update(kind=kind, slices=slices, int16_mb=slices * SLICE_INT16_BYTES / 2**20)
            r["increase_mb"] = r["peak_mb"] - r["fixed_mb"]
            rows.append(r)
            print(f"  {kind:5} {slices:5} slices: fixed {r['fixed_mb']:6.0f} MB, peak {r['peak_mb']:6.0f} MB, "
                  f"+{r['increase_mb']:6.0f} MB = {r['increase_mb'] / r['int16_mb']:5.2f}x int16, "
                  f"{r['seconds']:6.1f} s", flush=True)
    print("\n| process | slices | int16 MB | fixed MB | peak MB | peak - fixed | / int16 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['slices']} | {r['int16_mb']:.0f} | {r['fixed_mb']:.0f} | {r['peak_mb']:.0f} "
              f"| {r['increase_mb']:.0f} | {r['increase_mb'] / r['int16_mb']:.2f}x | {r['seconds']:.1f} |")
    slopes = {}
    if len(args.slices) >= 2:
        lo, hi = min(args.slices), max(args.slices)
        for kind in ("floor", "job"):
            a = next(r for r in rows if r["kind"] == kind and r["slices"] == lo)
            b = next(r for r in rows if r["kind"] == kind and r["slices"] == hi)
            per_slice = (b["peak_mb"] - a["peak_mb"]) / (hi - lo)
            slopes[kind] = per_slice * 2**20 / SLICE_INT16_BYTES
            print(f"slope {kind}: {per_slice:.2f} MB per slice = {slopes[kind]:.2f}x int16 ({lo} -> {hi} slices)")
    return {"rows": rows, "slope_vs_int16": slopes}


# -- latency --------------------------------------------------------------------------------------


class LatencyRig:
    """A PACS stand-in (dcmtk storescp) and ``mmed-node serve`` of the working tree."""

    def __init__(self, work: Path, quiet: float, work_ahead: bool = True,
                 receivers: int | str | None = None) -> None:
        self.work, self.quiet, self.work_ahead = work, quiet, work_ahead
        #: node.receivers (None: the configuration's default).
        self.receivers = receivers
        self.pacs_dir = work / "pacs"
        self.data_dir = work / "var"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.pacs_dir.mkdir(parents=True)
        pacs_port, self.port = free_port(), free_port()
        env = dcmtk_env()
        self.procs.append(subprocess.Popen(
            [STORESCP, "-aet", "PACS", "-od", str(self.pacs_dir), "-uf", str(pacs_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        node: dict[str, Any] = {"ae_title": CALLED_AE, "port": self.port, "data_dir": str(self.data_dir),
                                "series_quiet_seconds": self.quiet, "work_ahead": self.work_ahead}
        if self.receivers is not None:
            node["receivers"] = self.receivers
        config = {
            "node": node,
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        }
        (self.work / "node.yaml").write_text(json.dumps(config))
        log = (self.work / "node.log").open("ab")
        self.node = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.app.cli", "serve", "--config", str(self.work / "node.yaml")],
            cwd=PROJECT_ROOT, env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(self.node)
        deadline = time.monotonic() + 120
        while subprocess.run([ECHOSCU, "-aec", CALLED_AE, "127.0.0.1", str(self.port)],
                             env=env, capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline or self.node.poll() is not None:
                raise RuntimeError("node did not start: " + (self.work / "node.log").read_text()[-2000:])
            time.sleep(0.3)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def send_and_wait(self, folder: Path, timeout: float = 900.0) -> dict[str, Any]:
        """Send ``folder`` over one association; wait until its results are acknowledged."""
        before = {p.name for p in (self.data_dir / "outbox").glob("*.json")} if (self.data_dir / "outbox").is_dir() else set()
        _reset_peak(self.node.pid)
        subprocess.run([STORESCU, "-aec", CALLED_AE, "127.0.0.1", str(self.port), *map(str, sorted(folder.glob("*.dcm")))],
                       env=dcmtk_env(), check=True, capture_output=True)
        sent = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = [json.loads(p.read_text()) for p in (self.data_dir / "outbox").glob("*.json")
                       if p.name not in before] if (self.data_dir / "outbox").is_dir() else []
            if records and all(r.get("state") == "done" for r in records):
                acked = time.time()
                break
            if any(r.get("state") == "failed" for r in records):
                raise RuntimeError(f"delivery failed: {records}")
            time.sleep(0.02)
        else:
            raise RuntimeError("no result acknowledged: " + (self.work / "node.log").read_text()[-3000:])
        job_id = records[0]["job_id"]
        manifest_path = self.data_dir / "results" / job_id / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        timings: dict[str, float] = manifest.get("timings", {})
        ahead: dict[str, float] = manifest.get("ahead", {})
        job_end = manifest_path.stat().st_mtime
        total = acked - sent - self.quiet
        quiet_end = sent + self.quiet
        job_start = job_end - sum(timings.values())
        # Work ahead: the part of it done after the quiet period's end delayed the job's start.
        late = max(0.0, (manifest.get("ahead_ended") or quiet_end) - quiet_end) if ahead else 0.0
        record = json.loads((self.data_dir / "jobs" / f"{job_id}.json").read_text())
        split = {"handoff": record["stages"]["queued"] - quiet_end,
                 "dispatch": job_start - quiet_end - late, **ahead, **timings,
                 "send": acked - job_end, "ahead": sum(ahead.values()),
                 "overlap": sum(ahead.values()) - late}
        return {"latency": total, "split": split, "node_peak_mb": _status("VmHWM", self.node.pid),
                "files": sum(1 for _ in self.pacs_dir.iterdir())}


#: --work-ahead -> the node.work_ahead setting of each node started.
_AHEAD_SETTINGS = {"on": (True,), "off": (False,), "both": (True, False)}


def latency(args: argparse.Namespace) -> dict[str, Any]:
    warm = series(args.cache, WARM_SLICES, 128)
    results: list[dict[str, Any]] = []
    for slices in args.slices:
        folder = series(args.cache, slices)
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            # One node per setting of node.work_ahead, both up during the whole run (an idle node
            # costs next to nothing); each repetition sends the same series to each in turn.
            rigs = {ahead: LatencyRig(Path(tmp) / f"ahead-{ahead}", args.quiet, ahead)
                    for ahead in _AHEAD_SETTINGS[args.work_ahead]}
            try:
                for rig in rigs.values():
                    rig.start()
                    rig.send_and_wait(warm)
                for rep in range(args.reps):
                    floor = measure("floor", folder, warm)
                    if rep:  # the same series again would be a duplicate: a fresh copy's UIDs
                        folder = _renamed_copy(folder, Path(tmp) / f"rep{rep}", rep)
                    # Alternate which node goes first: the first one runs right after the floor.
                    for ahead, rig in list(rigs.items())[::-1 if rep % 2 else 1]:
                        node = rig.send_and_wait(folder)
                        row = {"slices": slices, "work_ahead": ahead, "floor_s": floor["seconds"], **node,
                               "ratio": node["latency"] / floor["seconds"]}
                        results.append(row)
                        split = ", ".join(f"{k} {v:.2f}" for k, v in node["split"].items())
                        print(f"  {slices} slices, work ahead {'on' if ahead else 'off'}: floor "
                              f"{floor['seconds']:.2f} s, node {node['latency']:.2f} s (ratio {row['ratio']:.2f}; "
                              f"{split}), node peak {node['node_peak_mb']:.0f} MB", flush=True)
            finally:
                for rig in rigs.values():
                    rig.stop()
    print("\n| slices | ahead | floor s | node s (minus quiet) | ratio | dispatch | load | tools | encode | write | send "
          "| ahead | overlap | hand-off | node peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["split"]
        print(f"| {r['slices']} | {'on' if r['work_ahead'] else 'off'} | {r['floor_s']:.2f} | {r['latency']:.2f} | {r['ratio']:.2f} | "
              + " | ".join(f"{s.get(k, 0.0):.2f}" for k in ("dispatch", "load", "tools", "encode", "write", "send",
                                                           "ahead", "overlap", "handoff"))
              + f" | {r['node_peak_mb']:.0f} |")
    return {"rows": results}


def _renamed_copy(folder: Path, dest: Path, rep: int) -> Path:
    """``folder`` with new study/series/instance UIDs (a new series to the node)."""
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True)
    study, series_uid = generate_uid(), generate_uid()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dest / path.name, enforce_file_format=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_measure":
        kind, folder, warm, work = argv[1:5]
        print(json.dumps(measure_in_process(kind, Path(folder), Path(warm), Path(work))))
        return 0
    parser = argparse.ArgumentParser(description="job memory and latency against the floor")
    parser.add_argument("mode", choices=["memory", "latency"])
    parser.add_argument("--slices", type=int, nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--quiet", type=float, default=2.0, help="series_quiet_seconds (latency)")
    parser.add_argument("--work-ahead", choices=sorted(_AHEAD_SETTINGS), default="on",
                        help="node.work_ahead of the node (latency); both: two nodes, the same series to each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mmed-bench-series")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.slices = args.slices or ([100, 400] if args.mode == "memory" else [200])
    args.cache.mkdir(parents=True, exist_ok=True)
    result = memory(args) if args.mode == "memory" else latency(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": args.mode, **result}, indent=2))
    return 0


if __name__ == "__main__":
    if os.environ.get("MMED_IN_NETNS") != "1" and sys.argv[1:2] == ["latency"]:
        print("note: not in a private network namespace (use bench/run.sh)", file=sys.stderr)
    raise SystemExit(main())
