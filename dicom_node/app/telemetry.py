"""The node's observer: every event of its parts (:mod:`dicom_node.events`) goes to the audit
trail and the metrics, here, in one place.

    receive handlers (instance stored) --+
    node (series received, routed)       |
    pynetdicom (association outcomes)    +--> Telemetry.emit --> AuditTrail.write (hops)
    JobService (queued ... encoded)      |                   --> NodeMetrics.observe
    Outbox (sent, failed attempts)     --+                   --> the job's stages (``sent``)

A delivery's hop names its job only: the study and series are added here from the job record,
so every audit line of a study names it. A job's ``encoded`` hop names its manifest: the run's
tool calls and disclosures (de-identified requests to remote endpoints) are read from it here
and written before it, in the order they happened (:func:`run_hops`). An observer that fails is logged and never stops the
work it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event as DimseEvent

from dicom_node.app.audit import AuditTrail
from dicom_node.app.metrics import NodeMetrics
from dicom_node.events import AssociationEvent, AssociationOutcome, Emit, Event, Hop, HopEvent
from dicom_node.jobs.manifest import load_manifest
from dicom_node.jobs.stages import Stage
from dicom_node.jobs.store import JobRecord, JobStore

log = logging.getLogger(__name__)

#: The stages whose duration is known once a hop happened.
STAGES_AT: dict[Hop, tuple[Stage, ...]] = {
    Hop.QUEUED: (Stage.COMPLETE, Stage.QUEUED),
    Hop.STARTED: (Stage.STARTED,),
    Hop.ENCODED: (Stage.TOOLS, Stage.ENCODED),
    Hop.SENT: (Stage.SENT,),
}


class Telemetry:
    def __init__(
        self,
        metrics: NodeMetrics,
        audit: AuditTrail | None,
        jobs: JobStore,
        record_sent: Callable[[str, float], bool] | None = None,
    ) -> None:
        """``record_sent`` records a job's ``sent`` stage (the job service's); True when it did
        (the first time)."""
        self.metrics = metrics
        self.audit = audit
        self.jobs = jobs
        self._record_sent = record_sent

    def emit(self, event: Event) -> None:
        try:
            if isinstance(event, HopEvent):
                self._hop(event)
            else:
                self.metrics.observe(event)
        except Exception:  # an observer's failure never stops the work it observes
            log.exception("telemetry failed on %s", type(event).__name__)

    def _hop(self, event: HopEvent) -> None:
        if event.hop is Hop.ENCODED and "manifest" in event.detail:
            for hop in run_hops(event):
                self._one(hop)
            return
        self._one(event)

    def _one(self, event: HopEvent) -> None:
        stages = STAGES_AT.get(event.hop)
        # Only the first destination's delivery (not a second one, nor a resend) is the job's
        # ``sent`` stage, and is timed once.
        if (event.hop is Hop.SENT and event.job_id and self._record_sent is not None
                and not self._record_sent(event.job_id, event.at)):
            stages = None
        if event.hop is Hop.QUEUED and event.detail.get("operator"):
            stages = None  # an operator's retry: its wait since completion is no stage
        # The job record, read once and only when needed: for the stages it times, or for the
        # study and series of a hop that names its job only (a delivery).
        record = self._record(event.job_id) if stages or not event.study_uid else None
        if record is not None and not event.study_uid:
            event = replace(event, study_uid=record.study_uid, series_uid=record.series_uid)
        if self.audit is not None:
            try:
                self.audit.write(event)
            except OSError as exc:  # a full disk: the work goes on, the line is lost
                log.warning("audit line not written (%s): %s", event.hop.value, exc)
        self.metrics.observe(event)
        if record is not None and stages:
            self.metrics.observe_stages(record, stages)

    def _record(self, job_id: str | None) -> JobRecord | None:
        if not job_id:
            return None
        try:
            return self.jobs.get(job_id)
        except (OSError, ValueError):
            return None


def run_hops(encoded: HopEvent) -> list[HopEvent]:
    """A done run's hops from its manifest (``encoded.detail["manifest"]``), in the order they
    happened: each tool call and each disclosure (a request de-identified for a remote endpoint,
    ``deidentified: true``), then ``encoded`` with the results' counts and ids. A manifest that
    cannot be read leaves the ``encoded`` hop alone (logged)."""
    path = Path(str(encoded.detail["manifest"]))
    try:
        manifest = load_manifest(path.parent)
    except (OSError, ValueError) as exc:
        log.warning("job %s: manifest not readable for the audit trail: %s", encoded.job_id, exc)
        return [replace(encoded, detail={})]
    ids = (encoded.study_uid, encoded.series_uid, encoded.job_id)
    tools_done = manifest.stages.get(Stage.TOOLS, encoded.at)
    hops = [HopEvent(Hop.TOOL, *ids, run.get("ended") or tools_done,
                     {"tool": run.get("api_name"), "seconds": run.get("seconds"),
                      "refused": run.get("refused", False)}) for run in manifest.tool_runs]
    hops += [HopEvent(Hop.DISCLOSED, *ids, disclosure.get("at") or encoded.at,
                      {"deidentified": True, **{k: v for k, v in disclosure.items() if k != "at"}})
             for disclosure in manifest.disclosures]
    hops.sort(key=lambda hop: hop.at)
    return [*hops, replace(encoded, detail={
        "files": len(manifest.files), "sop_instance_uids": dict(manifest.sop_instance_uids),
        "planner": manifest.planner, "errors": len(manifest.errors),
        "model_loads": list(manifest.model_loads)})]


def association_handlers(emit: Emit) -> list[tuple[Any, Callable[[DimseEvent], None]]]:
    """pynetdicom notification handlers (for the storage SCP) that tell ``emit`` each incoming
    association's outcome: accepted, refused (A-ASSOCIATE-RJ) or aborted."""

    def told(outcome: AssociationOutcome) -> Callable[[DimseEvent], None]:
        return lambda event: emit(AssociationEvent(outcome))

    return [(evt.EVT_ACCEPTED, told(AssociationOutcome.ACCEPTED)),
            (evt.EVT_REJECTED, told(AssociationOutcome.REFUSED)),
            (evt.EVT_ABORTED, told(AssociationOutcome.ABORTED))]
