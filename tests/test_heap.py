"""Freed heap memory goes back to the OS, and a serving process's start-up objects are exempt from
later garbage collections (dicom_node/heap.py), each in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dicom_node.heap import _TRIM, HeapTrimmer

# Threads allocate 50 kB blocks (below glibc's mmap threshold: they come from the arenas) and
# keep one in twenty: the rest is free memory the arenas hold, in RSS, until trimmed.
FRAGMENT = textwrap.dedent("""
    import threading
    from dicom_node.heap import release_free_memory

    def rss_mb():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) // 1024

    kept = []
    def work():
        blocks = [bytearray(50_000) for _ in range(1500)]
        kept.append(blocks[::20])
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    before = rss_mb()
    release_free_memory()
    print(before, rss_mb())
""")


@pytest.mark.skipif(_TRIM is None, reason="the C library has no malloc_trim")
def test_free_arena_memory_is_returned() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True)
    before, after = (int(v) for v in out.stdout.split())
    # ~300 MB allocated, ~15 MB kept: at least 200 MB held only by the allocator before.
    assert before - after > 200, (before, after)


def test_trimmer_runs_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("dicom_node.heap.release_free_memory", lambda: calls.append(1) or True)
    now = [0.0]
    trimmer = HeapTrimmer(interval=1.0, clock=lambda: now[0])
    for t in (0.2, 0.5, 1.1, 1.5, 2.2):
        now[0] = t
        trimmer.tick()
    assert len(calls) == 2


# What a receiver process has imported when it freezes (processes.serve_receiver), then a cycle
# made afterwards: the collector must still free that.
FREEZE = textwrap.dedent("""
    import gc
    import dicom_node.receive.processes
    from dicom_node.heap import freeze_start_up

    tracked = len(gc.get_objects())
    frozen = freeze_start_up()
    left = len(gc.get_objects())

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle
    del cycle
    print(tracked, frozen, left, gc.collect())
""")


def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    out = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True, check=True)
    tracked, frozen, left, collected = (int(v) for v in out.stdout.split())
    # The receive stack's imports alone are tens of thousands of objects a full collection
    # would walk; frozen, the collector's generations are left (nearly) empty.
    assert tracked > 20_000 and frozen >= tracked * 0.9, (tracked, frozen)
    assert left < 100, left
    assert collected >= 1
