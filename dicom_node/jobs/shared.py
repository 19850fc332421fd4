"""The Celery queue's meeting point in Redis: one hash per job, ``mmed:job:<job_id>``.

It is not a second store of job state (that is the node's job record, see
:mod:`dicom_node.jobs.store`): it holds only what workers on other hosts need to agree on, and
what they tell the node.

* the **claim**: ``begin`` (one Lua script, atomic) decides whether a delivered task may run: a
  job that finished, or that waits for the node's retry decision, never runs again; otherwise
  the attempt is counted (``attempt``: every start, redeliveries after a lost worker included)
  and the job is marked ``running`` by this worker (``worker``, ``worker_pid``, ``started``). A
  job past its attempt limit is marked ``failed`` instead.
* the **report**: the worker that ran it writes how the run ended: ``done``, ``failed`` (a
  permanent reason: never retried) or ``retry`` (a transient error: the node decides, with the one
  retry policy, whether and when it runs again); ``error`` holds the reason.
* what the **node** writes: ``queued`` and ``published`` when it publishes a run.

``state`` therefore takes the values queued, running, retry, done and failed. Finished hashes
expire after :data:`FINISHED_TTL_SECONDS`; the node's record is the lasting copy. With Redis
persistence on (AOF) a hash survives a Redis restart, and it is keyed by the derived job id, so
it survives restarts of the node and of workers too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

KEY_PREFIX = "mmed:job:"
#: Finished jobs' hashes expire after this long (the node's JSON record is the long-term copy).
FINISHED_TTL_SECONDS = 7 * 24 * 3600
#: Connect/read timeout of the state client: an outage must fail fast, not hang the node.
SOCKET_TIMEOUT_SECONDS = 5.0

QUEUED, RUNNING, RETRY, DONE, FAILED = "queued", "running", "retry", "done", "failed"
#: States in which a delivered task must not run (the job ended, or waits for the node).
NOT_RUNNABLE = frozenset({DONE, FAILED, RETRY})

#: KEYS[1] the hash; ARGV: worker, pid, now, attempt limit, finished TTL.
#: Returns {verdict, attempt}: verdict "run", "gave-up", or the state that forbids running.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' or state == 'retry' then
  return {state, tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if attempt > tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished', ARGV[3], 'updated', ARGV[3], 'error',
             'gave up after ' .. (attempt - 1) .. ' attempt(s): the job kept ending without a ' ..
             'result (its worker was lost each time)')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'gave-up', attempt}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'worker_pid', ARGV[2],
           'started', ARGV[3], 'updated', ARGV[3], 'error', '')
return {'run', attempt}
"""


@dataclass(frozen=True)
class SharedJob:
    """A decoded job hash."""

    job_id: str
    state: str
    attempt: int = 0
    worker: str | None = None
    worker_pid: int | None = None
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    error: str | None = None
    #: The node published the task (False: recorded but the publish may not have happened).
    published: bool = False

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> SharedJob:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        def integer(name: str) -> int | None:
            return int(raw[name]) if raw.get(name) else None

        return cls(
            job_id=job_id,
            state=raw.get("state") or QUEUED,
            attempt=integer("attempt") or 0,
            worker=raw.get("worker") or None,
            worker_pid=integer("worker_pid"),
            queued=num("queued"),
            started=num("started"),
            finished=num("finished"),
            updated=num("updated"),
            error=raw.get("error") or None,
            published=raw.get("published") == "1",
        )


@dataclass(frozen=True)
class Claim:
    """What ``begin`` decided: ``run``, ``gave-up``, or the state that forbids running."""

    verdict: str
    attempt: int

    @property
    def may_run(self) -> bool:
        return self.verdict == "run"


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

    def mark_queued(self, job_id: str, fresh: bool) -> None:
        """Before publishing a run: the job waits for a worker. ``fresh`` starts the attempt
        count again (a new job, or one an operator retries)."""
        now = time.time()
        fields: dict[FieldT, EncodableT] = {
            "state": QUEUED, "queued": now, "updated": now, "published": "0", "error": "",
        }
        pipe = self._client.pipeline(transaction=True)
        if fresh:
            pipe.delete(self.key(job_id))
        pipe.hset(self.key(job_id), mapping=fields)
        pipe.persist(self.key(job_id))
        pipe.execute()

    def mark_published(self, job_id: str) -> None:
        self._client.hset(self.key(job_id), "published", "1")

    # -- worker side

    def begin(self, job_id: str, worker: str, pid: int, max_attempts: int) -> Claim:
        """Count one attempt and mark the job running, unless it may not run (see the module
        docstring)."""
        verdict, attempt = self._begin(
            keys=[self.key(job_id)],
            args=[worker, pid, time.time(), max_attempts, FINISHED_TTL_SECONDS],
        )
        return Claim(str(verdict), int(attempt))

    def report_done(self, job_id: str) -> None:
        self._finish(job_id, DONE, "")

    def report_failed(self, job_id: str, error: str) -> None:
        self._finish(job_id, FAILED, error)

    def report_retry(self, job_id: str, error: str) -> None:
        """A transient error: the node decides whether and when the job runs again."""
        now = time.time()
        self._client.hset(self.key(job_id), mapping={"state": RETRY, "error": error,
                                                      "updated": now, "finished": now})

    def _finish(self, job_id: str, state: str, error: str) -> None:
        now = time.time()
        key = self.key(job_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": state, "finished": now, "updated": now, "error": error})
        pipe.expire(key, FINISHED_TTL_SECONDS)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        self._client.delete(self.key(job_id))

    def close(self) -> None:
        self._client.close()
