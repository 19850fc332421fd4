"""Benchmark (not a test): C-STORE receive throughput of the node against reference receivers.

200 CT slices of 512x512 (16-bit, explicit VR little endian) are sent by dcmtk ``storescu`` over
1 and over 4 parallel associations (the files split over 4 storescu processes) to each receiver:

- ``dcmtk``       dcmtk storescp (C++), ``-od`` into a temp folder, no fsync; 4 associations use
                  ``--fork`` (without it storescp serves one association at a time)
- ``orthanc``     Orthanc with a generated config, storage and index in a temp folder (its
                  defaults otherwise)
- ``pynetdicom``  bench/minimal_scp.py: pynetdicom writing the raw bytes (no fsync, no parse)
- ``node``        ``mmed-node serve`` of the working tree, data_dir in a temp folder, a route
                  that matches nothing and a quiet period of an hour (no job runs), and a
                  stand-in job runner, so the pipeline's warm-up (model-library imports on a
                  background thread at start) does not compete with the receive path; once per
                  ``--node-receivers`` value (``node.receivers``: 1 receives in the node's
                  process, N in N receiver processes sharing the listening socket)
- ``node@REF``    the working tree's node with the receive path (dicom_node/receive/) taken
                  from git ref REF (``--node-ref``, e.g. HEAD), or with the modules of a
                  folder (``FOLDER/dicom_node/...py``: variants, or a ref exported where there
                  is no repository), with the most ``--node-receivers`` measured: before/after
                  in one run on one machine

Every run starts each receiver fresh and waits until it answers C-ECHO and its processes use no CPU
(a node's other receiver processes may still be starting when the first one answers); with
``--warm-up`` it then sends it another series of the same size, untimed, so that the run measures a
running receiver rather than a just-started one's first series. Every run checks every instance was
stored, and reports instances/s as the best and the median of ``--reps`` runs (receivers take turns
within each repetition), the ratio of bests to dcmtk measured in the same invocation, the median of
the ratios paired by repetition (each receiver's run against dcmtk's in the same turn, so that
drift over the invocation cancels), and the receiver's CPU time per instance (user + system, from
/proc; less sensitive to other load on the machine than wall time). Absolute numbers drift with
machine load; compare ratios. The header names the cores this process may use: several receiver
processes cannot go past them. Run inside a private network namespace:

    bench/run.sh bench.bench_receive [--reps 3] [--node-receivers 1 2 4] [--node-ref HEAD]
                                     [--warm-up] [--json bench/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from config.schema import NodeConfig
from dicom_node.receive.processes import receiver_count
from testkit import procfs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: By absolute path: a pyenv shim named storescp (pynetdicom's app) shadows dcmtk's on PATH.
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
#: The reference receiver's name in the table and the JSON (every ratio is against it).
DCMTK_NAME = "dcmtk storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
CALLED_AE = "BENCH"
READY_TIMEOUT_S = 60.0
#: After its first C-ECHO answer a receiver must also be idle before a run starts: a node with
#: several receiver processes answers from the first one up while the others are still starting
#: (importing their modules), and that CPU would be measured as ingest and compete with it (four
#: receivers on two cores: 0.15-0.27 s of CPU in the quarter second after the first answer).
#: Idle: at most one clock tick of CPU in each of two samples in a row.
IDLE_SAMPLE_S = 0.25
IDLE_CPU_S = 0.011
IDLE_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 600.0


def dcmtk_env() -> dict[str, str]:
    """dcmtk and Orthanc leave Nagle on unless TCP_NODELAY=1 (MISSION: ~45 ms per instance)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- input series ---------------------------------------------------------------------------------


def write_ct_series(
    out_dir: Path, slices: int, rows: int, cols: int, study: str | None = None, series: str | None = None
) -> list[Path]:
    """A CT series of ``slices`` files (one header template, per-slice UIDs and positions), in
    ``study`` and ``series`` (new UIDs where not given).

    Faster than testkit.phantoms for 512x512x200; pixel content does not matter to the receivers.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study, series, frame = study or generate_uid(), series or generate_uid(), generate_uid()
    base = (rng.normal(0, 30, (rows, cols)) + 40).astype(np.int16)
    paths = []
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.PatientName, ds.PatientID = "BENCH^RECEIVE", "BENCH0001"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-250.0, -250.0, float(i)]
        ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 1.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            16,
            15,
            1,
        )
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        path = out_dir / f"IM{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- receivers ------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """One receiver process on a free loopback port, storing under ``workdir``."""

    name: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def command(self, parallel: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dcmtk_env()

    def cwd(self) -> Path:
        return PROJECT_ROOT

    def prepare(self) -> None:
        """Write config files etc. into ``workdir`` before the process starts."""

    def stored(self) -> int:
        raise NotImplementedError

    def start(self, parallel: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.prepare()
        self.log = self.workdir / "receiver.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(parallel),
                cwd=self.cwd(),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited: {self.log.read_text()[-2000:]}"
                )
            echo = subprocess.run(
                [ECHOSCU, "-aec", CALLED_AE, "127.0.0.1", str(self.port)],
                capture_output=True,
                env=dcmtk_env(),
                check=False,
            )
            if echo.returncode == 0:
                self.wait_idle()
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S} s")

    def wait_idle(self) -> None:
        """Wait until the receiver's processes (all of them: cpu_seconds) use no CPU."""
        assert self.proc is not None
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        last, quiet = cpu_seconds(self.proc.pid), 0
        while quiet < 2:
            if time.monotonic() > deadline:
                print(f"  note: {self.name} still busy {IDLE_TIMEOUT_S:g} s after answering; measuring anyway",
                      flush=True)
                return
            time.sleep(IDLE_SAMPLE_S)
            now = cpu_seconds(self.proc.pid)
            quiet = quiet + 1 if now - last <= IDLE_CPU_S else 0
            last = now

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _count_files(root: Path, suffix: str = "") -> int:
    return sum(
        1
        for p in root.rglob(f"*{suffix}")
        if p.is_file() and not p.name.startswith(".")
    )


@dataclass
class Dcmtk(Receiver):
    def command(self, parallel: int) -> list[str]:
        out = self.workdir / "out"
        out.mkdir(exist_ok=True)
        fork = ["--fork"] if parallel > 1 else []
        return [STORESCP, *fork, "-aet", CALLED_AE, "-od", str(out), str(self.port)]

    def stored(self) -> int:
        return _count_files(self.workdir / "out")


@dataclass
class Orthanc(Receiver):
    def prepare(self) -> None:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": CALLED_AE,
            "DicomPort": self.port,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "Plugins": [],
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(config))

    def command(self, parallel: int) -> list[str]:
        return [ORTHANC, str(self.workdir / "orthanc.json")]

    def stored(self) -> int:
        return _count_files(self.workdir / "storage")


@dataclass
class MinimalPynetdicom(Receiver):
    mode: str = "raw"

    def command(self, parallel: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.minimal_scp",
            str(self.port),
            str(self.workdir / "out"),
            "--mode",
            self.mode,
        ]

    def stored(self) -> int:
        return _count_files(self.workdir / "out", ".dcm") if self.mode != "none" else -1


@dataclass
class NodeServe(Receiver):
    """``mmed-node serve`` from ``source`` (the working tree, or a ``git archive`` of a ref)."""

    source: Path = PROJECT_ROOT
    extra_node: dict[str, object] = field(default_factory=dict)
    #: ``node.receivers``.
    receivers: int = 1

    def prepare(self) -> None:
        config = {
            "node": {
                "ae_title": CALLED_AE,
                "port": self.port,
                "data_dir": str(self.workdir / "var"),
                # No series completes during the measurement: no job competes for the CPU.
                "series_quiet_seconds": 3600,
                "receivers": self.receivers,
                **self.extra_node,
            },
            "routes": [
                {
                    "name": "bench-nothing",
                    "match": {"Modality": "NONE"},
                    "instruction": "Nothing.",
                    "send_to": [],
                }
            ],
        }
        (self.workdir / "node.yaml").write_text(json.dumps(config))  # JSON is YAML

    def cwd(self) -> Path:
        return self.source

    def env(self) -> dict[str, str]:
        # The source tree first on sys.path, ahead of the editable install's finder; the
        # project root after it for bench.bench_receive:no_job_runner.
        return {**dcmtk_env(), "PYTHONPATH": f"{self.source}{os.pathsep}{PROJECT_ROOT}"}

    def command(self, parallel: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dicom_node.app.cli",
            "serve",
            "--config",
            str(self.workdir / "node.yaml"),
            # Not the pipeline: its runner imports the model libraries on a background thread
            # at start, which would compete with the receive path for the CPU.
            "--runner",
            "bench.bench_receive:no_job_runner",
        ]

    def stored(self) -> int:
        return _count_files(self.workdir / "var" / "spool", ".dcm")


#: Top-level packages ``mmed-node serve`` imports (copied for a ``--node-ref`` baseline).
PACKAGES = ("agent", "config", "dicom_node", "sr_templates", "tools")
#: The receive path a ``--node-ref`` run takes from the ref: the whole package (gate, reactor,
#: direct store, guard, spool, handlers, scp...).
RECEIVE_PACKAGE = "dicom_node/receive"


def no_job_runner(spec: Any) -> dict[str, Any]:
    """The node's job runner during the benchmark: no series completes, so it is never called."""
    raise RuntimeError(f"bench_receive runs no jobs (got {spec!r})")


def export_ref(ref: str, dest: Path) -> Path:
    """A copy of the working tree whose receive-path modules are those at git ``ref``.

    Only the modules of :data:`RECEIVE_PACKAGE` come from the ref (``git show``; the repository is
    not touched): the rest of the tree keeps moving under other work, so a whole old tree may not even import.
    """
    for package in PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / package,
            dest / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    overlay = Path(ref)
    if overlay.is_dir():
        # A folder instead of a ref: its copies of node modules, at their paths under the project
        # root (dicom_node/receive/spool.py...), for trying out variants, or a ref carried where
        # there is no repository (``git archive REF dicom_node/receive | tar -x -C FOLDER``).
        for module in overlay.glob("dicom_node/**/*.py"):
            target = dest / module.relative_to(overlay)
            if not target.parent.is_dir():
                raise SystemExit(f"--node-ref {ref}: {module.relative_to(overlay)} has no package in the tree")
            shutil.copyfile(module, target)
        return dest
    listed = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "ls-tree", "-r", "--name-only", ref, RECEIVE_PACKAGE],
        check=True, capture_output=True, text=True,
    )
    for name in listed.stdout.split():
        shown = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "show", f"{ref}:{name}"],
            check=True,
            capture_output=True,
        )
        (dest / name).write_bytes(shown.stdout)
    return dest


# -- sending --------------------------------------------------------------------------------------


def send(port: int, files: Sequence[Path], parallel: int, called_ae: str = CALLED_AE) -> float:
    """Send ``files`` over ``parallel`` storescu processes at once; seconds until all finished."""
    chunks = [list(files[i::parallel]) for i in range(parallel)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aec", called_ae, "127.0.0.1", str(port), *map(str, chunk)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=SEND_TIMEOUT_S)
        if proc.returncode != 0:
            errors.append(err.decode(errors="replace")[-1000:])
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError("storescu failed: " + "\n".join(errors))
    return elapsed


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` alone (the node's own, without its receivers)."""
    return sum(int(v) for v in procfs.stat_fields(pid)[11:13]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, its reaped children and its live descendants (the
    node's receiver processes)."""
    children = procfs.child_map()
    ticks, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            ticks += sum(int(v) for v in procfs.stat_fields(current)[11:15])
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    receiver: str
    parallel: int
    rates: list[float] = field(default_factory=list)
    #: Receiver CPU (user + system) per instance, in ms, per run.
    cpu_ms: list[float] = field(default_factory=list)
    #: Of that, the CPU of the process started (the node's own, without its receivers).
    own_cpu_ms: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return float(np.median(self.rates))

    @property
    def cpu(self) -> float:
        return min(self.cpu_ms)


def measure_once(
    make: Callable[[Path], Receiver],
    files: Sequence[Path],
    parallel: int,
    workdir: Path,
    result: Result,
    warm_up: Sequence[Path] = (),
) -> None:
    """One timed run of ``files`` to a fresh receiver; ``warm_up`` (another series) is sent to it
    first, untimed, over as many associations, and then waited on until it is idle."""
    receiver = make(workdir)
    receiver.start(parallel)
    assert receiver.proc is not None
    try:
        if warm_up:
            send(receiver.port, warm_up, parallel)
            receiver.wait_idle()
        cpu0, own0 = cpu_seconds(receiver.proc.pid), own_cpu_seconds(receiver.proc.pid)
        elapsed = send(receiver.port, files, parallel)
        time.sleep(
            0.2
        )  # let a forking storescp reap its children (their CPU counts then)
        cpu = cpu_seconds(receiver.proc.pid) - cpu0
        own = own_cpu_seconds(receiver.proc.pid) - own0
        stored = receiver.stored()
    finally:
        receiver.stop()
    expected = len(files) + len(warm_up)
    if stored not in (-1, expected):
        raise RuntimeError(f"{receiver.name}: {stored} of {expected} instances stored")
    result.rates.append(len(files) / elapsed)
    result.cpu_ms.append(cpu / len(files) * 1000)
    result.own_cpu_ms.append(own / len(files) * 1000)
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"  {receiver.name:<24} x{parallel}  {result.rates[-1]:7.1f} inst/s"
        f"  {result.cpu_ms[-1]:6.2f} ms CPU/inst ({result.own_cpu_ms[-1]:.2f} in the process started)",
        flush=True,
    )


#: The quiet period of the hand-off measurement (``--handoff``).
HANDOFF_QUIET_SECONDS = 1.0


def measure_handoff(files: Sequence[Path], receivers: int, parallel: int, workdir: Path) -> float:
    """Seconds from the end of a series' quiet period to its hand-off (issue 14: within 1 s).

    The node (quiet period :data:`HANDOFF_QUIET_SECONDS`, its route matching nothing) gets the
    series over ``parallel`` associations; the hand-off is the series' job record appearing
    (here "unrouted": the scheduler's pass, the header read, routing, the record written), timed
    from the last storescu's exit (every association released) plus the quiet period.
    """
    node = NodeServe("node", workdir, receivers=receivers,
                     extra_node={"series_quiet_seconds": HANDOFF_QUIET_SECONDS})
    node.start(parallel)
    try:
        send(node.port, files, parallel)
        released = time.perf_counter()
        jobs = workdir / "var" / "jobs"
        while not (jobs.is_dir() and any(jobs.glob("*.json"))):
            if time.perf_counter() - released > 60:
                raise RuntimeError("no job record within 60 s of the release")
            time.sleep(0.005)
        return time.perf_counter() - released - HANDOFF_QUIET_SECONDS
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def paired_ratios(result: Result, reference: Result) -> list[float]:
    """``result``'s rate over ``reference``'s in each repetition (the same turn of receivers)."""
    return [rate / ref for rate, ref in zip(result.rates, reference.rates, strict=True)]


def print_table(results: list[Result], parallels: Sequence[int]) -> None:
    by = {(r.receiver, r.parallel): r for r in results}
    names = list(dict.fromkeys(r.receiver for r in results))
    print()
    print(
        f"| {'receiver':<24} |"
        + "".join(
            f" {p} assoc best | median | vs dcmtk | paired | CPU ms/inst (min) |"
            for p in parallels
        )
    )
    print(
        "|"
        + "-" * 26
        + "|"
        + "--------------|--------|----------|--------|-------------------|" * len(parallels)
    )
    for name in names:
        row = f"| {name:<24} |"
        for p in parallels:
            r = by.get((name, p))
            ref = by.get((DCMTK_NAME, p))
            if r is None:
                row += " - | - | - | - | - |"
                continue
            ratio = f"{r.best / ref.best:.2f}" if ref else "-"
            paired = f"{np.median(paired_ratios(r, ref)):.2f}" if ref else "-"
            row += f" {r.best:12.1f} | {r.median:6.1f} | {ratio:>8} | {paired:>6} | {r.cpu:17.2f} |"
        print(row)


def receiver_counts(node_receivers: Sequence[str]) -> list[int]:
    """``--node-receivers`` as numbers (``auto``: what the node would start here)."""
    auto = receiver_count(NodeConfig(receivers="auto"))
    return [int(n) if n != "auto" else auto for n in node_receivers]


def make_receivers(kind: str, node_receivers: Sequence[str]) -> list[Callable[[Path], Receiver]]:
    """Factories (work folder -> receiver) for one ``--receivers`` choice."""
    if kind == "node":
        counts = receiver_counts(node_receivers)
        return [
            partial(NodeServe, f"node ({n} receiver{'s' if n > 1 else ''})", receivers=n)
            for n in dict.fromkeys(counts)
        ]
    return [make_receiver(kind)]


def make_receiver(kind: str) -> Callable[[Path], Receiver]:
    """A factory (work folder -> receiver) for one ``--receivers`` choice."""
    if kind == "dcmtk":
        return partial(Dcmtk, DCMTK_NAME)
    if kind == "orthanc":
        return partial(Orthanc, "orthanc")
    if kind.startswith("pynetdicom"):
        mode = kind.partition("-")[2] or "raw"
        return partial(MinimalPynetdicom, f"pynetdicom minimal {mode}", mode=mode)
    if kind == "node":
        return partial(NodeServe, "node (working tree)")
    raise ValueError(f"unknown receiver {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="C-STORE receive throughput benchmark")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument(
        "--reps", type=int, default=2, help="runs per cell; the best is reported"
    )
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--receivers",
        nargs="+",
        default=["dcmtk", "orthanc", "pynetdicom", "node"],
        choices=[
            "dcmtk",
            "orthanc",
            "pynetdicom",
            "pynetdicom-fsync",
            "pynetdicom-none",
            "node",
        ],
    )
    parser.add_argument(
        "--node-receivers",
        nargs="+",
        default=["1", "auto"],
        help="node.receivers values to measure the node with (auto: one per core, 2 to 4)",
    )
    parser.add_argument(
        "--node-ref",
        action="append",
        default=[],
        help="also run the node with the receive path (dicom_node/receive/) of this git ref, "
        "or with the modules in this folder (FOLDER/dicom_node/**/*.py) over the working tree's; "
        "with the most --node-receivers measured",
    )
    parser.add_argument(
        "--handoff",
        action="store_true",
        help="also time the hand-off of the series after its quiet period, per node receiver count",
    )
    parser.add_argument(
        "--warm-up",
        action="store_true",
        help="send each fresh receiver another series of the same size first, untimed (a running "
        "node's steady state rather than a just-started one's first series)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    if os.environ.get("MMED_IN_NETNS") != "1":
        print(
            "note: not in a private network namespace (use bench/run.sh)",
            file=sys.stderr,
        )

    with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        files = write_ct_series(tmp / "series", args.slices, args.size, args.size)
        warm_up = (write_ct_series(tmp / "warm-up", args.slices, args.size, args.size)
                   if args.warm_up else [])
        # On disk before the first run: its write-back would otherwise run during the first
        # runs, where a durable receiver's flushes wait behind it and dcmtk's writes do not.
        os.sync()
        print(
            f"{len(files)} CT slices {args.size}x{args.size} "
            f"({sum(p.stat().st_size for p in files) / 1e6:.0f} MB) written in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        cores = len(os.sched_getaffinity(0))
        print(f"{cores} cores available; node receivers measured: {' '.join(args.node_receivers)} "
              f"(auto: {receiver_count(NodeConfig(receivers='auto'))})")
        makers = [m for kind in args.receivers for m in make_receivers(kind, args.node_receivers)]
        # A ref runs with the most receivers measured (the comparison that matters most).
        ref_receivers = max(receiver_counts(args.node_receivers))
        for ref in args.node_ref:
            makers.append(
                partial(
                    NodeServe,
                    f"node@{ref}" + (f" ({ref_receivers} receivers)" if ref_receivers > 1 else ""),
                    source=export_ref(ref, tmp / f"ref-{len(makers)}"),
                    receivers=ref_receivers,
                )
            )

        # Receivers take turns within each repetition, so load from elsewhere on the machine
        # spreads over all of them instead of skewing one; the order rotates from one
        # repetition to the next, since a run pays for what the one before it left on the file
        # system and in memory (each run's files are deleted after it: the next run's new inodes
        # skip recently deleted ones, and its writes reuse the page cache those files held).
        results: dict[tuple[int, int], Result] = {}
        for parallel in args.parallel:
            for rep in range(args.reps):
                turn = rep % len(makers)
                for index, make in [*enumerate(makers)][turn:] + [*enumerate(makers)][:turn]:
                    result = results.get((parallel, index))
                    workdir = tmp / f"rx-{parallel}-{rep}-{index}"
                    if result is None:
                        result = results[(parallel, index)] = Result(
                            make(workdir).name, parallel
                        )
                    measure_once(make, files, parallel, workdir, result, warm_up)
        print_table(list(results.values()), args.parallel)
        handoffs: dict[str, list[float]] = {}
        if args.handoff and "node" in args.receivers:
            print(f"\nhand-off after a quiet period of {HANDOFF_QUIET_SECONDS:g} s, "
                  f"{max(args.parallel)} associations (s):")
            for make in make_receivers("node", args.node_receivers):
                receivers = make(tmp).receivers  # type: ignore[attr-defined]
                times = [
                    measure_handoff(files, receivers, max(args.parallel), tmp / f"handoff-{receivers}-{rep}")
                    for rep in range(args.reps)
                ]
                handoffs[f"node ({receivers} receivers)"] = times
                print(f"  node.receivers={receivers}: " + ", ".join(f"{t:.2f}" for t in times), flush=True)
        if args.json:
            dcmtk = {r.parallel: r for r in results.values() if r.receiver == DCMTK_NAME}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "cores": cores,
                        "handoff_seconds": handoffs,
                        "slices": args.slices,
                        "warm_up": args.warm_up,
                        "size": args.size,
                        "results": [
                            {
                                "receiver": r.receiver,
                                "parallel": r.parallel,
                                "rates": r.rates,
                                "best": r.best,
                                "median": r.median,
                                "paired_vs_dcmtk": (paired_ratios(r, dcmtk[r.parallel])
                                                    if r.parallel in dcmtk else None),
                                "cpu_ms_per_instance": r.cpu_ms,
                                "own_cpu_ms_per_instance": r.own_cpu_ms,
                            }
                            for r in results.values()
                        ],
                    },
                    indent=2,
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
