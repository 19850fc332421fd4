"""The Celery application, built from the node's config (``queue.broker_url``).

The node (publisher) and every worker build the same app with :func:`make_celery_app`, so both
sides agree on serialisation, routing and delivery guarantees:

* **At-least-once.** ``task_acks_late``: a worker acknowledges a job only after it finished.
  A worker killed mid-job (``kill -9``, OOM) stops renewing the job's lease, and the node hands
  the job to another worker once the lease lapses (:mod:`dicom_node.jobs.shared`); the message
  it left unacknowledged comes back only after ``queue.visibility_timeout_seconds``, the last
  resort, and is then dropped by the claim. ``task_reject_on_worker_lost`` does the same for a
  pool child that dies. ``worker_prefetch_multiplier=1``: a busy worker holds no second job hostage.
* **No duplicate results.** A re-run writes the same output UIDs (derived from the source
  instance set and pipeline version, :mod:`sr_templates.identity`); a job already ``done`` in
  the shared job state (:mod:`dicom_node.jobs.shared`) is not run again; the outbox records one
  delivery per job and destination.
* **Routing by need.** Jobs whose route may call a model tool (``Tool.queue == "gpu"``) go to
  the ``gpu`` queue, jobs that only use CPU tools to ``cpu``. A route without a ``tools`` list
  may call any tool, so it goes to ``gpu`` whenever a GPU tool is registered.
* JSON only (never pickle): a job is a :class:`~dicom_node.jobs.pipeline.JobSpec` dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from config.schema import AppConfig

#: The job task's name (the function is :func:`dicom_node.jobs.worker_tasks.register_tasks`).
TASK_NAME = "mmed.process_series"
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES: tuple[str, ...] = (GPU_QUEUE, CPU_QUEUE)
#: Seconds to wait for the broker before a publish fails (the node then retries later).
BROKER_CONNECT_TIMEOUT_SECONDS = 3.0
#: Longest pause between the transport's sweeps for jobs whose worker vanished.
MAX_RESTORE_INTERVAL_SECONDS = 10.0


def tool_queues() -> dict[str, str]:
    """API_name -> the queue its tool prefers, from the registered tool classes (no model
    is loaded: only class attributes are read)."""
    from tools.registry import known_tool_classes

    return {name: cls.queue for name, cls in known_tool_classes().items()}


def queue_for_tools(tools: list[str] | None, queues: Mapping[str, str]) -> str:
    """The queue for a job that may call ``tools`` (None: any registered tool)."""
    names = list(queues) if tools is None else tools
    return GPU_QUEUE if any(queues.get(name) == GPU_QUEUE for name in names) else CPU_QUEUE


class JobRouter:
    """Celery router (``task_routes`` entry): sends each job to the queue its tools need.

    The tool table is read on first use, so building the app stays cheap."""

    def __init__(self, lookup: Callable[[], Mapping[str, str]] = tool_queues) -> None:
        self._lookup = lookup
        self._queues: Mapping[str, str] | None = None

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
    ) -> dict[str, str] | None:
        if name != TASK_NAME or not args:
            return None
        if self._queues is None:
            self._queues = self._lookup()
        spec = args[0]
        tools = spec.get("tools") if isinstance(spec, Mapping) else None
        return {"queue": queue_for_tools(tools, self._queues)}


def make_celery_app(config: AppConfig, router: JobRouter | None = None) -> Celery:
    """A Celery app for ``config.queue.broker_url`` (which must be set)."""
    queue = config.queue
    if not queue.broker_url:
        raise ValueError("queue.broker_url is not set: the embedded queue needs no Celery app")
    app = Celery("mmed-node", broker=queue.broker_url, set_as_current=False)
    visibility = queue.visibility_timeout_seconds
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Job state lives in the shared job hashes, not in a Celery result backend.
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CPU_QUEUE,
        task_create_missing_queues=True,
        task_routes=(router or JobRouter(),),
        broker_transport_options={
            "visibility_timeout": visibility,
            # Sweep for abandoned jobs often enough that a short visibility timeout is honoured.
            "unacked_restore_interval": max(1.0, min(MAX_RESTORE_INTERVAL_SECONDS, visibility / 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=True,
        # Workers wait for the broker forever: an outage pauses them, it does not end them.
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
