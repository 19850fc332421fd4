"""Retention: the data_dir's disk lifecycle (what may go is chosen in
:mod:`dicom_node.app.retention_plan`, how it goes is here). It runs inside the node every
``retention.interval_seconds`` (and every half minute while the disk is low); ``mmed-node prune``
shows a pass (``--dry-run``) or runs one while no node is serving.

A **unit** is one series and everything that came of it: its spool folder, its job records (every
instance set), their result folders and their outbox records. A unit is removed whole, and only
once it is finished (:func:`~dicom_node.app.retention_plan.keep_reason` is None):

* its spool holds no instance set that was not processed yet, and the node is not receiving it;
* every job of it ended (done, failed or unrouted) and none is in progress;
* every result was delivered everywhere it had to go: each destination of each job has a
  delivery, and each delivery is ``done`` (a ``failed`` delivery is kept for an operator's retry);
* nothing of it changed in the last ``retention.min_idle_seconds``.

Which finished units go (:func:`~dicom_node.app.retention_plan.plan_prune`, a pure function): those idle for longer than
``retention.max_age_days``; then, above 90 % of ``retention.max_size``, the oldest until 80 % of
the quota is used (retention starts before the quota is reached, and runs again at once while
it is under pressure); then, while the file system is under the low-space watermark
(:mod:`dicom_node.disk`), the oldest until free space is back above the resume mark.

Removal order: the results first (which frees space even on a full disk), then the spool folder
through the trash: the pass lists its units and the instances it removes
(``<data_dir>/trash/pass-*/units.json``), renames each series folder into the pass's folder (a
C-STORE arriving from then on creates the series folder afresh), and after
:data:`TRASH_GRACE_SECONDS` (stores that were writing into a moved folder finish) moves back
every instance the pass did not list, so an acknowledged instance is never lost. Then the outbox
and job records: a crash midway leaves a unit whose records say it was processed, which the next
pass removes, never a series that would be processed again. A trash folder left by a crash is
settled the same way at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from config.schema import AppConfig
from dicom_node.app.retention_plan import (
    PrunePlan,
    SeriesKey,
    Unit,
    entries,
    plan_prune,
    survey,
)
from dicom_node.atomic import fsync_dir, write_json_atomic
from dicom_node.deliver.outbox import Outbox
from dicom_node.disk import DiskGuard
from dicom_node.jobs.store import JobStore
from dicom_node.log_repeats import RepeatedLog
from dicom_node.receive.assembly import SeriesTracker
from dicom_node.receive.spool import INSTANCE_SUFFIX, ORIGIN_FILE, TEMP_PREFIX

log = logging.getLogger(__name__)

TRASH_FOLDER = "trash"
#: How long a spool folder rests in the trash before its late arrivals are moved back.
TRASH_GRACE_SECONDS = 2.0
#: While the disk is low, retention runs at least this often.
LOW_DISK_INTERVAL_SECONDS = 30.0
#: In a pass's trash folder (which holds ``<study>/<series>/`` as the spool does): the series
#: and the instances the pass removes.
UNITS_FILE = "units.json"


# -- the removal ---------------------------------------------------------------------------


def _restore(folder: Path, live: Path, pruned: set[str] | None) -> list[str]:
    """Move every instance of a trashed series folder that is not in ``pruned`` back into the
    spool folder ``live`` (it arrived while the series was being removed: it was acknowledged;
    ``pruned`` None: every instance, when the pass's list is lost); returns their SOP UIDs."""
    restored: list[str] = []
    for entry in entries(folder):
        name = entry.name
        if not name.endswith(INSTANCE_SUFFIX) or name.startswith((TEMP_PREFIX, ".")):
            continue
        sop = name[: -len(INSTANCE_SUFFIX)]
        if pruned is not None and sop in pruned:
            continue
        live.mkdir(parents=True, exist_ok=True)
        if not (live / ORIGIN_FILE).exists() and (folder / ORIGIN_FILE).exists():
            shutil.copy2(folder / ORIGIN_FILE, live / ORIGIN_FILE)
        if not (live / name).exists():
            os.rename(entry.path, live / name)
        restored.append(sop)
    if restored:
        fsync_dir(live)
        fsync_dir(live.parent)
        log.warning("retention: %d instance(s) of series %s arrived while it was removed; kept",
                    len(restored), live.name)
    return restored


def settle_pass(pass_dir: Path, spool_root: Path) -> dict[SeriesKey, list[str]]:
    """Settle one pass's trash folder: instances its units did not hold when they were chosen go
    back into the spool, the rest is deleted; returns what was restored, by series."""
    try:
        listed: dict[SeriesKey, set[str]] | None = {
            (u["study_uid"], u["series_uid"]): set(u["sop_uids"])
            for u in json.loads((pass_dir / UNITS_FILE).read_text(encoding="utf-8"))}
    except (OSError, ValueError, KeyError, TypeError):
        listed = None  # the list could not be written (a full disk): keep every instance
    restored: dict[SeriesKey, list[str]] = {}
    for study in entries(pass_dir):
        if not study.is_dir():
            continue
        for series in entries(Path(study.path)):
            key = (study.name, series.name)
            if listed is not None and key not in listed:
                continue
            pruned = listed[key] if listed is not None else None
            back = _restore(Path(series.path), spool_root / study.name / series.name, pruned)
            if back:
                restored[key] = back
    if listed is None and restored:
        log.warning("retention: trash folder %s had no list of what it removes; its instances "
                    "went back into the spool", pass_dir)
    shutil.rmtree(pass_dir, ignore_errors=True)
    return restored


def settle_trash(data_dir: Path) -> None:
    """Settle what a pass interrupted by a crash left in the trash (at start)."""
    for pass_dir in entries(data_dir / TRASH_FOLDER):
        try:
            settle_pass(Path(pass_dir.path), data_dir / "spool")
        except (OSError, ValueError, KeyError) as exc:
            log.error("retention: trash folder %s not settled: %s", pass_dir.path, exc)


class Retention:
    """Plans and runs passes over one data_dir. Inside the node it is given the node's tracker
    (what is being received), the job service's view (what is in progress, and its removal of
    records) and the node's outbox; ``mmed-node prune`` gives the same over the files, holding
    the data_dir lock."""

    def __init__(
        self,
        config: AppConfig,
        store: JobStore,
        outbox: Outbox,
        guard: DiskGuard,
        *,
        tracker: SeriesTracker | None = None,
        in_progress: Callable[[str], bool] = lambda job_id: False,
        forget_jobs: Callable[[list[str]], list[str]] | None = None,
        grace_seconds: float = TRASH_GRACE_SECONDS,
    ) -> None:
        self.config = config
        self.data_dir = Path(config.node.data_dir).resolve()
        self.store = store
        self.outbox = outbox
        self.guard = guard
        self._tracker = tracker
        self._in_progress = in_progress
        self._forget_jobs = forget_jobs or (lambda ids: self.store.remove_finished(ids))
        self._grace = grace_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RepeatedLog(log)
        #: One pass at a time (the node's thread, or an explicit run).
        self._pass = threading.Lock()

    # -- planning

    def _receiving(self) -> Callable[[SeriesKey], bool]:
        if self._tracker is None:
            return lambda key: False
        quiet = self._tracker.quiet_seconds
        busy = {
            (s.study_uid, s.series_uid)
            for s in self._tracker.snapshot()
            if s.open_associations or s.fingerprint != s.processed_fingerprint
            or time.monotonic() - s.last_arrival < quiet
        }
        return lambda key: key in busy

    def plan(self) -> PrunePlan:
        now = time.time()
        units = survey(self.data_dir, self.store, self.outbox.list(), now,
                       self.config.retention.min_idle_seconds, self._receiving(), self._in_progress)
        space = self.guard.space()
        resume = self.guard.resume_mark(space.total) if space is not None else None
        return plan_prune(units, self.config.retention, now, space, resume)

    # -- one pass

    def run(self, dry_run: bool = False) -> PrunePlan:
        with self._pass:
            return self._run(dry_run)

    def _run(self, dry_run: bool) -> PrunePlan:
        plan = self.plan()
        if not dry_run and plan.remove:
            self.remove([u for u, _ in plan.remove])
            why: dict[str, int] = {}
            for _, reason in plan.remove:
                kind = reason.split(":", 1)[0]
                why[kind] = why.get(kind, 0) + 1
            log.info("retention: removed %d finished series (%d MiB; %s); %d MiB in the data_dir "
                     "before", len(plan.remove), plan.freed_bytes >> 20,
                     ", ".join(f"{n} by {k}" for k, n in sorted(why.items())),
                     plan.total_bytes >> 20)
        return plan

    def remove(self, units: list[Unit]) -> None:
        """Remove the units: results first (that frees space even on a full disk), the spool
        folders through one trash folder for the pass, then outbox and job records."""
        results_root = (self.data_dir / "results").resolve()
        for u in units:
            for result in u.results:
                if result.resolve().parent == results_root:
                    shutil.rmtree(result, ignore_errors=True)
        with_spool = [u for u in units if u.folder is not None]
        if with_spool:
            self._remove_spool(with_spool)
        for u in units:
            self.outbox.remove([d.delivery_id for d in u.deliveries])
            self._forget_jobs([j.job_id for j in u.jobs])

    def _remove_spool(self, units: list[Unit]) -> None:
        spool_root = self.data_dir / "spool"
        pass_dir = self.data_dir / TRASH_FOLDER / f"pass-{int(time.time())}-{secrets.token_hex(4)}"
        pass_dir.mkdir(parents=True)
        listed = [{"study_uid": u.study_uid, "series_uid": u.series_uid,
                   "sop_uids": sorted(u.sop_uids)} for u in units]
        try:
            write_json_atomic(pass_dir / UNITS_FILE, listed)
        except OSError as exc:  # a full disk: the pass goes on, a crash now would keep all
            self._errors.error("retention: the pass's list cannot be written", exc)
        moved = []
        for u in units:
            assert u.folder is not None
            try:
                (pass_dir / u.study_uid).mkdir(exist_ok=True)
                os.rename(u.folder, pass_dir / u.study_uid / u.series_uid)
            except FileNotFoundError:
                continue
            moved.append(u)
        if moved:
            self._stop.wait(self._grace)  # stores writing into the moved folders finish
        settle_pass(pass_dir, spool_root)
        for u in moved:
            if self._tracker is not None:
                self._tracker.forget(u.study_uid, u.series_uid, u.sop_uids)
            try:
                (spool_root / u.study_uid).rmdir()  # only if empty
            except OSError:
                pass

    # -- inside the node

    def start(self) -> None:
        """Run passes in a thread (the node settles the trash before it recovers)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mmed-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        interval = self.config.retention.interval_seconds
        last, pressed = -float("inf"), False
        while not self._stop.wait(1.0):
            due = interval if not self.guard.low() else min(interval, LOW_DISK_INTERVAL_SECONDS)
            if time.monotonic() - last < due and not pressed:
                continue
            last = time.monotonic()
            try:
                pressed = self.run().pressed
            except OSError as exc:  # the next pass tries again; logged once, then counted
                self._errors.error("retention pass failed", exc)
            else:
                self._errors.clear("retention passes succeed again")
