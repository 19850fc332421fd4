"""What retention may remove, and why the rest stays (pure, read only).

A **unit** is one series and everything that came of it: its spool folder, its job records (every
instance set), their result folders and their outbox records. :func:`survey` finds every unit of
a data_dir with its size, last activity and :func:`keep_reason`; :func:`plan_prune` chooses,
among the finished ones, those that go (see :mod:`dicom_node.app.retention` for the rules and how
they go).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from config.schema import RetentionConfig
from dicom_node.deliver.outbox import Delivery, DeliveryState
from dicom_node.disk import DiskSpace
from dicom_node.jobs.store import JobRecord, JobState, JobStore
from dicom_node.receive.spool import INSTANCE_SUFFIX
from image_model.fingerprint import instance_set_fingerprint

#: Above this share of the size quota retention removes finished units, oldest first, until
#: the lower share is used: it starts before the quota is reached, so that what arrives until
#: the next pass still fits.
QUOTA_HIGH_WATER = 0.9
QUOTA_LOW_WATER = 0.8

SeriesKey = tuple[str, str]


@dataclass
class Unit:
    """One series and what came of it."""

    study_uid: str
    series_uid: str
    folder: Path | None = None
    sop_uids: frozenset[str] = frozenset()
    spool_bytes: int = 0
    jobs: list[JobRecord] = field(default_factory=list)
    results: list[Path] = field(default_factory=list)
    result_bytes: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    record_bytes: int = 0
    #: Unix time of the last change to any part of it.
    last_activity: float = 0.0
    #: Why it must stay (None: finished, it may go).
    keep: str | None = None

    @property
    def key(self) -> SeriesKey:
        return (self.study_uid, self.series_uid)

    @property
    def bytes(self) -> int:
        return self.spool_bytes + self.result_bytes + self.record_bytes


@dataclass
class PrunePlan:
    units: list[Unit]
    #: The units to remove, each with why, oldest first.
    remove: list[tuple[Unit, str]]
    #: Bytes of every unit now.
    total_bytes: int
    space: DiskSpace | None = None

    @property
    def freed_bytes(self) -> int:
        return sum(u.bytes for u, _ in self.remove)

    @property
    def pressed(self) -> bool:
        """Removals were for the size quota or free space (not age alone): look again soon."""
        return any(not why.startswith("age") for _, why in self.remove)

    def kept(self) -> dict[str, int]:
        """How many units stay, by kind of reason (unprocessed, receiving, undelivered...)."""
        kept: dict[str, int] = {}
        for unit in self.units:
            if unit.keep is not None:
                kind = unit.keep.split(":", 1)[0]
                kept[kind] = kept.get(kind, 0) + 1
        return kept

    def summary(self) -> dict[str, object]:
        return {
            "units": len(self.units),
            "bytes": self.total_bytes,
            "remove": [{"study_uid": u.study_uid, "series_uid": u.series_uid, "bytes": u.bytes,
                        "why": why, "jobs": [j.job_id for j in u.jobs]} for u, why in self.remove],
            "freed_bytes": self.freed_bytes,
            "kept": self.kept(),
        }


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries by name; none when it went away meanwhile (a store or a pass races)."""
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _scan_spool(root: Path) -> Iterable[tuple[str, str, Path, frozenset[str], int, float]]:
    """(study, series, folder, SOP UIDs, bytes, newest change) per series folder, the folder's
    own change included (a store links a name into it); read only (a running node's stores may
    be writing)."""
    for study in entries(root):
        if not study.is_dir() or study.name.startswith("."):
            continue
        for series in entries(Path(study.path)):
            if not series.is_dir():
                continue
            try:
                newest = series.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            sops, size = set(), 0
            for entry in entries(Path(series.path)):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                size += st.st_size
                newest = max(newest, st.st_mtime)
                if entry.name.endswith(INSTANCE_SUFFIX) and not entry.name.startswith("."):
                    sops.add(entry.name[: -len(INSTANCE_SUFFIX)])
            yield study.name, series.name, Path(series.path), frozenset(sops), size, newest


def keep_reason(
    unit: Unit,
    now: float,
    min_idle: float,
    receiving: Callable[[SeriesKey], bool],
    in_progress: Callable[[str], bool],
) -> str | None:
    """Why the unit must stay; None when it is finished. The reason starts with its kind."""
    if unit.folder is not None and not unit.sop_uids:
        # Created by a store whose instance is not linked yet (or left empty by a crash).
        return "receiving: a series folder without instances yet"
    if unit.sop_uids:
        fingerprint = instance_set_fingerprint(unit.sop_uids)
        if not any(j.fingerprint == fingerprint for j in unit.jobs):
            return "unprocessed: its current instance set has no job yet"
    if receiving(unit.key):
        return "receiving: the node is still receiving or routing it"
    for job in unit.jobs:
        if not job.state.finished or in_progress(job.job_id):
            return f"job unfinished: {job.job_id} is {job.state.value}"
    by_job: dict[str, list[Delivery]] = {}
    for delivery in unit.deliveries:
        by_job.setdefault(delivery.job_id, []).append(delivery)
    for job in unit.jobs:
        if job.state is not JobState.DONE:
            continue
        sent_to = {d.destination for d in by_job.get(job.job_id, [])}
        for destination in job.destinations:
            if destination not in sent_to:
                return f"undelivered: job {job.job_id} has no delivery to {destination}"
        for delivery in by_job.get(job.job_id, []):
            if delivery.state is not DeliveryState.DONE:
                return (f"undelivered: {delivery.delivery_id} to {delivery.destination} is "
                        f"{delivery.state.value}")
    if now - unit.last_activity < min_idle:
        return f"recent: changed in the last {min_idle:g} s"
    return None


def survey(
    data_dir: Path,
    store: JobStore,
    deliveries: list[Delivery],
    now: float,
    min_idle: float,
    receiving: Callable[[SeriesKey], bool] = lambda key: False,
    in_progress: Callable[[str], bool] = lambda job_id: False,
) -> list[Unit]:
    """Every unit of the data_dir, with its size, last activity and keep reason."""
    units: dict[SeriesKey, Unit] = {}

    def unit(study: str, series: str) -> Unit:
        return units.setdefault((study, series), Unit(study, series))

    for study, series, folder, sops, size, newest in _scan_spool(data_dir / "spool"):
        u = unit(study, series)
        u.folder, u.sop_uids, u.spool_bytes = folder, sops, size
        u.last_activity = max(u.last_activity, newest)
    by_job: dict[str, Unit] = {}
    for record in store.all():
        u = unit(record.study_uid, record.series_uid)
        u.jobs.append(record)
        by_job[record.job_id] = u
        u.last_activity = max(u.last_activity, record.updated)
        try:
            u.record_bytes += store.path(record.job_id).stat().st_size
        except (FileNotFoundError, ValueError):
            pass
        result_dir = record.spec.result_dir if record.spec else record.result_dir
        if result_dir and Path(result_dir).is_dir():
            u.results.append(Path(result_dir))
            u.result_bytes += tree_bytes(Path(result_dir))
    outbox = data_dir / "outbox"
    for delivery in deliveries:
        u2 = by_job.get(delivery.job_id)
        if u2 is None:
            continue  # a delivery without a job record: not ours to judge
        u2.deliveries.append(delivery)
        u2.last_activity = max(u2.last_activity, delivery.updated_at.timestamp())
        try:
            u2.record_bytes += (outbox / f"{delivery.delivery_id}.json").stat().st_size
        except FileNotFoundError:
            pass
    for u in units.values():
        u.keep = keep_reason(u, now, min_idle, receiving, in_progress)
    return sorted(units.values(), key=lambda u: u.last_activity)


def plan_prune(
    units: list[Unit], config: RetentionConfig, now: float,
    space: DiskSpace | None = None, resume_free: int | None = None,
) -> PrunePlan:
    """Which finished units go, and why (see the module docstring)."""
    removable = sorted((u for u in units if u.keep is None), key=lambda u: u.last_activity)
    chosen: dict[SeriesKey, str] = {}
    if config.max_age_days is not None:
        limit = config.max_age_days * 86400
        for u in removable:
            if now - u.last_activity > limit:
                chosen[u.key] = f"age: idle {(now - u.last_activity) / 86400:.1f} days"
    total = sum(u.bytes for u in units)
    remaining = total - sum(u.bytes for u in removable if u.key in chosen)
    if config.max_size is not None and remaining > QUOTA_HIGH_WATER * config.max_size:
        target = QUOTA_LOW_WATER * config.max_size
        for u in removable:
            if remaining <= target:
                break
            if u.key not in chosen:
                chosen[u.key] = f"size: {remaining >> 20} MiB over the {int(config.max_size) >> 20} MiB quota"
                remaining -= u.bytes
    if space is not None and resume_free is not None and space.free < resume_free:
        freed = total - remaining
        for u in removable:
            if space.free + freed >= resume_free:
                break
            if u.key not in chosen:
                chosen[u.key] = f"free space: {space.free >> 20} MiB free, under {resume_free >> 20} MiB"
                freed += u.bytes
    remove = [(u, chosen[u.key]) for u in removable if u.key in chosen]
    return PrunePlan(units, remove, total, space)
