"""Soak benchmark (not a test): a long stretch of traffic in compressed time, retention on.

A node runs in this process (embedded pool, a stand-in job that writes one derived instance per
series, the real outbox) with two destinations, dcmtk storescp both: ``pacs``, always up, and
``viewer``, down for a fifth of the run in the middle, so that results pile up undelivered.
Thousands of small series are sent with dcmtk storescu, several per association, at a pace the
node's outbox keeps up with (``--pace`` seconds between associations). Retention runs every
``--interval`` seconds with a size quota (``--quota-mb``, chosen above the outage's undelivered
backlog: undelivered results are never removed, so no quota below them can hold) and a maximum
age (``--max-age`` seconds, the "week" compressed).

What it measures, against the quota set in the same run: the largest data_dir size sampled
(spool + results + outbox + job records) as a share of the quota, and what retention removed.
What it checks: every series that was removed had its result delivered to both destinations;
every series sent was processed; nothing was delivered twice.

    bench/run.sh bench.bench_soak                      # 2000 series, 12 MB quota
    bench/run.sh bench.bench_soak --series 5000 --quota-mb 40 --json bench/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom

from config.loader import load_config
from dicom_node.app.node import Node
from dicom_node.app.retention_plan import tree_bytes
from dicom_node.jobs.manifest import Manifest
from dicom_node.jobs.spec import JobSpec
from testkit.phantoms import write_ct_phantom

DCMTK = Path("/usr/bin")
AREAS = ("spool", "results", "outbox", "jobs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoreSCP:
    """dcmtk storescp writing what it receives (unique file names: a second copy shows)."""

    def __init__(self, folder: Path, ae_title: str) -> None:
        self.folder, self.ae_title, self.port = folder, ae_title, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(DCMTK / "storescp"), "-od", str(self.folder), "-aet", self.ae_title, "-uf",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"})
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def sop_uids(self) -> list[str]:
        return [str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                    .SOPInstanceUID) for p in self.folder.iterdir()]


@dataclass
class Figures:
    series: int
    seconds: float
    series_per_minute: float
    quota_bytes: int
    peak_bytes: int
    peak_share_of_quota: float
    final_bytes: int
    removed_series: int
    retention_passes: int
    undelivered_at_peak: int
    removed_undelivered: int
    unprocessed: int
    duplicate_deliveries: int


class Produced:
    """The stand-in job: one derived instance per series, its UID derived from the job id, so
    that a delivery can be traced back to its job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[str, tuple[str, str]] = {}  # job id -> (series UID, result SOP UID)

    def __call__(self, spec: JobSpec) -> Manifest:
        source = min(Path(spec.series_dir).glob("*.dcm"))
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["series", spec.job_id])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["sop", spec.job_id])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = Path(spec.result_dir)
        out.mkdir(parents=True, exist_ok=True)
        ds.save_as(out / "derived.dcm", enforce_file_format=True)
        with self.lock:
            self.by_job[spec.job_id] = (spec.series_uid, str(ds.SOPInstanceUID))
        return Manifest(job_id=spec.job_id, files=["derived.dcm"])


def write_series(folder: Path, count: int) -> list[list[Path]]:
    series = []
    for i in range(count):
        truth = write_ct_phantom(folder / f"s{i:05d}", slices=2, rows=32, cols=32, seed=i)
        series.append(truth.files)
    return series


def undelivered(outbox: Path) -> int:
    """Delivery records not done (retention may remove records while they are read)."""
    count = 0
    for path in outbox.glob("*.json"):
        try:
            count += json.loads(path.read_text()).get("state") != "done"
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return count


class Removals(logging.Handler):
    """Counts retention's passes and removals from its log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.passes = 0
        self.removed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retention: removed "):
            self.passes += 1
            self.removed += int(record.getMessage().split()[2])


def run(args: argparse.Namespace, root: Path) -> Figures:
    pacs, viewer = StoreSCP(root / "pacs", "PACS"), StoreSCP(root / "viewer", "VIEWER")
    pacs.start()
    viewer.start()
    quota = args.quota_mb << 20
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(root / "var"), "series_quiet_seconds": 0.2,
                 "require_association_release": True, "workers": 2},
        "destinations": {
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
            "viewer": {"ae_title": "VIEWER", "host": "127.0.0.1", "port": viewer.port}},
        "outbox": {"retry_initial_seconds": 0.5, "retry_max_seconds": 2,
                   "retry_window_seconds": 3600},
        "routes": [{"name": "copy", "match": {"Modality": "CT"}, "instruction": "Copy.",
                    "send_to": ["pacs", "viewer"]}],
        "retention": {"max_size": quota, "max_age_days": args.max_age / 86400,
                      "interval_seconds": args.interval, "min_idle_seconds": 1.0,
                      "min_free_percent": 0, "min_free": 0},
    })
    print(f"writing {args.series} series ...", flush=True)
    series = write_series(root / "in", args.series)
    produced = Produced()
    removals = Removals()
    logging.getLogger("dicom_node.app.retention").addHandler(removals)
    logging.getLogger("dicom_node.app.retention").setLevel(logging.INFO)
    peak, undelivered_at_peak = 0, 0
    sampling = threading.Event()
    data = root / "var"

    def sample() -> None:
        nonlocal peak, undelivered_at_peak
        while not sampling.wait(0.2):
            size = sum(tree_bytes(data / area) for area in AREAS)
            if size > peak:
                peak = size
                undelivered_at_peak = undelivered(data / "outbox")

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    with Node(config, runner=produced) as node:
        sampler.start()
        batches = [series[i:i + args.per_association]
                   for i in range(0, len(series), args.per_association)]
        outage = range(2 * len(batches) // 5, 3 * len(batches) // 5)
        for number, batch in enumerate(batches):
            if number == outage.start:
                viewer.stop()
                print("viewer down", flush=True)
            if number == outage.stop:
                viewer.start()
                print("viewer up again", flush=True)
            files = [str(f) for s in batch for f in s]
            sent = subprocess.run([str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "MMEDNODE",
                                   "127.0.0.1", str(node.port), *files], check=False, text=True,
                                  env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stdout[-2000:]}{sent.stderr[-2000:]}")
            time.sleep(args.pace)
            if number % 20 == 0:
                print(f"{number * args.per_association} series sent, "
                      f"{sum(tree_bytes(data / a) for a in AREAS) >> 10} KiB", flush=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            jobs = node.jobs.all()
            if len(produced.by_job) >= args.series and all(j.state.finished for j in jobs) \
                    and not undelivered(data / "outbox"):
                break
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        node.retention.run()  # the last pass, with everything delivered
        sampling.set()
        sampler.join()
        records = {j.job_id for j in node.jobs.all()}
        final = sum(tree_bytes(data / area) for area in AREAS)
    pacs.stop()
    viewer.stop()
    at_pacs, at_viewer = pacs.sop_uids(), viewer.sop_uids()
    removed = [job for job in produced.by_job if job not in records]
    removed_undelivered = sum(1 for job in removed
                              if produced.by_job[job][1] not in set(at_pacs)
                              or produced.by_job[job][1] not in set(at_viewer))
    processed = {series_uid for series_uid, _ in produced.by_job.values()}
    sent = {str(pydicom.dcmread(s[0], stop_before_pixels=True).SeriesInstanceUID) for s in series}
    return Figures(
        series=args.series, seconds=round(elapsed, 1),
        series_per_minute=round(args.series / elapsed * 60, 1), quota_bytes=quota,
        peak_bytes=peak, peak_share_of_quota=round(peak / quota, 3), final_bytes=final,
        removed_series=len(removed), retention_passes=removals.passes,
        undelivered_at_peak=undelivered_at_peak, removed_undelivered=removed_undelivered,
        unprocessed=len(sent - processed),
        duplicate_deliveries=(len(at_pacs) - len(set(at_pacs))) + (len(at_viewer) - len(set(at_viewer))),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--per-association", type=int, default=20)
    parser.add_argument("--quota-mb", type=int, default=12,
                        help="above the viewer outage's undelivered backlog, below the total")
    parser.add_argument("--pace", type=float, default=3.0, help="seconds between associations")
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds (the compressed week)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The viewer's outage is expected: its per-attempt lines would drown the figures.
    for noisy in ("pynetdicom", "dicom_node.deliver"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        figures = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(asdict(figures), indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(figures), indent=2))
    ok = (figures.removed_undelivered == 0 and figures.unprocessed == 0
          and figures.duplicate_deliveries == 0 and figures.peak_bytes <= figures.quota_bytes)
    print("OK" if ok else "FAILED: see the figures")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
