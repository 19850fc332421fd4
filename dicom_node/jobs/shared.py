"""Job state shared by the node and its Celery workers: one Redis hash per job.

``mmed:job:<job_id>`` holds ``state`` (queued / running / done / failed, the values of
:class:`~dicom_node.jobs.store.JobState`), timestamps, the worker hostname and pid, the attempt
count (every start of the task counts, redeliveries after a lost worker included), the error
text, the expected instance count and, once done, the manifest (JSON). Workers write it; the node
writes ``queued`` when it publishes and mirrors every change into its own job record
(``<data_dir>/jobs/<job_id>.json``) so ``mmed-node status`` shows it.

With Redis persistence on (AOF), the hash survives a Redis restart, and it is keyed by the
derived job id, so it survives restarts of the node and of workers too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from dicom_node.jobs.store import JobState

KEY_PREFIX = "mmed:job:"
#: Finished jobs' hashes expire after this long (the node's JSON record is the long-term copy).
FINISHED_TTL_SECONDS = 7 * 24 * 3600
#: Connect/read timeout of the state client: an outage must fail fast, not hang the node.
SOCKET_TIMEOUT_SECONDS = 5.0

#: Atomically decide whether a delivered task may run: a finished job is never run again (a
#: duplicate delivery), otherwise count the attempt and mark the job running.
#: Returns {previous state, attempt after increment}.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' then
  return {state, tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'worker_pid', ARGV[2],
           'started', ARGV[3], 'updated', ARGV[3])
return {state or '', attempt}
"""


@dataclass(frozen=True)
class SharedJob:
    """A decoded job hash."""

    job_id: str
    state: JobState
    attempt: int = 0
    worker: str | None = None
    worker_pid: int | None = None
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    error: str | None = None
    instance_count: int | None = None
    #: The node published the task (False: recorded but the publish may not have happened).
    published: bool = False
    manifest: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> SharedJob:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        def integer(name: str) -> int | None:
            return int(raw[name]) if raw.get(name) else None

        return cls(
            job_id=job_id,
            state=JobState(raw.get("state") or JobState.QUEUED.value),
            attempt=integer("attempt") or 0,
            worker=raw.get("worker") or None,
            worker_pid=integer("worker_pid"),
            queued=num("queued"),
            started=num("started"),
            finished=num("finished"),
            updated=num("updated"),
            error=raw.get("error") or None,
            instance_count=integer("instance_count"),
            published=raw.get("published") == "1",
            manifest=json.loads(raw["manifest"]) if raw.get("manifest") else None,
        )


class SharedJobState:
    """Reads and writes the job hashes (the one loader and writer of ``mmed:job:*``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._begin = client.register_script(_BEGIN)

    @classmethod
    def from_url(cls, url: str) -> SharedJobState:
        return cls(
            redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
                socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            )
        )

    @staticmethod
    def key(job_id: str) -> str:
        return KEY_PREFIX + job_id

    def get(self, job_id: str) -> SharedJob | None:
        raw = cast(dict[str, str], self._client.hgetall(self.key(job_id)))
        return SharedJob.from_hash(job_id, raw) if raw else None

    def get_many(self, job_ids: list[str]) -> dict[str, SharedJob | None]:
        pipe = self._client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
        return {
            job_id: SharedJob.from_hash(job_id, cast(dict[str, str], raw)) if raw else None
            for job_id, raw in zip(job_ids, pipe.execute())
        }

    # -- node side

    def mark_queued(self, job_id: str, instance_count: int | None) -> None:
        """Before publishing: the job exists and waits for a worker."""
        now = time.time()
        fields: dict[FieldT, EncodableT] = {
            "state": JobState.QUEUED.value, "queued": now, "updated": now
        }
        if instance_count is not None:
            fields["instance_count"] = instance_count
        self._client.hset(self.key(job_id), mapping=fields)

    def mark_published(self, job_id: str) -> None:
        self._client.hset(self.key(job_id), "published", "1")

    # -- worker side

    def begin(self, job_id: str, worker: str, pid: int) -> tuple[str, int]:
        """Count one attempt and mark the job running, unless it already finished.

        Returns ``(previous state or "", attempt)``; a previous state of ``done``/``failed``
        means the task must not run (``attempt`` is then the count so far).
        """
        previous, attempt = self._begin(keys=[self.key(job_id)], args=[worker, pid, time.time()])
        return str(previous), int(attempt)

    def mark_retrying(self, job_id: str, error: str, delay: float) -> None:
        now = time.time()
        self._client.hset(
            self.key(job_id),
            mapping={"state": JobState.QUEUED.value, "error": error, "updated": now,
                     "retry_at": now + delay},
        )

    def mark_done(self, job_id: str, manifest: dict[str, Any]) -> None:
        self._finish(job_id, JobState.DONE, {"manifest": json.dumps(manifest, default=str), "error": ""})

    def mark_failed(self, job_id: str, error: str) -> None:
        self._finish(job_id, JobState.FAILED, {"error": error})

    def _finish(self, job_id: str, state: JobState, fields: dict[FieldT, EncodableT]) -> None:
        now = time.time()
        key = self.key(job_id)
        pipe = self._client.pipeline(transaction=True)
        values: dict[FieldT, EncodableT] = {"state": state.value, "finished": now, "updated": now}
        pipe.hset(key, mapping={**values, **fields})
        pipe.expire(key, FINISHED_TTL_SECONDS)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        self._client.delete(self.key(job_id))

    def close(self) -> None:
        self._client.close()
