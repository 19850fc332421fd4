"""Prometheus metrics of one node, in a registry the node owns (``GET /metrics`` serves it).

Counters and histograms move with the node's events (:mod:`dicom_node.events`); gauges are read
from the node's state when scraped (jobs by state from the job records, outbox depth, worker
leases, disk space, peers dropped by the receive limits). Names:

=============================================  ==========================================================
``mmed_instances_received_total``              C-STOREs answered Success (``duplicate`` label)
``mmed_received_bytes_total``                  bytes of those data sets
``mmed_associations_total``                    associations by ``outcome`` (accepted, refused, aborted)
``mmed_peers_dropped_total``                   refusals by the receive limits, by ``reason``
``mmed_series_completed_total``                instance sets judged complete
``mmed_series_routed_total``                   routing outcomes (``outcome``: routed, unrouted, skipped)
``mmed_jobs``                                  jobs by ``state`` (gauge)
``mmed_job_runs_total``                        job runs ended, by ``outcome`` (done, retry, failed, lost)
``mmed_job_stage_seconds``                     histogram per ``stage``: time from the previous stage
``mmed_tool_seconds``                          histogram per ``tool``: one call's run time
``mmed_model_load_seconds``                    histogram per ``model``: loading a model into a worker
``mmed_remote_disclosures_total``              requests de-identified for a remote endpoint, by ``purpose``
``mmed_outbox_depth``                          deliveries pending or being sent, per ``destination``
``mmed_deliveries_total``                      deliveries ended, per ``destination`` and ``outcome``
``mmed_delivery_attempt_failures_total``       failed attempts, per ``destination``
``mmed_worker_leases``                         jobs running, per ``worker`` (the Celery worker holding the lease; "embedded")
``mmed_disk_free_bytes``                       free space of the data_dir's file system
``mmed_refusing_instances``                    1 while below the low-space watermark
``mmed_receiver_processes``                    receiver processes running (``node.receivers`` above 1)
``mmed_receiver_restarts_total``               receiver processes started again after they died
=============================================  ==========================================================
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dicom_node.events import AssociationEvent, Event, Hop, HopEvent, InstanceStored
from dicom_node.jobs.stages import Stage, durations
from dicom_node.jobs.store import JobRecord, JobState

#: Content type of :meth:`NodeMetrics.exposition` (the Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Bucket bounds (seconds): stages and tools run from milliseconds (a tiny model) to an hour.
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
#: What a worker label says for a job run by the embedded pool (no Celery worker).
EMBEDDED_WORKER = "embedded"


@dataclass
class NodeState:
    """Where the gauges are read from when scraped (each may be absent)."""

    jobs: Callable[[], Iterable[JobRecord]] = list
    outbox_depth: Callable[[], Mapping[str, int]] = dict
    #: Connections the receive limits dropped since start, per reason.
    dropped: Callable[[], Mapping[str, int]] = dict
    #: (free bytes, refusing instances) of the data_dir, or None when not known.
    disk: Callable[[], tuple[int, bool] | None] = field(default=lambda: None)
    #: (receiver processes running, restarts since start), or None when the node receives in
    #: its own process.
    receivers: Callable[[], tuple[int, int] | None] = field(default=lambda: None)


#: Connections or associations the receive limits refused or dropped, counted by the node
#: since it started (``Node.refusals()``): a counter read at scrape time.
DROPPED = ("mmed_peers_dropped",
           ("Refusals by the receive limits (connections and associations dropped, instances "
            "refused), by reason."))
#: The gauges read at scrape time: name, help, labels.
STATE_GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mmed_jobs", "Jobs by state (from the job records).", ("state",)),
    ("mmed_worker_leases", "Jobs running, per worker holding them.", ("worker",)),
    ("mmed_outbox_depth", "Deliveries pending or being sent, per destination.", ("destination",)),
    ("mmed_disk_free_bytes", "Free space of the data_dir's file system.", ()),
    ("mmed_refusing_instances", "1 while below the low-space watermark.", ()),
    ("mmed_receiver_processes", "Receiver processes running.", ()),
)
_GAUGE_HELP = {name: text for name, text, _ in STATE_GAUGES}
#: Receiver processes restarted (with ``node.receivers`` above 1): a counter read at scrape time.
RESTARTS = ("mmed_receiver_restarts", "Receiver processes started again after they died.")


class _StateCollector(Collector):
    def __init__(self, state: NodeState) -> None:
        self.state = state

    def describe(self) -> Iterable[Metric]:
        """The families without reading the node (the registry asks when this is registered,
        before the node is fully built)."""
        for name, text, labels in STATE_GAUGES:
            yield GaugeMetricFamily(name, text, labels=list(labels) if labels else None)
        yield CounterMetricFamily(*DROPPED, labels=["reason"])
        yield CounterMetricFamily(*RESTARTS)

    def collect(self) -> Iterable[Metric]:
        jobs = list(self.state.jobs())
        by_state = Tally(record.state.value for record in jobs)
        gauge = GaugeMetricFamily("mmed_jobs", _GAUGE_HELP["mmed_jobs"], labels=["state"])
        for state in JobState:
            gauge.add_metric([state.value], by_state.get(state.value, 0))
        yield gauge
        leases = GaugeMetricFamily("mmed_worker_leases", _GAUGE_HELP["mmed_worker_leases"], labels=["worker"])
        held = Tally(record.worker or EMBEDDED_WORKER for record in jobs
                     if record.state is JobState.RUNNING)
        for worker, count in sorted(held.items()):
            leases.add_metric([worker], count)
        yield leases
        depth = GaugeMetricFamily("mmed_outbox_depth", _GAUGE_HELP["mmed_outbox_depth"],
                                  labels=["destination"])
        for destination, count in sorted(self.state.outbox_depth().items()):
            depth.add_metric([destination], count)
        yield depth
        family = CounterMetricFamily(*DROPPED, labels=["reason"])
        for reason, count in sorted(self.state.dropped().items()):
            family.add_metric([reason], count)
        yield family
        disk = self.state.disk()
        if disk is not None:
            free, refusing = disk
            yield GaugeMetricFamily("mmed_disk_free_bytes", _GAUGE_HELP["mmed_disk_free_bytes"], value=free)
            yield GaugeMetricFamily("mmed_refusing_instances", _GAUGE_HELP["mmed_refusing_instances"],
                                    value=int(refusing))
        receivers = self.state.receivers()
        if receivers is not None:
            running, restarts = receivers
            yield GaugeMetricFamily("mmed_receiver_processes", _GAUGE_HELP["mmed_receiver_processes"],
                                    value=running)
            yield CounterMetricFamily(*RESTARTS, value=restarts)


class NodeMetrics:
    """The node's metrics; :meth:`observe` is an :data:`~dicom_node.events.Emit`."""

    def __init__(self, state: NodeState, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances = Counter("mmed_instances_received", "C-STOREs answered Success.",
                                 ["duplicate"], registry=r)
        self.received_bytes = Counter("mmed_received_bytes", "Bytes of the data sets stored.",
                                      registry=r)
        self.associations = Counter("mmed_associations", "Associations by outcome.",
                                    ["outcome"], registry=r)
        self.series_completed = Counter("mmed_series_completed",
                                        "Instance sets judged complete.", registry=r)
        self.series_routed = Counter("mmed_series_routed", "Routing outcomes.", ["outcome"],
                                     registry=r)
        self.job_runs = Counter("mmed_job_runs", "Job runs ended, by outcome.", ["outcome"],
                                registry=r)
        self.stage_seconds = Histogram("mmed_job_stage_seconds",
                                       "Seconds from a job's previous stage to this one.",
                                       ["stage"], buckets=SECONDS_BUCKETS, registry=r)
        self.tool_seconds = Histogram("mmed_tool_seconds", "One tool call's run time.",
                                      ["tool"], buckets=SECONDS_BUCKETS, registry=r)
        self.model_load_seconds = Histogram("mmed_model_load_seconds",
                                            "Loading a model into a worker process.", ["model"],
                                            buckets=SECONDS_BUCKETS, registry=r)
        self.disclosures = Counter("mmed_remote_disclosures",
                                   "Requests de-identified for a remote endpoint.", ["purpose"],
                                   registry=r)
        self.deliveries = Counter("mmed_deliveries", "Deliveries ended.",
                                  ["destination", "outcome"], registry=r)
        self.attempt_failures = Counter("mmed_delivery_attempt_failures",
                                        "Failed delivery attempts.", ["destination"], registry=r)
        r.register(_StateCollector(state))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def observe(self, event: Event) -> None:
        if isinstance(event, InstanceStored):
            self.instances.labels(duplicate=str(event.duplicate).lower()).inc()
            self.received_bytes.inc(event.nbytes)
        elif isinstance(event, AssociationEvent):
            self.associations.labels(outcome=event.outcome.value).inc()
        else:
            self._hop(event)

    def observe_stages(self, record: JobRecord, upto: Iterable[Stage]) -> None:
        """Observe how long the job's stages ``upto`` took (each once, when it is reached)."""
        took = durations(record.stages)
        for stage in upto:
            if stage in took:
                self.stage_seconds.labels(stage=stage.value).observe(took[stage])

    def _hop(self, event: HopEvent) -> None:
        detail = event.detail
        if event.hop is Hop.RECEIVED:
            self.series_completed.inc()
        elif event.hop is Hop.ROUTED:
            self.series_routed.labels(outcome=str(detail.get("outcome", "routed"))).inc()
        elif event.hop is Hop.TOOL:
            self.tool_seconds.labels(tool=str(detail.get("tool"))).observe(
                float(detail.get("seconds") or 0.0))
        elif event.hop is Hop.ENCODED:
            self.job_runs.labels(outcome="done").inc()
            for load in detail.get("model_loads", ()):
                self.model_load_seconds.labels(model=str(load.get("kind"))).observe(
                    float(load.get("seconds") or 0.0))
        elif event.hop is Hop.DISCLOSED:
            self.disclosures.labels(purpose=str(detail.get("purpose"))).inc()
        elif event.hop is Hop.SENT:
            self.deliveries.labels(destination=str(detail.get("destination")),
                                   outcome="sent").inc()
        elif event.hop is Hop.FAILED:
            self._failed(event)

    def _failed(self, event: HopEvent) -> None:
        detail = event.detail
        destination = detail.get("destination")
        final = bool(detail.get("final"))
        if destination is not None:
            self.attempt_failures.labels(destination=str(destination)).inc()
            if final:
                self.deliveries.labels(destination=str(destination), outcome="failed").inc()
            return
        outcome = "lost" if detail.get("lost") else ("failed" if final else "retry")
        self.job_runs.labels(outcome=outcome).inc()
