"""The outbox: durable deliveries of result files to DICOM destinations.

A job writes its results into its result folder first; :meth:`Outbox.enqueue` then records one
delivery per destination as a JSON file (``<data_dir>/outbox/<delivery_id>.json``, written
atomically), so an operator can see where every result is and nothing is lost on a crash.

One background thread per destination sends that destination's due deliveries (one association
each, through :func:`dicom_node.deliver.sender.send_files`), so a destination that is down or slow never
delays the others. A failed attempt is retried with exponential backoff
(``outbox.retry_initial_seconds`` doubling up to ``retry_max_seconds``); once
``retry_window_seconds`` have passed since the delivery was queued it is marked ``failed``, with
the last error, and stays listed. On restart, ``pending`` deliveries resume and one that was
``sending`` when the process died is sent again: re-sending the same SOP Instance UIDs is
harmless, a PACS stores it as the same instance (one that answers Duplicate SOP Instance
instead counts as delivered, see :func:`dicom_node.deliver.sender.is_stored`).

While delivery records cannot be written (a full disk), nothing is sent that could not be
recorded first: an attempt starts only once its ``sending`` state is on disk, and the final state
of a delivery whose record write failed is kept in memory and written again on the next pass
(never sent twice for it); the repeated error is logged once, then counted.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from config.schema import AppConfig, DestinationConfig
from dicom_node.atomic import write_json_atomic
from dicom_node.deliver.seg_refusal import files_for, is_segmentation
from dicom_node.deliver.sender import SendReport, send_files
from dicom_node.events import Emit, Hop, HopEvent, ignore
from dicom_node.log_repeats import RepeatedLog

log = logging.getLogger(__name__)

#: Longest a destination thread sleeps before looking for due deliveries again.
MAX_IDLE_SECONDS = 1.0
#: How often :meth:`Outbox.wait_settled` looks again.
SETTLE_POLL_SECONDS = 0.2
#: Folder under the node's data_dir holding the delivery records.
OUTBOX_FOLDER = "outbox"

Sender = Callable[[DestinationConfig, list[Path], str], SendReport]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryState(str, Enum):
    """Where a delivery is: pending -> sending -> done, or back to pending, or failed."""

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Delivery:
    """One job's result files on their way to one destination (the record on disk)."""

    delivery_id: str
    job_id: str
    destination: str
    #: Every result file of the job, absolute paths.
    files: list[str]
    created_at: datetime
    updated_at: datetime
    #: The retry window runs from here (queue time, or an operator's retry).
    window_start: datetime
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    #: Files the destination stored.
    sent: list[str] = field(default_factory=list)
    #: Files deliberately not sent to this destination, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)
    #: Skipped files sent in another form: SEG path -> the secondary-capture overlays (also in
    #: ``files``) that replace it for a destination with ``accepts_seg: false``.
    replaced: dict[str, list[str]] = field(default_factory=dict)
    #: Files the destination refused for good (unreadable, SOP class not accepted), with the reason.
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def remaining(self) -> list[str]:
        """Files still to send."""
        done = set(self.sent) | set(self.skipped) | set(self.rejected)
        return [f for f in self.files if f not in done]

    def summary(self) -> str:
        """One line for ``mmed-node status``: id, destination, state, counts, last error."""
        parts = [
            self.delivery_id, self.destination, self.state.value,
            f"{len(self.sent)}/{len(self.files) - len(self.skipped)} sent",
            f"attempts {self.attempts}",
        ]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        for seg, overlays in self.replaced.items():
            parts.append(f"{Path(seg).name} replaced by {len(overlays)} overlay image(s)")
        if self.state is DeliveryState.PENDING and self.next_attempt_at is not None:
            parts.append(f"next {self.next_attempt_at.isoformat(timespec='seconds')}")
        if self.last_error:
            parts.append(f"last error: {self.last_error}")
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, DeliveryState):
                value = value.value
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        values = dict(data)
        for name in ("created_at", "updated_at", "window_start", "next_attempt_at"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        values["state"] = DeliveryState(values["state"])
        return cls(**values)


# --------------------------------------------------------------------------- the one loader/writer


def load_delivery(path: Path) -> Delivery:
    """Read one delivery record; raises ValueError naming the file when it is not one."""
    try:
        return Delivery.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"outbox record {path}: unreadable: {exc}") from exc


def write_delivery(directory: Path, delivery: Delivery) -> None:
    """Write one delivery record atomically (temp + fsync + rename)."""
    write_json_atomic(directory / f"{delivery.delivery_id}.json", delivery.to_dict())


def load_deliveries(directory: Path) -> list[Delivery]:
    """Every readable record in ``directory``, oldest first; unreadable ones are logged."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            out.append(load_delivery(path))
        except ValueError as exc:
            log.error("%s", exc)
    return sorted(out, key=lambda d: (d.created_at, d.delivery_id))


# --------------------------------------------------------------------------- helpers


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "_"


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay after the ``attempts``-th failed attempt: initial, 2x, 4x ... capped at maximum."""
    return float(min(initial * 2 ** max(attempts - 1, 0), maximum))


# --------------------------------------------------------------------------- the outbox


class Outbox:
    """Persistent, per-destination delivery of result files. See the module docstring."""

    def __init__(
        self,
        data_dir: Path | str,
        config: AppConfig,
        sender: Sender = send_files,
        *,
        clock: Clock = utc_now,
        emit: Emit = ignore,
    ) -> None:
        """``emit`` is told each delivery stored (``sent``), each failed attempt (``failed``)
        and each operator's retry or resend (``queued``): the node's audit trail and metrics
        (:mod:`dicom_node.events`)."""
        self.directory = Path(data_dir) / OUTBOX_FOLDER
        self.directory.mkdir(parents=True, exist_ok=True)
        self._config = config
        self._sender = sender
        self._clock = clock
        self._emit = emit
        self._lock = threading.Lock()
        #: Deliveries not yet final, by destination then id (the threads' work list).
        self._active: dict[str, dict[str, Delivery]] = {name: {} for name in config.destinations}
        self._wake = {name: threading.Event() for name in config.destinations}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Deliveries whose final state is not on disk yet (a record write failed), by id.
        self._unsaved: set[str] = set()
        self._write_errors = RepeatedLog(log)

    # ---- queueing

    def enqueue(
        self,
        job_id: str,
        files: Iterable[Path | str],
        destinations: Iterable[str],
        fallbacks: Mapping[str, Sequence[Path | str]] | None = None,
    ) -> list[str]:
        """Record one delivery per destination for these (already written) files; return ids.

        ``fallbacks`` maps a SEG file to the files that replace it for destinations that do not
        accept Segmentation Storage (the job's secondary-capture overlays); a SEG without them
        is just skipped for such a destination. Destinations that take the SEG never get them.
        """
        paths = [str(Path(f).resolve()) for f in files]
        replacements = {
            str(Path(seg).resolve()): [str(Path(f).resolve()) for f in others]
            for seg, others in (fallbacks or {}).items() if others
        }
        names = list(dict.fromkeys(destinations))
        unknown = [n for n in names if n not in self._config.destinations]
        if unknown:
            raise ValueError(f"unknown destination(s): {', '.join(unknown)}")
        seg_files = {p for p in paths if is_segmentation(Path(p))}
        ids = []
        for name in names:
            existing = self._existing(job_id, name)
            if existing is not None:  # a job that ran twice (at-least-once queues) sends once
                log.info("outbox: job %s already has delivery %s for %s", job_id, existing, name)
                ids.append(existing)
                continue
            now = self._clock()
            chosen = files_for(self._config, name, paths, seg_files, replacements)
            delivery = Delivery(
                delivery_id=f"{_safe(job_id)}.{_safe(name)}.{secrets.token_hex(4)}",
                job_id=job_id, destination=name, files=chosen.send, created_at=now,
                updated_at=now, window_start=now, next_attempt_at=now, skipped=chosen.skipped,
                replaced=chosen.replaced,
            )
            if not delivery.remaining:
                delivery.state, delivery.next_attempt_at = DeliveryState.DONE, None
            write_delivery(self.directory, delivery)
            log.info("outbox: queued %s (%d file(s), %d skipped) for %s",
                     delivery.delivery_id, len(delivery.remaining), len(chosen.skipped), name)
            if delivery.state is not DeliveryState.DONE:
                self._activate(delivery)
            ids.append(delivery.delivery_id)
        return ids

    def _existing(self, job_id: str, destination: str) -> str | None:
        """The id of this job's delivery to ``destination``, if one was recorded already."""
        for path in self.directory.glob(f"{_safe(job_id)}.{_safe(destination)}.*.json"):
            try:
                delivery = load_delivery(path)
            except ValueError:
                continue
            if delivery.job_id == job_id and delivery.destination == destination:
                return delivery.delivery_id
        return None

    def retry(self, delivery_id: str) -> Delivery:
        """Queue a failed delivery again with a fresh retry window (an operator's action)."""
        return self._again(delivery_id, (DeliveryState.FAILED,), resend=False)

    def resend(self, delivery_id: str) -> Delivery:
        """Send every file of a finished (done or failed) delivery again, with a fresh retry
        window (an operator's action: a PACS that lost what it stored). The same SOP Instance
        UIDs go again, so the PACS keeps one copy."""
        return self._again(delivery_id, (DeliveryState.DONE, DeliveryState.FAILED), resend=True)

    def _again(self, delivery_id: str, allowed: tuple[DeliveryState, ...], resend: bool) -> Delivery:
        delivery = load_delivery(self.directory / f"{_safe(delivery_id)}.json")
        if delivery.state not in allowed:
            raise ValueError(f"delivery {delivery_id} is {delivery.state.value}, not "
                             f"{' or '.join(state.value for state in allowed)}")
        if delivery.destination not in self._config.destinations:
            raise ValueError(f"destination {delivery.destination} is no longer configured")
        now = self._clock()
        delivery.state, delivery.rejected = DeliveryState.PENDING, {}
        if resend:
            delivery.sent, delivery.attempts, delivery.last_error = [], 0, None
        delivery.window_start = delivery.updated_at = delivery.next_attempt_at = now
        write_delivery(self.directory, delivery)
        self._activate(delivery)
        self._tell(Hop.QUEUED, delivery, final=False, operator=True, resend=resend)
        return delivery

    def remove(self, delivery_ids: Iterable[str]) -> list[str]:
        """Delete the records of final (done or failed) deliveries (retention); returns the ids
        removed. One still pending or being sent is kept."""
        removed = []
        for delivery_id in delivery_ids:
            path = self.directory / f"{_safe(delivery_id)}.json"
            with self._lock:
                active = any(delivery_id in by_id for by_id in self._active.values())
            if active:
                continue
            try:
                state = load_delivery(path).state
            except ValueError:
                continue
            if state in (DeliveryState.DONE, DeliveryState.FAILED):
                path.unlink(missing_ok=True)
                removed.append(delivery_id)
        return removed

    def list(self) -> list[Delivery]:
        """Every delivery on disk, oldest first (what ``mmed-node status`` shows)."""
        return load_deliveries(self.directory)

    def get(self, delivery_id: str) -> Delivery:
        return load_delivery(self.directory / f"{_safe(delivery_id)}.json")

    def wait_settled(self, job_ids: Iterable[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no delivery of these jobs is pending or being
        sent (the threads must be running); False if some still are."""
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = any(d.job_id in wanted for active in self._active.values()
                           for d in active.values())
            if not busy:
                return True
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(SETTLE_POLL_SECONDS)

    def depth(self) -> dict[str, int]:
        """Deliveries not final (pending or being sent), per configured destination."""
        with self._lock:
            return {name: len(active) for name, active in self._active.items()}

    def _activate(self, delivery: Delivery) -> None:
        with self._lock:
            self._active[delivery.destination][delivery.delivery_id] = delivery
        self._wake[delivery.destination].set()

    # ---- the threads

    def start(self) -> None:
        """Resume unfinished deliveries from disk and start one sender thread per destination."""
        if self._threads:
            raise RuntimeError("outbox already started")
        self._stop.clear()
        for delivery in self.list():
            if delivery.state in (DeliveryState.DONE, DeliveryState.FAILED):
                continue
            if delivery.destination not in self._config.destinations:
                self._finish(delivery, DeliveryState.FAILED,
                             f"destination {delivery.destination} is no longer configured")
                continue
            if delivery.state is DeliveryState.SENDING:
                log.info("outbox: %s was being sent when the node stopped; sending again",
                         delivery.delivery_id)
            self._activate(delivery)
        for name in self._config.destinations:
            thread = threading.Thread(target=self._run, args=(name,), name=f"outbox-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads; a send in progress finishes (or times out) first."""
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _run(self, destination: str) -> None:
        wake = self._wake[destination]
        while not self._stop.is_set():
            wake.clear()
            try:
                delay = self.deliver_due(destination)
            except OSError as exc:  # the thread outlives a disk that fails it; logged, counted
                self._write_errors.error(f"outbox thread for {destination} failed a pass", exc)
                delay = None
            wake.wait(min(delay, MAX_IDLE_SECONDS) if delay is not None else MAX_IDLE_SECONDS)

    def deliver_due(self, destination: str) -> float | None:
        """Attempt every due delivery to ``destination`` once; seconds until the next one is due."""
        with self._lock:
            queue = sorted(self._active[destination].values(), key=lambda d: d.created_at)
        for delivery in queue:
            if self._stop.is_set():
                break
            if delivery.delivery_id in self._unsaved:
                self._save_final(delivery)
                continue
            due = delivery.next_attempt_at
            if due is None or due <= self._clock():
                self._attempt(delivery)
        with self._lock:
            waits = [d.next_attempt_at for d in self._active[destination].values() if d.next_attempt_at]
        if not waits:
            return None
        return max((min(waits) - self._clock()).total_seconds(), 0.0)

    # ---- one attempt

    def _attempt(self, delivery: Delivery) -> None:
        dest = self._config.destinations[delivery.destination]
        calling_ae = dest.calling_ae_title or self._config.node.ae_title
        delivery.state = DeliveryState.SENDING
        delivery.attempts += 1
        delivery.updated_at = self._clock()
        try:
            write_delivery(self.directory, delivery)
        except OSError as exc:  # not recorded, not sent: tried again shortly
            self._write_errors.error("outbox records cannot be written; sending waits", exc)
            delivery.state, delivery.attempts = DeliveryState.PENDING, delivery.attempts - 1
            delivery.next_attempt_at = self._clock() + timedelta(
                seconds=self._config.outbox.retry_initial_seconds)
            return
        try:
            report = self._sender(dest, [Path(f) for f in delivery.remaining], calling_ae)
        except Exception as exc:  # the one place a sender bug becomes a recorded, retried error
            log.exception("outbox: sender raised for %s", delivery.delivery_id)
            self._after_failure(delivery, f"sender error: {type(exc).__name__}: {exc}")
            return
        errors = []
        for outcome in report.files:
            key = str(outcome.path)
            if outcome.delivered:
                delivery.sent.append(key)
            elif outcome.permanent:
                delivery.rejected[key] = outcome.error or "refused"
            else:
                errors.append(outcome.error or "not delivered")
        if delivery.remaining:
            self._after_failure(delivery, report.association_error or errors[0])
        elif delivery.rejected:
            refused = "; ".join(f"{Path(p).name}: {why}" for p, why in delivery.rejected.items())
            self._finish(delivery, DeliveryState.FAILED, f"refused by {report.peer}: {refused}")
        else:
            self._finish(delivery, DeliveryState.DONE, None)

    def _save_final(self, delivery: Delivery) -> bool:
        """Write a delivery's final state; while that fails it stays active (and is not sent
        again) and the write is tried on every pass. True once written."""
        try:
            write_delivery(self.directory, delivery)
        except OSError as exc:
            self._write_errors.error("outbox records cannot be written; final states wait", exc)
            self._unsaved.add(delivery.delivery_id)
            return False
        self._unsaved.discard(delivery.delivery_id)
        if not self._unsaved:
            self._write_errors.clear("outbox records can be written again")
        with self._lock:
            self._active.get(delivery.destination, {}).pop(delivery.delivery_id, None)
        return True

    def _after_failure(self, delivery: Delivery, error: str) -> None:
        """Schedule the next attempt, or give up once the retry window has passed."""
        now = self._clock()
        window = timedelta(seconds=self._config.outbox.retry_window_seconds)
        window_end = delivery.window_start + window
        if now >= window_end:
            self._finish(delivery, DeliveryState.FAILED,
                         f"gave up after {delivery.attempts} attempt(s) in "
                         f"{window.total_seconds():g} s; last error: {error}")
            return
        delay = backoff_seconds(delivery.attempts, self._config.outbox.retry_initial_seconds,
                                self._config.outbox.retry_max_seconds)
        delivery.state = DeliveryState.PENDING
        delivery.last_error = error
        delivery.next_attempt_at = min(now + timedelta(seconds=delay), window_end)
        delivery.updated_at = now
        self._tell(Hop.FAILED, delivery, final=False)
        try:
            write_delivery(self.directory, delivery)
        except OSError as exc:  # the record says "sending": a restart sends again, harmlessly
            self._write_errors.error("outbox records cannot be written", exc)
        log.warning("outbox: %s attempt %d failed (%s); next attempt in %.1f s",
                    delivery.delivery_id, delivery.attempts, error,
                    (delivery.next_attempt_at - now).total_seconds())

    def _finish(self, delivery: Delivery, state: DeliveryState, error: str | None) -> None:
        delivery.state = state
        delivery.last_error = error
        delivery.next_attempt_at = None
        delivery.updated_at = self._clock()
        if state is DeliveryState.DONE:
            log.info("outbox: %s delivered (%d file(s))", delivery.delivery_id, len(delivery.sent))
        else:
            log.error("outbox: %s failed: %s", delivery.delivery_id, error)
        self._save_final(delivery)
        self._tell(Hop.SENT if state is DeliveryState.DONE else Hop.FAILED, delivery, final=True)

    def _tell(self, hop: Hop, delivery: Delivery, final: bool, **extra: bool) -> None:
        """Tell the observer (ids, counts and times only: errors may quote a peer's words)."""
        detail = {
            "delivery_id": delivery.delivery_id, "destination": delivery.destination,
            "files": len(delivery.sent), "attempts": delivery.attempts, "final": final,
            "seconds": round((delivery.updated_at - delivery.created_at).total_seconds(), 3),
            **extra,
        }
        try:
            self._emit(HopEvent(hop, job_id=delivery.job_id, at=delivery.updated_at.timestamp(),
                                detail=detail))
        except Exception:  # an observer's bug must not stop deliveries
            log.exception("outbox: observer failed on %s of %s", hop.value, delivery.delivery_id)
