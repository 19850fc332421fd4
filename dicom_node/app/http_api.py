"""The node's HTTP API: health, status, job records, and questions about a study in a PACS.

Opt-in (``api.enabled``), standard library only (:class:`http.server.ThreadingHTTPServer`),
started and stopped by :class:`dicom_node.app.node.Node`. Every answer is JSON.

    GET  /health                 {"status": "ok", "ae_title": ...}
    GET  /status                 what ``mmed-node status --json`` prints (read from disk)
    GET  /jobs/<job_id>          one job record (404 if unknown)
    POST /questions              ask a question about a study in a PACS -> 202 + request id
    GET  /questions/<request_id> where that request is: accepted, running, done, failed

A question runs in a background thread of the node process: :func:`retrieve_and_process` finds
the study (C-FIND), pulls it (C-GET into the node's spool, or C-MOVE to the node's AE title) and
submits one "question" job per series, with the question as instruction, to the node's own job
service: the node's queue runs it (Celery workers when a broker is configured) and the node's
outbox sends the answer SR to the PACS it came from (or ``send_to``) as soon as the job is done,
like any routed result. The request ends once its jobs ended and their deliveries were made (or
given up after ``outbox.retry_window_seconds``; ``GET /status`` shows them). Requests are
records too, ``<data_dir>/questions/<id>.json``.

With ``api.token_env`` set, every request must carry ``Authorization: Bearer <token>`` (the
value of that environment variable); otherwise 401. Without it the API listens on a loopback
address only: on any other address it refuses to start. A body is at most ``MAX_BODY_BYTES``
and its JSON nesting at most ``MAX_JSON_DEPTH`` (checked before parsing: the parser recurses).
Logs carry request ids, job ids and Study Instance UIDs, never Patient IDs, accession numbers
or question texts.
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.schema import AppConfig
from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.service import JobService
from dicom_node.receive.spool import Spool
from image_model.deidentify import is_loopback_host

if TYPE_CHECKING:
    from dicom_node.app.dashboard.site import Site

log = logging.getLogger(__name__)

#: Largest request body read; a question is a sentence, not a document.
MAX_BODY_BYTES = 64 * 1024
#: Deepest JSON nesting accepted in a body (a question body has two levels).
MAX_JSON_DEPTH = 32
MAX_QUESTION_CHARS = 4000
#: Longest a POST /questions may wait for its answer (``"wait"``) before answering 202.
MAX_WAIT_SECONDS = 600.0
#: How long :meth:`HttpApi.stop` waits for questions in flight (they are daemon threads).
STOP_JOIN_SECONDS = 5.0
QUESTIONS_FOLDER = "questions"
JOB_ID = re.compile(r"[0-9a-f]{1,64}")
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
#: Characters with a matching meaning in a C-FIND key: wildcards (PS3.4 C.2.2.2.4) and the
#: value separator of list-of-UID matching (PS3.4 C.2.2.2.2). A question names one study: an
#: identifier holding them could match (and pull) many.
MATCHING_CHARACTERS = frozenset("*?\\")

class ApiSetupError(ValueError):
    """The API cannot start (token variable unset, no token on a non-loopback address, port
    unavailable); the message says why."""


#: JSON string literals (skipped when counting nesting: brackets inside strings do not nest).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in ``body`` (a bounded scan, no recursion)."""
    depth = deepest = 0
    for char in _JSON_STRING.sub(b"", body):
        if char in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif char in (0x5D, 0x7D):
            depth -= 1
    return deepest


class QuestionBody(BaseModel):
    """The body of ``POST /questions``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from", min_length=1)
    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    send_to: list[str] | None = None
    method: Literal["get", "move"] = "get"
    #: Optional series filters, as ``mmed-node retrieve`` has them.
    series_description: str | None = None
    modality: str | None = None
    #: Seconds to wait for the answer before replying (200 when done in time, else 202).
    wait: float = Field(0.0, ge=0, le=MAX_WAIT_SECONDS)

    @field_validator("study_uid", "accession", "patient_id")
    @classmethod
    def _one_study(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        if MATCHING_CHARACTERS & set(v):
            raise ValueError("must not contain *, ? or \\ (they would match several studies)")
        return v

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, v: str | None) -> str | None:
        # PS3.5 9.1: digits and dots, at most 64 characters.
        if v is not None and not re.fullmatch(r"[0-9.]{1,64}", v):
            raise ValueError("not a DICOM UID (digits and dots, at most 64 characters)")
        return v

    @field_validator("question")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("series_description")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return v

    @model_validator(mode="after")
    def _identified(self) -> QuestionBody:
        if not (self.study_uid or self.accession or self.patient_id):
            raise ValueError("give study_uid, accession or patient_id")
        return self


class RequestState(str, enum.Enum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class QuestionRecord:
    """One question's request, as ``GET /questions/<id>`` shows it and as it lies on disk."""

    request_id: str
    state: RequestState
    source: str
    method: str
    study_uid: str | None
    accession: str | None
    patient_id: str | None
    question: str
    send_to: list[str] | None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    #: Studies the PACS matched; instances pulled by Series Instance UID.
    study_uids: list[str] = field(default_factory=list)
    pulled: dict[str, int] = field(default_factory=dict)
    #: ``{"job_id", "state", "series_uid", "error"}`` per job.
    jobs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuestionRecord:
        return cls(**{**data, "state": RequestState(data["state"])})


class QuestionStore:
    """The one reader and writer of ``<data_dir>/questions/<request_id>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def save(self, record: QuestionRecord) -> None:
        record.updated = time.time()
        with self._lock:
            write_json_atomic(self.root / f"{record.request_id}.json", record.to_dict())

    def get(self, request_id: str) -> QuestionRecord | None:
        if not REQUEST_ID.fullmatch(request_id):
            return None
        try:
            with (self.root / f"{request_id}.json").open(encoding="utf-8") as fh:
                return QuestionRecord.from_dict(json.load(fh))
        except FileNotFoundError:
            return None


class HttpApi:
    """The HTTP server plus the questions it started. See the module docstring."""

    def __init__(self, config: AppConfig, jobs: JobService, spool: Spool,
                 site: Site | None = None) -> None:
        """``jobs`` and ``spool`` are the node's: questions are pulled into its spool and run as
        its jobs. ``site`` serves the dashboard (``/ui/``) and ``/metrics``
        (dicom_node/app/dashboard/), with this API's token."""
        self.config = config
        data_dir = Path(config.node.data_dir).resolve()
        self.job_service = jobs
        self.jobs = jobs.store
        self.spool = spool
        self.questions = QuestionStore(data_dir / QUESTIONS_FOLDER)
        self.site = site
        self._token: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._asking: dict[str, threading.Thread] = {}
        self._asking_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        api = self.config.api
        if api.token_env:
            self._token = os.environ.get(api.token_env) or None
            if self._token is None:
                raise ApiSetupError(f"api.token_env names {api.token_env}, which is not set or empty")
        elif not is_loopback_host(api.host):
            raise ApiSetupError(f"api.host {api.host} is not a loopback address: set api.token_env (a bearer "
                                "token) before the API may listen there")
        try:
            self._server = _Server((api.host, api.port), _Handler, self)
        except OSError as exc:
            raise ApiSetupError(f"HTTP API cannot listen on {api.host}:{api.port}: "
                                f"{exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mmed-http-api", daemon=True)
        self._thread.start()
        log.info("HTTP API on http://%s:%d%s", api.host, self.port,
                 " (bearer token required)" if self._token else "")

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HTTP API not started")
        return int(self._server.server_address[1])

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> None:
        """Stop answering; wait briefly for questions in flight. One still running (a long pull
        or job) goes on in its daemon thread; its records on disk say where it got to."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        deadline = time.monotonic() + timeout
        with self._asking_lock:
            asking = list(self._asking.items())
        for request_id, thread in asking:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("question %s still running at API stop", request_id)

    # -- requests ----------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token.encode())

    def check(self, body: QuestionBody) -> str | None:
        """Why the config cannot serve this question (unknown PACS or destination), or None."""
        known = self.config.destinations
        if body.source not in known:
            return f"unknown PACS {body.source!r} (known: {', '.join(sorted(known)) or 'none'})"
        unknown = [n for n in body.send_to or [] if n not in known]
        if unknown:
            return f"unknown destination(s) in send_to: {', '.join(unknown)}"
        return None

    def ask(self, body: QuestionBody) -> QuestionRecord:
        """Record the question and start answering it in a background thread."""
        record = QuestionRecord(
            request_id=secrets.token_hex(16), state=RequestState.ACCEPTED, source=body.source,
            method=body.method, study_uid=body.study_uid, accession=body.accession,
            patient_id=body.patient_id, question=body.question, send_to=body.send_to,
        )
        self.questions.save(record)
        accepted = QuestionRecord.from_dict(record.to_dict())  # the thread goes on with `record`
        thread = threading.Thread(target=self._answer, args=(record, body),
                                  name=f"mmed-question-{record.request_id[:8]}", daemon=True)
        with self._asking_lock:
            self._asking = {k: t for k, t in self._asking.items() if t.is_alive()}
            self._asking[record.request_id] = thread
        # Accession numbers and patient IDs stay out of the log: the study UID, when given, only.
        log.info("question %s accepted: %s on %s, C-%s", record.request_id,
                 f"study {body.study_uid}" if body.study_uid else "study by accession/patient",
                 body.source, body.method.upper())
        thread.start()
        return accepted

    def wait(self, request_id: str, seconds: float) -> QuestionRecord | None:
        """The request's record once it finished, or after ``seconds``."""
        with self._asking_lock:
            thread = self._asking.get(request_id)
        if thread is not None:
            thread.join(seconds)
        return self.questions.get(request_id)

    def _answer(self, record: QuestionRecord, body: QuestionBody) -> None:
        from dicom_node.qr.retrieve import RetrieveError, RetrieveQuery, retrieve_and_process

        record.state = RequestState.RUNNING
        self.questions.save(record)
        query = RetrieveQuery(study_uid=body.study_uid, accession=body.accession,
                              patient_id=body.patient_id, series_description=body.series_description,
                              modality=body.modality)
        try:
            result = retrieve_and_process(
                self.config, body.source, query, method=body.method, instruction=body.question,
                send_to=body.send_to, wait_seconds=None,
                send_timeout=self.config.outbox.retry_window_seconds, jobs=self.job_service,
                spool=self.spool,
            )
        except RetrieveError as exc:
            record.errors.append(str(exc))
        except Exception as exc:  # the one place a bug in a question becomes its failed state
            log.exception("question %s failed", record.request_id)
            record.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            record.study_uids = sorted({s.study_uid for s in result.series})
            record.pulled = dict(result.pulled)
            record.jobs = [{"job_id": j.job_id, "series_uid": j.series_uid, "state": j.state.value,
                            "error": j.error} for j in result.jobs]
            record.skipped = list(result.skipped)
            record.errors = list(result.errors)
        ok = not record.errors and bool(record.jobs) and all(j["state"] == "done" for j in record.jobs)
        record.state = RequestState.DONE if ok else RequestState.FAILED
        self.questions.save(record)
        log.info("question %s %s: study %s, jobs %s", record.request_id, record.state.value,
                 ", ".join(record.study_uids) or "none",
                 ", ".join(f"{j['job_id']}={j['state']}" for j in record.jobs) or "none")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: HttpApi) -> None:
        self.api = api
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mmed-node"
    protocol_version = "HTTP/1.1"
    #: Socket timeout: an idle keep-alive connection does not hold its thread for ever.
    timeout = 60

    # -- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Paths hold job/request ids only; bodies (which may hold patient IDs) are never logged.
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, indent=2, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers)

    def _allowed(self) -> bool:
        if self.server.api.authorized(self.headers.get("Authorization")):
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return False

    def _path(self) -> list[str]:
        return [p for p in self.path.split("?", 1)[0].split("/") if p]

    # -- endpoints ---------------------------------------------------------------------------

    def _site(self, method: str) -> bool:
        """The dashboard's and the metrics' paths go to the site, which checks the token itself
        (a browser carries a session cookie instead of the header)."""
        site = self.server.api.site
        return site is not None and site.handle(self, method, self.server.api.authorized)

    def do_GET(self) -> None:
        if self._site("GET"):
            return
        if not self._allowed():
            return
        api, parts = self.server.api, self._path()
        if parts == ["health"]:
            self._send(HTTPStatus.OK, {"status": "ok", "ae_title": api.config.node.ae_title})
        elif parts == ["status"]:
            from dicom_node.app.commands.status import collect

            self._send(HTTPStatus.OK, collect(api.config))
        elif len(parts) == 2 and parts[0] == "jobs":
            if not JOB_ID.fullmatch(parts[1]):
                self._error(HTTPStatus.BAD_REQUEST, "a job id is lowercase hexadecimal")
                return
            record = api.jobs.get(parts[1])
            if record is None:
                self._error(HTTPStatus.NOT_FOUND, f"no job {parts[1]}")
            else:
                self._send(HTTPStatus.OK, record.to_dict())
        elif len(parts) == 2 and parts[0] == "questions":
            question = api.questions.get(parts[1])
            if question is None:
                self._error(HTTPStatus.NOT_FOUND, f"no question request {parts[1][:40]}")
            else:
                self._send(HTTPStatus.OK, question.to_dict())
        else:
            self._error(HTTPStatus.NOT_FOUND, "unknown path (GET /health, /status, /jobs/ID, /questions/ID)")

    def do_POST(self) -> None:
        if self._site("POST"):
            return
        if not self._allowed():
            return
        if self._path() != ["questions"]:
            self._error(HTTPStatus.NOT_FOUND, "unknown path (POST /questions)")
            return
        body = self._json_body()
        if body is None:
            return
        try:
            question = QuestionBody.model_validate(body)
        except ValidationError as exc:
            self._error(HTTPStatus.BAD_REQUEST, "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()))
            return
        api = self.server.api
        why = api.check(question)
        if why is not None:
            self._error(HTTPStatus.BAD_REQUEST, why)
            return
        record = api.ask(question)
        if question.wait:
            record = api.wait(record.request_id, question.wait) or record
        finished = record.state in (RequestState.DONE, RequestState.FAILED)
        self._send(HTTPStatus.OK if finished else HTTPStatus.ACCEPTED,
                   {**record.to_dict(), "status_url": f"/questions/{record.request_id}"},
                   {"Location": f"/questions/{record.request_id}"})

    def _json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None after answering 400/413."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None
        if length < 0:
            self._error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            self.close_connection = True
            return None
        if length > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            self.close_connection = True
            return None
        raw = self.rfile.read(length)
        if json_depth(raw) > MAX_JSON_DEPTH:
            self._error(HTTPStatus.BAD_REQUEST, f"body nests deeper than {MAX_JSON_DEPTH} levels")
            return None
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}")
            return None
        if not isinstance(data, dict):
            self._error(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            return None
        return data
