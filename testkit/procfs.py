"""A process's figures read from ``/proc`` (proc(5)): the benchmarks and the served test nodes
measure the node's processes from outside. Linux only."""

from __future__ import annotations

import os


def stat_fields(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses): index 0
    is field 3 (state), 1 the parent's pid (field 4), 11-14 utime, stime, cutime, cstime (fields
    14-17, in clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rpartition(")")[2].split()


def child_map() -> dict[int, list[int]]:
    """Every live process's children, by parent pid (one pass over ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(stat_fields(entry)[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):  # a process that ended meanwhile
                continue
    return children


def status_kb(pid: int | str, field: str) -> int:
    """A ``kB`` line of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str) -> None:
    """The peak resident size (``VmHWM``) set to the current one (``clear_refs`` value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
