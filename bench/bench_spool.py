"""Benchmark (not a test): the durable spool's write rate with several writer processes, against
plain direct writes of the same bytes measured in the same run.

``P`` writer processes (``--writers``, default 1 2 4) each store ``--count`` pre-built 512x512 CT
instances (~512 KB) through the node's own :class:`~dicom_node.receive.spool.Spool`: the write,
flush, link and folder sync of every C-STORE, without network, DIMSE or interpreter-lock sharing
(one process each). Each is stored as a C-STORE's data set is (``handlers.spool_parts``: the
node's file meta group, padded so that the file is whole blocks, then the data set). All of them
into one series folder (``shared``, as when one series comes over several associations) or one
each (``own``); ``truncated``: into one folder with the meta group unpadded, so that the last block
is padded and the file truncated back (what a file of any other length costs). The reference, run
in turn with the same processes:
each writes the same bytes, padded to 4 KB (the spool's ``ALIGNMENT``), into one file of its own
with ``O_DIRECT`` and no sync, i.e. what the device's write bandwidth allows. The ratio is the
share of the device's rate the durable path keeps; its change with ``P`` says whether writers scale
or wait on one another. A receiver on four associations can store no faster than the spool does
here.

    python -m bench.bench_spool [--writers 1 2 4] [--count 150] [--rounds 2] [--json F]

Every round writes fresh files and deletes them after; ``os.sync()`` runs before each measurement
so that one measurement's write-back does not land in the next.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from pydicom.uid import generate_uid

from bench.bench_receive import Result, write_ct_series
from dicom_node.receive.direct_io import ALIGNMENT, O_DIRECT, whole_blocks
from dicom_node.receive.handlers import StoreRequest, spool_parts
from dicom_node.receive.spool import InstanceInfo, Spool, parse_instance
from image_model.parse_policy import part10_meta

KINDS = ("spool shared", "spool own", "spool truncated", "direct writes")
SPOOL_KINDS = KINDS[:-1]


def instances(out: Path, count: int, study: str, series: str) -> list[bytes]:
    """``count`` Part 10 CT instances of ``study``/``series`` (new SOP Instance UIDs)."""
    data = [path.read_bytes() for path in write_ct_series(out, count, 512, 512, study, series)]
    shutil.rmtree(out)
    return data


def store_all(root: str, data: list[bytes], padded: bool, barrier: Barrier, results: Queue) -> None:
    """A writer process: every instance through a spool under ``root``, as its C-STORE would be
    (``padded``: with the meta group padded to whole blocks)."""
    spool = Spool(Path(root))
    parsed = [parse_instance(item) for item in data]
    stores = [(spool_parts(_request(item, info), padded), info) for item, info in zip(data, parsed)]
    barrier.wait()
    start = _clocks()
    for parts, info in stores:
        spool.store(parts, info)
    results.put(_since(start))


def _request(part10: bytes, info: InstanceInfo) -> StoreRequest:
    """The C-STORE request that carries the data set of ``part10``."""
    _, offset = part10_meta(memoryview(part10))
    dataset = part10[offset:]
    return StoreRequest(dataset=dataset, transfer_syntax=info.transfer_syntax_uid, sop_class_uid=info.sop_class_uid,
                        sop_instance_uid=info.sop_uid, calling_ae="BENCH", called_ae="MMEDNODE",
                        association="bench", address="127.0.0.1")


def _clocks() -> tuple[float, float, float]:
    """Wall time, this process's CPU and its system CPU (``getrusage``: finer than the clock
    ticks of ``os.times``)."""
    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _since(start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Wall, CPU and system seconds since ``start`` (:func:`_clocks`): what a writer reports."""
    wall, cpu, system = start
    now_wall, now_cpu, now_system = _clocks()
    return now_wall - wall, now_cpu - cpu, now_system - system


def write_direct_all(path: str, data: list[bytes], barrier: Barrier, results: Queue) -> None:
    """A writer process: the same bytes, each padded to whole blocks, into one ``O_DIRECT`` file."""
    assert O_DIRECT is not None
    size = max(whole_blocks(len(item)) for item in data)
    buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o600)
    barrier.wait()
    start = _clocks()
    try:
        for item in data:
            buffer[: len(item)] = item
            os.write(fd, memoryview(buffer)[: whole_blocks(len(item))])
    finally:
        os.close(fd)
    results.put(_since(start))


def measure(kind: str, sets: list[list[bytes]], work: Path, cell: Result) -> None:
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(len(sets)), context.Queue()
    work.mkdir(parents=True)
    os.sync()
    direct = kind == "direct writes"
    procs = [context.Process(target=write_direct_all, args=(str(work / f"stream-{i}"), data, barrier, results))
             if direct else
             context.Process(target=store_all, args=(str(work / "spool"), data, kind != "spool truncated",
                                                     barrier, results))
             for i, data in enumerate(sets)]
    for proc in procs:
        proc.start()
    times = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"{kind}: a writer exited with status {proc.exitcode}")
    total = sum(len(data) for data in sets)
    cell.rates.append(total / max(wall for wall, _, _ in times))
    cell.cpu_ms.append(1000 * sum(cpu for _, cpu, _ in times) / total)
    system_ms = 1000 * sum(system for _, _, system in times) / total
    if not direct:  # the variant is what it says: whole blocks, or not
        whole = [path.stat().st_size % ALIGNMENT == 0 for path in (work / "spool").rglob("*.dcm")]
        if len(whole) != total or all(whole) != (kind != "spool truncated"):
            raise RuntimeError(f"{kind}: stored files missing, or of unexpected lengths")
    shutil.rmtree(work)
    print(f"  {kind:<14} x{len(sets)}  {cell.rates[-1]:7.0f} instances/s  {cell.cpu_ms[-1]:5.2f} ms CPU each"
          f" ({system_ms:.2f} in the kernel)",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="durable spool write rate against direct writes")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--count", type=int, default=150, help="instances per writer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if O_DIRECT is None:
        print("this platform has no O_DIRECT", file=sys.stderr)
        return 2
    cells: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp_name:
        tmp = Path(tmp_name)
        study = generate_uid()
        for writers in args.writers:
            shared = generate_uid()
            shared_sets = [instances(tmp / f"in-{i}", args.count, study, shared) for i in range(writers)]
            own_sets = [instances(tmp / f"in-{i}", args.count, study, generate_uid())
                        for i in range(writers)]
            for round_ in range(args.rounds):
                # Kinds take turns, the order rotating, as drift over the run then spreads.
                order = KINDS[round_ % len(KINDS):] + KINDS[: round_ % len(KINDS)]
                for kind in order:
                    cell = cells.setdefault((kind, writers), Result(kind, writers))
                    sets = own_sets if kind == "spool own" else shared_sets
                    measure(kind, sets, tmp / f"run-{writers}-{round_}-{kind.replace(' ', '-')}", cell)
    print("\n| writers | " + " | ".join(f"{kind} (best, instances/s)" for kind in KINDS)
          + " | " + " | ".join(f"{kind} / direct" for kind in SPOOL_KINDS) + " |")
    print("|---|" + "---|" * (len(KINDS) + len(SPOOL_KINDS)))
    for writers in args.writers:
        best = {kind: cells[(kind, writers)].best for kind in KINDS}
        print(f"| {writers} | " + " | ".join(f"{best[kind]:.0f}" for kind in KINDS)
              + " | " + " | ".join(f"{best[kind] / best['direct writes']:.2f}" for kind in SPOOL_KINDS) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([
            {"kind": c.receiver, "writers": c.parallel, "rates": c.rates, "best": c.best,
             "median": c.median, "cpu_ms_per_instance": c.cpu_ms}
            for c in cells.values()
        ], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
