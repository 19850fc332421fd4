"""Query/Retrieve as a client: find series on a PACS, pull them, process them.

    find_series (C-FIND study, then series level, Study Root)
      -> pull_series: C-MOVE to the node's own AE title (the running node receives and spools
         them; the PACS must know the node) or C-GET straight into the spool (no node needed)
      -> process: like a routed series (same routes, job ids and records as the node), or with
         ``instruction``: one "question" job whose instruction replaces the route's, its answer
         SR sent back to the PACS it came from.

:func:`retrieve_and_process` is the API. Jobs are submitted to a
:class:`~dicom_node.jobs.service.JobService`, the node's own when it runs in the node (the HTTP
API's questions: the node's queue and its outbox, which delivers at once), or one built for the
data_dir by :func:`~dicom_node.jobs.standalone.standalone_jobs` when ``mmed-node retrieve`` runs
without a node (it holds the data_dir's lock meanwhile; with a node serving the data_dir it
refuses, except for a C-MOVE without a question, where the running node routes the series itself
and this module only waits for its job records). Question jobs get output UIDs of their own (the
question is part of the output variant used for UID derivation), so their SEG/SR never collide
with the routed results of the same series.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from config.schema import AppConfig, DestinationConfig
from dicom_node.data_dir import DataDirBusy
from dicom_node.deliver.association import AssociationFailed, open_association
from dicom_node.disk import DiskGuard
from dicom_node.jobs.runner import JobRunner
from dicom_node.jobs.service import JobService
from dicom_node.jobs.spec import JobRequest, SeriesRef
from dicom_node.jobs.standalone import standalone_jobs
from dicom_node.jobs.store import JobRecord, JobState, JobStore
from dicom_node.receive.routing import route_series, series_tags_from_dataset
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from dicom_node.receive.spool import CorruptInstance, Spool, parse_instance
from dicom_node.status import QRStatus, Status
from image_model.fingerprint import instance_set_fingerprint

log = logging.getLogger(__name__)

Method = Literal["move", "get"]
#: Told of instances as they arrive: (instances just arrived, instances expected in all or None).
Progress = Callable[[int, int | None], None]
PENDING = frozenset({QRStatus.PENDING, QRStatus.PENDING_WARNING})
#: Series of these modalities hold no images to analyse (results such as our own SEG/SR already in
#: the study, presentation states, key objects...): not pulled unless --modality asks for them.
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "REG", "DOC", "FID"})


class RetrieveError(RuntimeError):
    """The PACS could not be queried or the series could not be pulled (message says why)."""


@dataclass(frozen=True)
class RetrieveQuery:
    """What to look for; at least one of the three identifiers."""

    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    #: Regular expression searched in Series Description (case-insensitive).
    series_description: str | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if not (self.study_uid or self.accession or self.patient_id):
            raise ValueError("give a study UID, an accession number or a patient ID")


@dataclass(frozen=True)
class RemoteSeries:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    #: Number Of Series Related Instances, when the PACS returns it.
    instances: int | None


@dataclass
class RetrieveResult:
    series: list[RemoteSeries] = field(default_factory=list)
    #: series UID -> instances held in the spool after the pull
    pulled: dict[str, int] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    #: Series found but not processed, and why (non-image series, no route matched).
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.jobs) and all(j.state is JobState.DONE for j in self.jobs)


# ---- the SCU side -------------------------------------------------------------------------


def _associate(config: AppConfig, source: DestinationConfig, ae: AE, **kwargs: Any) -> Association:
    try:
        return open_association(ae, source, **kwargs)
    except AssociationFailed as exc:
        raise RetrieveError(str(exc)) from exc


def _calling_ae(config: AppConfig, source: DestinationConfig) -> str:
    return source.calling_ae_title or config.node.ae_title


def c_find(config: AppConfig, source: DestinationConfig, query: Dataset) -> list[Dataset]:
    """One Study Root C-FIND; the matches (raises :class:`RetrieveError` on a failure status)."""
    ae = AE(ae_title=_calling_ae(config, source))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(config, source, ae)
    matches: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise RetrieveError(f"C-FIND to {source.ae_title}: no response (timeout or abort)")
            code = int(status.Status)
            if code in PENDING and identifier is not None:
                matches.append(identifier)
            elif code != QRStatus.SUCCESS:
                raise RetrieveError(f"C-FIND to {source.ae_title} failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def find_series(config: AppConfig, source: DestinationConfig, query: RetrieveQuery) -> list[RemoteSeries]:
    """C-FIND the studies, then their series; filter by description regex and modality
    (non-image series, see :data:`NON_IMAGE_MODALITIES`, only when ``query.modality`` names them)."""
    study_q = Dataset()
    study_q.QueryRetrieveLevel = "STUDY"
    study_q.StudyInstanceUID = query.study_uid or ""
    study_q.AccessionNumber = query.accession or ""
    study_q.PatientID = query.patient_id or ""
    studies = {str(ds.StudyInstanceUID) for ds in c_find(config, source, study_q) if ds.get("StudyInstanceUID")}
    wanted = re.compile(query.series_description, re.IGNORECASE) if query.series_description else None
    found: list[RemoteSeries] = []
    for study_uid in sorted(studies):
        series_q = Dataset()
        series_q.QueryRetrieveLevel = "SERIES"
        series_q.StudyInstanceUID = study_uid
        series_q.SeriesInstanceUID = ""
        series_q.Modality = query.modality or ""
        series_q.SeriesDescription = ""
        series_q.NumberOfSeriesRelatedInstances = None
        for ds in c_find(config, source, series_q):
            description = str(ds.get("SeriesDescription", "") or "")
            modality = str(ds.get("Modality", "") or "").upper()
            if wanted is not None and not wanted.search(description):
                continue
            if not query.modality and modality in NON_IMAGE_MODALITIES:
                log.info("series %s (%s) skipped: not images", ds.get("SeriesInstanceUID"), modality)
                continue
            count = ds.get("NumberOfSeriesRelatedInstances")
            found.append(RemoteSeries(
                study_uid, str(ds.SeriesInstanceUID), str(ds.get("Modality", "") or ""),
                description, int(count) if count not in (None, "") else None,
            ))
    return found


def _series_identifier(series: RemoteSeries) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    return ds


def _final(responses: Any, what: str) -> Dataset:
    last: Dataset | None = None
    for status, _ in responses:
        if not status:
            raise RetrieveError(f"{what}: no response (timeout or abort)")
        last = status
    if last is None:
        raise RetrieveError(f"{what}: no response")
    code = int(last.Status)
    if code not in (QRStatus.SUCCESS, QRStatus.SUB_OPERATIONS_COMPLETE_WITH_FAILURES):
        name = QRStatus(code).name if code in QRStatus._value2member_map_ else f"0x{code:04X}"
        raise RetrieveError(f"{what} failed with status {name}")
    return last


def c_move(config: AppConfig, source: DestinationConfig, series: RemoteSeries) -> int:
    """Ask the PACS to C-STORE the series to the node's AE title; instances moved."""
    ae = AE(ae_title=_calling_ae(config, source))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(config, source, ae)
    try:
        final = _final(assoc.send_c_move(_series_identifier(series), config.node.ae_title,
                                         StudyRootQueryRetrieveInformationModelMove),
                       f"C-MOVE of series {series.series_uid} to {config.node.ae_title}")
    finally:
        if assoc.is_established:
            assoc.release()
    return int(final.get("NumberOfCompletedSuboperations", 0) or 0)


def c_get(config: AppConfig, source: DestinationConfig, series: RemoteSeries, spool: Spool,
          disk: DiskGuard | None = None, arrived: Callable[[], None] | None = None) -> int:
    """C-GET the series; each instance is spooled durably before it is acknowledged (and none
    is while the data_dir's disk is under its low-space watermark)."""
    stored: list[str] = []

    def on_store(event: Event) -> int:
        if disk is not None and disk.low():
            return int(Status.OUT_OF_RESOURCES)
        data = event.encoded_dataset(include_meta=True)
        try:
            info = parse_instance(data, spool.limits)
        except CorruptInstance as exc:
            log.warning("C-GET from %s: unreadable instance: %s", source.ae_title, exc)
            return int(Status.CANNOT_UNDERSTAND)
        spool.store(data, info, calling_ae=source.ae_title, called_ae=config.node.ae_title)
        stored.append(info.sop_uid)
        if arrived is not None:
            arrived()
        return int(Status.SUCCESS)

    ae = AE(ae_title=_calling_ae(config, source))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_SOP_CLASSES]
    assoc = _associate(config, source, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        _final(assoc.send_c_get(_series_identifier(series), StudyRootQueryRetrieveInformationModelGet),
               f"C-GET of series {series.series_uid}")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(set(stored))


# ---- processing ---------------------------------------------------------------------------


def plan_requests(
    config: AppConfig, spool: Spool, series: RemoteSeries, source_ae: str,
    instruction: str | None, send_to: list[str] | None, default_reply_to: str,
) -> tuple[SeriesRef | None, list[JobRequest], str | None]:
    """The spooled series and the jobs to run on it, or why there are none."""
    paths = spool.instance_paths(series.study_uid, series.series_uid)
    if not paths:
        return None, [], f"series {series.series_uid}: no instances in {spool.root}"
    sops = tuple(sorted(p.stem for p in paths))
    ref = SeriesRef(
        study_uid=series.study_uid, series_uid=series.series_uid,
        series_dir=str(spool.series_dir(series.study_uid, series.series_uid).resolve()),
        sop_uids=sops, fingerprint=instance_set_fingerprint(sops), calling_ae=source_ae,
        called_ae=config.node.ae_title,
    )
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    routes = [m.route for m in route_series(config, series_tags_from_dataset(header), source_ae,
                                            config.node.ae_title, paths).fired]
    if instruction:
        reply_to = send_to if send_to is not None else [default_reply_to]
        return ref, [JobRequest.question(instruction, routes[0] if routes else None, reply_to)], None
    if not routes:
        return ref, [], f"series {series.series_uid}: no route matched"
    return ref, [JobRequest.for_route(r, send_to) for r in routes], None


def wait_for_node_jobs(
    config: AppConfig, series: RemoteSeries, fingerprint: str, timeout: float | None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[JobRecord]:
    """After a C-MOVE the running node routes the series itself: wait for its job records."""
    store = JobStore(Path(config.node.data_dir).resolve() / "jobs")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        records = [r for r in store.all() if r.series_uid == series.series_uid and r.fingerprint == fingerprint]
        if records and all(r.state.finished for r in records):
            return records
        if deadline is not None and time.monotonic() > deadline:
            return records
        sleep(0.25)


def retrieve_and_process(
    config: AppConfig,
    source_name: str,
    query: RetrieveQuery,
    *,
    method: Method = "get",
    instruction: str | None = None,
    send_to: list[str] | None = None,
    wait_seconds: float | None = 600.0,
    send_timeout: float = 60.0,
    jobs: JobService | None = None,
    spool: Spool | None = None,
    runner: JobRunner | None = None,
    progress: Progress | None = None,
) -> RetrieveResult:
    """Find, pull and process the series ``query`` names on the PACS ``source_name`` (a key of
    ``config.destinations``). ``jobs`` is the running node's job service (its ``spool`` too);
    without it a standalone one is built for the data_dir (with ``runner``, default the
    pipeline), which needs the data_dir free of a running node. ``wait_seconds`` bounds the wait
    for the jobs (None: no bound), ``send_timeout`` the wait for their deliveries afterwards
    (the outbox goes on after it). ``progress`` is told of instances as they arrive (per
    instance with C-GET, per series with C-MOVE). See the module docstring for what each method
    needs."""
    if source_name not in config.destinations:
        raise RetrieveError(f"unknown PACS {source_name!r} (known: {', '.join(sorted(config.destinations)) or 'none'})")
    for name in send_to or []:
        if name not in config.destinations:
            raise RetrieveError(f"unknown destination {name!r}")
    spool = spool or Spool.for_node(Path(config.node.data_dir).resolve(), config.node)
    if jobs is not None or (method == "move" and not instruction):
        return _retrieve(config, source_name, query, method, instruction, send_to, wait_seconds,
                         send_timeout, spool, jobs, progress)
    try:
        with standalone_jobs(config, runner) as service:
            return _retrieve(config, source_name, query, method, instruction, send_to, None,
                             send_timeout, spool, service, progress)
    except DataDirBusy as exc:
        raise RetrieveError(
            f"{exc}: a node is serving this data_dir; ask it through its HTTP API "
            "(api.enabled: POST /questions), or use --method move without --instruction and let "
            "it route the series") from None


def _retrieve(
    config: AppConfig, source_name: str, query: RetrieveQuery, method: Method,
    instruction: str | None, send_to: list[str] | None, wait_seconds: float | None,
    send_timeout: float, spool: Spool, jobs: JobService | None, progress: Progress | None = None,
) -> RetrieveResult:
    source = config.destinations[source_name]
    result = RetrieveResult(series=find_series(config, source, query))
    if not result.series:
        result.errors.append("no matching series on the PACS")
        return result
    submitted: list[str] = []
    disk = DiskGuard(spool.root, config.retention)
    counts = [s.instances for s in result.series]
    expected = None if any(n is None for n in counts) else sum(n or 0 for n in counts)
    tell = progress or (lambda n, total: None)
    for series in result.series:
        try:
            if method == "move":
                tell(c_move(config, source, series), expected)
            else:
                c_get(config, source, series, spool, disk, arrived=lambda: tell(1, expected))
        except RetrieveError as exc:
            result.errors.append(str(exc))
            continue
        held = spool.instance_paths(series.study_uid, series.series_uid)
        result.pulled[series.series_uid] = len(held)
        if not held:
            result.errors.append(f"series {series.series_uid}: nothing arrived in {spool.root}"
                                 + (" (is the node running with this data_dir?)" if method == "move" else ""))
            continue
        if jobs is None:  # a C-MOVE without a question: the node routes the series itself
            fingerprint = instance_set_fingerprint(p.stem for p in held)
            result.jobs.extend(wait_for_node_jobs(config, series, fingerprint, wait_seconds))
            continue
        ref, requests, why = plan_requests(config, spool, series, source.ae_title, instruction,
                                           send_to, source_name)
        if why:
            result.skipped.append(why)
        if ref is not None and requests:
            submitted.extend(r.job_id for r in jobs.submit(ref, requests))
    if jobs is not None and submitted:
        job_ids = list(dict.fromkeys(submitted))
        result.jobs.extend(jobs.wait(job_ids, wait_seconds))
        jobs.settle(job_ids, send_timeout)
    return result
