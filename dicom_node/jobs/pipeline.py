"""The job: one routed series in, result files out. The same function runs in the embedded pool
and in Celery workers, so it takes only a :class:`~dicom_node.jobs.spec.JobSpec` plus the
per-process :class:`WorkerContext` that keeps models warm across jobs.

Data flow (top to bottom): load series -> agent (planner + tools + aggregator) -> SEG + SR
(the SR naming the SRs it supersedes; secondary-capture overlays too when a destination refuses
SEG) -> files in the job's result folder -> manifest (returned; the worker writes it, the node's
outbox sends the files).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from agent.loop import AgentResult, run_agent
from agent.planners.base import Planner, UnknownPlanner, build_planner
from agent.planners.rules import RulesPlanner
from agent.protocol import to_plain
from config import AppConfig
from dicom_node.atomic import write_dataset_atomic, write_json_atomic
from dicom_node.deliver.seg_refusal import needs_stand_ins
from dicom_node.jobs.manifest import Manifest
from dicom_node.jobs.retry import JobFailed
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.speculation import AheadSlot, Encoded, Prepared, talks_to_endpoints
from dicom_node.jobs.stages import Stage
from dicom_node.jobs.telemetry import collect_run
from dicom_node.limits import parse_limits
from dicom_node.receive.spool import INSTANCE_SUFFIX, QUARANTINE_NOTE
from image_model.loader import LoadError, load_series
from image_model.volume import Volume
from sr_templates.outputs import build_outputs, build_overlays, identity_for
from tools.device import record_model_load
from tools.registry import ToolRegistry

log = logging.getLogger(__name__)

@dataclass
class WorkerContext:
    """Per-process state reused across jobs: the config, the tool registry (models warm) and the
    planners built so far (an MLLM planner loads its checkpoint once)."""

    config: AppConfig
    registry: ToolRegistry
    planners: dict[str, Planner] = field(default_factory=dict)
    #: The speculative run of this process (:func:`run_ahead`), kept for the job to adopt.
    ahead: AheadSlot = field(default_factory=AheadSlot)
    _fallback: Planner | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, config: AppConfig) -> WorkerContext:
        """Raises ValueError naming the tool and key when a configured tool's settings are invalid,
        so a node or worker refuses to start rather than run without the tool."""
        registry = ToolRegistry(config.tools)
        if registry.settings_errors:
            raise ValueError("; ".join(f"tools.{name}: {why}" for name, why in registry.settings_errors.items()))
        return cls(config=config, registry=registry)

    @property
    def sends_requests(self) -> bool:
        """A planner or tool is configured with an endpoint (requests may leave the node)."""
        return talks_to_endpoints(self.config.model_dump())

    def planner(self, name: str) -> Planner:
        """The planner backend ``name``, built on first use; unknown names fail the job."""
        with self._lock:
            if name not in self.planners:
                started = time.perf_counter()
                try:
                    self.planners[name] = build_planner(name, self.config.planner)
                except UnknownPlanner as exc:
                    raise JobFailed(str(exc)) from None
                record_model_load(f"planner {name}", time.perf_counter() - started)
            return self.planners[name]

    def fallback(self) -> Planner:
        """The rules planner the agent falls back to, built once from the configured
        ``planner`` settings (the intent encoder and classifier weights)."""
        with self._lock:
            if self._fallback is None:
                self._fallback = build_planner(RulesPlanner.name, self.config.planner)
            return self._fallback


#: File names in a job's result folder.
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
CONVERSATION_FILE = "conversation.json"
#: Folder (in the result folder) of the secondary-capture overlays that replace the SEG for
#: destinations with ``accepts_seg: false``; files ``0001.dcm``, ``0002.dcm``...
OVERLAY_FOLDER = "overlay"
#: What the predecessor check reads from an earlier SR (enough for a Predecessor Documents item).
_PREDECESSOR_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


def predecessor_reports(spec: JobSpec) -> list[Dataset]:
    """Headers of the earlier SRs named in ``spec.supersedes`` that exist and belong to the same
    study (a Predecessor Documents item must name its study, series and instance)."""
    found: list[Dataset] = []
    for path in spec.supersedes:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_PREDECESSOR_TAGS)
        except (OSError, InvalidDicomError) as exc:
            log.warning("job %s: predecessor report %s not readable (%s); not referenced",
                        spec.job_id, path, exc)
            continue
        if any(keyword not in ds for keyword in _PREDECESSOR_TAGS) or ds.StudyInstanceUID != spec.study_uid:
            log.warning("job %s: %s is not a report of study %s; not referenced",
                        spec.job_id, path, spec.study_uid)
            continue
        found.append(ds)
    return found


def write_overlays(out_dir: Path, overlays: Sequence[Dataset]) -> dict[str, str]:
    """Write the overlays as ``overlay/NNNN.dcm``, removing files a previous run left there that
    this run did not write; returns {absolute path: SOP Instance UID}."""
    folder = out_dir / OVERLAY_FOLDER
    written: dict[str, str] = {}
    for number, ds in enumerate(overlays, start=1):
        path = folder / f"{number:04d}.dcm"
        write_dataset_atomic(path, ds)
        written[str(path)] = str(ds.SOPInstanceUID)
    if folder.is_dir():
        for stale in folder.glob("*.dcm"):
            if str(stale) not in written:
                stale.unlink()
    return written


def output_variant(spec: JobSpec) -> str:
    """What, besides the instance set and pipeline version, sets a job's output UIDs: its route
    and instruction. A re-run of the same job gets the same UIDs (the PACS keeps one copy); two
    routes on one series, or a question about a routed series, get their own."""
    return f"route={spec.route}\ninstruction={spec.instruction}"


def _instance_files(spec: JobSpec) -> Path | list[Path]:
    """The files of the job's instance set (the whole folder when the spec names none). An
    instance quarantined since (spool.py: the parse policy refused it) is left out."""
    folder = Path(spec.series_dir)
    if spec.instance_uids is None:
        return folder
    paths = [folder / f"{uid}{INSTANCE_SUFFIX}" for uid in sorted(set(spec.instance_uids))]
    paths = [p for p in paths if p.is_file() or not p.with_name(p.name + QUARANTINE_NOTE).is_file()]
    missing = sum(1 for path in paths if not path.is_file())
    if missing:
        raise JobFailed(f"{missing} of {len(paths)} instances of the job are missing from {folder}")
    return paths


class _StageClock:
    """Seconds spent in each stage of a run, in order (for the manifest and benchmarks)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 3)
        self._last = now


def run_job(spec: JobSpec, ctx: WorkerContext) -> Manifest:
    """Process one series; return the manifest (the worker writes it beside the results).

    Raises :class:`JobFailed` with a readable reason for input the pipeline cannot handle: a
    series the loader refuses, or one where every tool the planner called refused it (an SR
    saying only "cannot" would reach the radiologist as noise; the failed job says why instead).
    The manifest carries the run's telemetry too: when the tools and the encoding finished,
    each tool call's duration, disclosures to remote endpoints and model loads
    (:mod:`dicom_node.jobs.telemetry`).

    A speculative run of the same spec during the quiet period (:func:`run_ahead`) is adopted:
    the stages it passed are not run again (the manifest's ``ahead`` says how long they took).
    """
    with collect_run() as telemetry:
        prepared = ctx.ahead.take(spec)
        manifest = _run(spec, ctx, prepared)
    if prepared is not None:
        telemetry.disclosures[:0] = prepared.telemetry.disclosures
        telemetry.model_loads[:0] = prepared.telemetry.model_loads
    return manifest.model_copy(update={
        "disclosures": telemetry.disclosures,
        "model_loads": [asdict(load) for load in telemetry.model_loads],
    })


def run_ahead(spec: JobSpec, ctx: WorkerContext, keep_going: Callable[[], bool]) -> None:
    """Run ``spec``'s load, tools and encode now, before its job exists, keeping the outcome in
    ``ctx.ahead`` for the job to adopt (:mod:`dicom_node.jobs.speculation`); nothing is written.
    Stops between stages once ``keep_going`` says so (another job is due: what was done is
    dropped, so that job's memory never comes on top of a volume held for later) or the slot no
    longer wants it. With a planner or tool that sends requests to an endpoint only the load
    runs ahead (no data leaves for a job that may never exist)."""
    ctx.ahead.begin(spec)
    prepared: Prepared | None = None
    try:
        with collect_run() as telemetry:
            clock = _StageClock()
            volume = _load(spec, ctx)
            clock.lap("load")
            prepared = Prepared(spec, volume, timings=clock.laps, telemetry=telemetry)
            if ctx.sends_requests:
                return
            if not (keep_going() and ctx.ahead.wanted(spec)):
                prepared = None
                return
            result = prepared.result = _tools(spec, ctx, volume)
            clock.lap("tools")
            if not (keep_going() and ctx.ahead.wanted(spec)):
                prepared = None
                return
            prepared.encoded = _encode(spec, ctx, volume, result)
            clock.lap("encode")
    except JobFailed:
        prepared = None  # the job itself will fail the same way, with its reason recorded
    finally:
        if prepared is not None:
            prepared.ended = time.time()
        ctx.ahead.publish(spec, prepared)


def _load(spec: JobSpec, ctx: WorkerContext) -> Volume:
    try:
        return load_series(_instance_files(spec), parse_limits(ctx.config.node))
    except LoadError as exc:
        raise JobFailed(f"cannot load series: {exc}") from None


def _tools(spec: JobSpec, ctx: WorkerContext, volume: Volume) -> AgentResult:
    config = ctx.config
    planner = ctx.planner(spec.planner or config.planner.backend)
    result = run_agent(
        spec.instruction,
        volume,
        ctx.registry,
        planner,
        max_rounds=config.planner.max_rounds,
        allowed_tools=spec.tools,
        fallback=ctx.fallback(),
    )
    called = [a for m in result.conversation.messages if m.turn for a in m.turn.actions]
    if called and not result.outputs:
        raise JobFailed("no tool could process this series: " + "; ".join(result.errors))
    if not called and result.unserved:
        # E.g. a CR sent to a CT-lung route: the planner found the ask but no tool for it.
        raise JobFailed(
            f"no available tool can {', '.join(result.unserved)} for this {volume.modality} series "
            f"({'x'.join(str(n) for n in volume.shape)} voxels)"
        )
    return result


def _encode(spec: JobSpec, ctx: WorkerContext, volume: Volume, result: AgentResult) -> Encoded:
    config = ctx.config
    predecessors = predecessor_reports(spec)
    identity = identity_for(volume, config.output, variant=output_variant(spec))
    datasets = build_outputs(
        volume, result.outputs, result.answer, config.output, spec.instruction, result.planner,
        identity=identity, previous_reports=predecessors,
    )
    return Encoded(datasets, predecessors, identity)


def _same_reports(a: Sequence[Dataset], b: Sequence[Dataset]) -> bool:
    return [str(ds.SOPInstanceUID) for ds in a] == [str(ds.SOPInstanceUID) for ds in b]


def _run(spec: JobSpec, ctx: WorkerContext, prepared: Prepared | None) -> Manifest:
    config = ctx.config
    clock = _StageClock()
    if prepared is None:
        volume = _load(spec, ctx)
        clock.lap("load")
    else:
        volume = prepared.volume
    result = prepared.result if prepared is not None else None
    if result is None:
        result = _tools(spec, ctx, volume)
        clock.lap("tools")
    tools_done = time.time()
    encoded = prepared.encoded if prepared is not None else None
    # The predecessors are read again: an earlier job that finished since changes the SR.
    if encoded is None or not _same_reports(encoded.predecessors, predecessor_reports(spec)):
        encoded = _encode(spec, ctx, volume, result)
        clock.lap("encode")
    else:
        clock.lap("adopt")
    datasets, predecessors, identity = encoded.datasets, encoded.predecessors, encoded.identity
    out_dir = Path(spec.result_dir)
    files: list[str] = []
    uids: dict[str, str] = {}
    for ds in datasets:
        name = SEG_FILE if ds.Modality == "SEG" else SR_FILE
        write_dataset_atomic(out_dir / name, ds)
        files.append(str(out_dir / name))
        uids[name] = str(ds.SOPInstanceUID)
    # The SEG's stand-in for destinations that refuse it: {SEG path: overlay paths}.
    fallback_files: dict[str, list[str]] = {}
    overlays: list[Dataset] = []
    # Overlays are written only where a destination refuses SEG: one RGB image per segmented
    # slice costs ~3x a source slice on disk, wasted when every destination takes the SEG.
    if SEG_FILE in uids and needs_stand_ins(config, spec.destinations):
        overlays.extend(build_overlays(volume, result.outputs, config.output, identity))
    written = write_overlays(out_dir, overlays)
    if written:
        fallback_files[str(out_dir / SEG_FILE)] = list(written)
        uids.update({f"{OVERLAY_FOLDER}/{Path(p).name}": uid for p, uid in written.items()})
    write_json_atomic(out_dir / CONVERSATION_FILE, result.conversation.to_llava_json())
    written_at = time.time()
    clock.lap("write")
    manifest = Manifest(
        job_id=spec.job_id,
        study_uid=spec.study_uid,
        series_uid=spec.series_uid,
        route=spec.route,
        instances=len(volume.datasets),
        files=files,
        fallback_files=fallback_files,
        sop_instance_uids=uids,
        supersedes=[
            {"sop_instance_uid": str(ds.SOPInstanceUID), "series_uid": str(ds.SeriesInstanceUID)}
            for ds in predecessors
        ],
        answer=result.answer,
        planner=result.planner,
        fallback_reason=result.fallback_reason,
        errors=result.errors,
        tools=[{"api_name": o.api_name, "summary": to_plain(o.summary)} for o in result.outputs],
        stages={Stage.TOOLS: tools_done, Stage.ENCODED: written_at},
        tool_runs=[asdict(run) for run in result.tool_runs],
        timings=clock.laps,
        ahead=prepared.timings if prepared is not None else {},
        ahead_ended=prepared.ended if prepared is not None else None,
    )
    log.info(
        "job %s: %d output file(s), %d overlay(s), %d predecessor report(s), planner %s%s",
        spec.job_id, len(files), len(written), len(predecessors), result.planner,
        f" (fallback: {result.fallback_reason})" if result.fallback_reason else "",
    )
    return manifest
