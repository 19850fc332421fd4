"""The Celery queue's meeting point in Redis: per job a hash ``mmed:job:<job_id>`` and, while a
worker runs it, a lease ``mmed:lease:<job_id>``.

It is not a second store of job state (that is the node's job record, see
:mod:`dicom_node.jobs.store`): it holds only what workers on other hosts need to agree on, and
what they tell the node.

* the **claim**: ``begin`` (one Lua script, atomic) decides whether a delivered task may run: a
  job that finished, or that waits for the node's retry decision, never runs again, nor one whose
  lease another worker holds (a duplicate delivery); otherwise the attempt is counted
  (``attempt``: every start, restarts after a lost worker included), the job is marked
  ``running`` by this worker (``worker``, ``worker_pid``, ``started``, ``token``) and the lease
  taken. A job past its attempt limit is marked ``failed`` instead.
* the **lease**: a key holding the runner's token with a time to live of
  ``queue.lease_seconds``, renewed by the runner's heartbeat every ``queue.lease_renew_seconds``
  for as long as the job runs, however long. Redis's own clock expires it, so no two hosts need
  agree on the time. A running job without a lease was lost with its worker: the node takes it
  back (:meth:`SharedJobState.take_lapsed`, exactly once per lapse) and publishes it again at
  once, instead of waiting for the broker's visibility timeout, which stays only as a last resort
  (the node down, say).
* the **report**: the worker holding the claim writes how the run ended: ``done``, ``failed`` (a
  permanent reason: never retried) or ``retry`` (a transient error: the node decides, with the one
  retry policy, whether and when it runs again); ``error`` holds the reason. A report from a
  worker whose claim was taken over (it was presumed lost) is refused.
* what the **node** writes: ``queued`` and ``published`` when it publishes a run, and the
  take-back of a lapsed lease.

``state`` therefore takes the values queued, running, retry, done and failed. Finished hashes
expire after :data:`FINISHED_TTL_SECONDS`; the node's record is the lasting copy. With Redis
persistence on (AOF) a hash survives a Redis restart, and it is keyed by the derived job id, so
it survives restarts of the node and of workers too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

KEY_PREFIX = "mmed:job:"
LEASE_PREFIX = "mmed:lease:"
#: Finished jobs' hashes expire after this long (the node's JSON record is the long-term copy).
FINISHED_TTL_SECONDS = 7 * 24 * 3600
#: Connect/read timeout of the state client: an outage must fail fast, not hang the node.
SOCKET_TIMEOUT_SECONDS = 5.0

QUEUED, RUNNING, RETRY, DONE, FAILED = "queued", "running", "retry", "done", "failed"

#: KEYS: the hash, the lease. ARGV: worker, pid, now, attempt limit, finished TTL, token,
#: lease milliseconds. Returns {verdict, attempt}: verdict "run", "gave-up", "held" (another
#: worker's lease is alive) or the state that forbids running.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if state == 'done' or state == 'failed' or state == 'retry' then
  return {state, attempt}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'held', attempt}
end
attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
if attempt > tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished', ARGV[3], 'updated', ARGV[3], 'error',
             'gave up after ' .. (attempt - 1) .. ' attempt(s): the job kept ending without a ' ..
             'result (its worker was lost each time)')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {'gave-up', attempt}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'worker_pid', ARGV[2],
           'started', ARGV[3], 'updated', ARGV[3], 'error', '', 'token', ARGV[6])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7])
return {'run', attempt}
"""

#: KEYS: the lease. ARGV: token, lease milliseconds. 1 when renewed, 0 when the lease is gone.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS: the hash, the lease. ARGV: token, state, error, now, TTL (0: none), disk full (1/0).
#: 1 when recorded, 0 when the claim belongs to another run now.
_REPORT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'error', ARGV[3], 'finished', ARGV[4], 'updated', ARGV[4],
           'disk_full', ARGV[6])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if tonumber(ARGV[5]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 1
"""

#: KEYS: the hash, the lease. ARGV: the attempt seen running, now, reason. 1 exactly once per
#: lapse: the job was running that attempt and its lease is gone; it is queued again.
_TAKE_LAPSED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('EXISTS', KEYS[2]) == 1
   or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'published', '0', 'error', ARGV[3], 'lapsed', ARGV[2],
           'updated', ARGV[2], 'token', '')
return 1
"""

#: KEYS: the hash. ARGV: now. Queue a further run unless the job finished meanwhile (a report
#: that raced the node's decision); returns the state found.
_REQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' then
  return state
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'queued', ARGV[1], 'updated', ARGV[1], 'published', '0',
           'error', '')
redis.call('PERSIST', KEYS[1])
return state or ''
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
    #: A runner's lease is alive.
    leased: bool = False
    #: The run reported ended with a full disk.
    disk_full: bool = False

    @property
    def lapsed(self) -> bool:
        """Running, but nobody renews its lease: the worker was lost."""
        return self.state == RUNNING and not self.leased

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str], leased: bool = False) -> SharedJob:
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
            leased=leased,
            disk_full=raw.get("disk_full") == "1",
        )


@dataclass(frozen=True)
class Claim:
    """What ``begin`` decided: ``run``, ``gave-up``, ``held``, or the state that forbids
    running; ``token`` identifies this run's claim in its renewals and report."""

    verdict: str
    attempt: int
    token: str = ""

    @property
    def may_run(self) -> bool:
        return self.verdict == "run"


class SharedJobState:
    """Reads and writes the job hashes (the one loader and writer of ``mmed:job:*``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._begin = client.register_script(_BEGIN)
        self._renew = client.register_script(_RENEW)
        self._report = client.register_script(_REPORT)
        self._take_lapsed = client.register_script(_TAKE_LAPSED)
        self._requeue = client.register_script(_REQUEUE)

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

    @staticmethod
    def lease_key(job_id: str) -> str:
        return LEASE_PREFIX + job_id

    def get(self, job_id: str) -> SharedJob | None:
        return self.get_many([job_id])[job_id]

    def get_many(self, job_ids: list[str]) -> dict[str, SharedJob | None]:
        pipe = self._client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
            pipe.exists(self.lease_key(job_id))
        replies = pipe.execute()
        out: dict[str, SharedJob | None] = {}
        for i, job_id in enumerate(job_ids):
            raw, leased = cast(dict[str, str], replies[2 * i]), bool(replies[2 * i + 1])
            out[job_id] = SharedJob.from_hash(job_id, raw, leased) if raw else None
        return out

    # -- node side

    def mark_queued(self, job_id: str, fresh: bool) -> bool:
        """Before publishing a run: the job waits for a worker. ``fresh`` starts the job again
        from scratch (a new job, or one an operator retries); otherwise the attempt count goes on,
        and False means the job finished meanwhile (nothing to publish)."""
        if not fresh:
            return str(self._requeue(keys=[self.key(job_id)], args=[time.time()])) not in (DONE, FAILED)
        now = time.time()
        fields: dict[FieldT, EncodableT] = {
            "state": QUEUED, "queued": now, "updated": now, "published": "0", "error": "",
        }
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self.key(job_id), self.lease_key(job_id))
        pipe.hset(self.key(job_id), mapping=fields)
        pipe.execute()
        return True

    def mark_published(self, job_id: str) -> None:
        self._client.hset(self.key(job_id), "published", "1")

    def take_lapsed(self, job_id: str, attempt: int, reason: str) -> bool:
        """Queue a job whose run ``attempt`` lost its lease; True exactly once per lapse."""
        return bool(self._take_lapsed(keys=[self.key(job_id), self.lease_key(job_id)],
                                      args=[attempt, time.time(), reason]))

    # -- worker side

    def begin(self, job_id: str, worker: str, pid: int, max_attempts: int,
              lease_seconds: float) -> Claim:
        """Claim the job for a run and take its lease, unless it may not run (see the module
        docstring)."""
        token = secrets.token_hex(8)
        verdict, attempt = self._begin(
            keys=[self.key(job_id), self.lease_key(job_id)],
            args=[worker, pid, time.time(), max_attempts, FINISHED_TTL_SECONDS, token,
                  int(lease_seconds * 1000)],
        )
        return Claim(str(verdict), int(attempt), token)

    def renew(self, job_id: str, token: str, lease_seconds: float) -> bool:
        """Extend this run's lease; False when it is gone (the node took the job back)."""
        return bool(self._renew(keys=[self.lease_key(job_id)],
                                args=[token, int(lease_seconds * 1000)]))

    def report_done(self, job_id: str, token: str) -> bool:
        return self._report_end(job_id, token, DONE, "", FINISHED_TTL_SECONDS)

    def report_failed(self, job_id: str, token: str, error: str) -> bool:
        return self._report_end(job_id, token, FAILED, error, FINISHED_TTL_SECONDS)

    def report_retry(self, job_id: str, token: str, error: str, disk_full: bool = False) -> bool:
        """A transient error: the node decides whether and when the job runs again."""
        return self._report_end(job_id, token, RETRY, error, 0, disk_full)

    def _report_end(self, job_id: str, token: str, state: str, error: str, ttl: int,
                    disk_full: bool = False) -> bool:
        """Record how this run ended; False when the claim belongs to another run now."""
        return bool(self._report(keys=[self.key(job_id), self.lease_key(job_id)],
                                 args=[token, state, error, time.time(), ttl,
                                       "1" if disk_full else "0"]))

    def delete(self, job_id: str) -> None:
        self._client.delete(self.key(job_id), self.lease_key(job_id))

    def close(self) -> None:
        self._client.close()
