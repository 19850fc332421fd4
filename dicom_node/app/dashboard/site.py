"""The dashboard and ``/metrics`` inside the node's HTTP API (http_api.py hands them the paths
below; who may use them: auth.py).

    GET  /metrics                         Prometheus text format (bearer token or session)
    GET  /ui/login, POST /ui/login        log in with the API token -> session cookie
    POST /ui/logout
    GET  /ui/                             overview: jobs with their stages, deliveries, series, disk
    GET  /ui/fragment/jobs                the overview's job rows (the page refreshes them)
    GET  /ui/jobs/<job_id>                one job: stages, previews, answer, agent turns, SR, deliveries
    GET  /ui/jobs/<job_id>/preview/<n>.png
    POST /ui/jobs/<job_id>/retry          run a failed job again (JobService.retry)
    POST /ui/deliveries/<id>/retry        Outbox.retry (a failed delivery)
    POST /ui/deliveries/<id>/resend       Outbox.resend (a done or failed delivery, every file)
    GET  /ui/static/{dashboard.js,dashboard.css,favicon.svg}

URLs hold job and delivery ids only (never patient data); filters apply in the browser.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from config.schema import AppConfig
from dicom_node.app.dashboard import auth, pages, views
from dicom_node.app.dashboard.preview import PreviewError, preview_file
from dicom_node.app.metrics import CONTENT_TYPE, NodeMetrics
from dicom_node.deliver.outbox import Outbox
from dicom_node.jobs.service import JobNotRetryable, JobService
from dicom_node.jobs.store import JobRecord
from image_model.deidentify import is_loopback_host

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9a-f]{1,64}")
DELIVERY_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
PREVIEW = re.compile(r"(\d{1,2})\.png")
#: Largest form body read (a token or a CSRF field).
MAX_FORM_BYTES = 8 * 1024
STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {"dashboard.js": "text/javascript; charset=utf-8",
                "dashboard.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": with it a browser sends "Origin: null" on the pages' own form posts,
    # which the origin check then refuses. Same-origin only: a URL never leaves the dashboard.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Authorized = Callable[[str | None], bool]


class Site:
    def __init__(self, config: AppConfig, jobs: JobService, outbox: object,
                 metrics: NodeMetrics) -> None:
        """``outbox`` is the node's (retry/resend act on it when it is an :class:`Outbox`)."""
        self.config = config
        self.jobs = jobs
        self.outbox = outbox if isinstance(outbox, Outbox) else None
        self.metrics = metrics
        self.sessions = auth.Sessions()

    # -- entry ---------------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler, method: str, authorized: Authorized) -> bool:
        """Answer the request if its path is the site's; False otherwise (the API answers)."""
        path = urllib.parse.urlsplit(request.path).path
        parts = [p for p in path.split("/") if p]
        if parts == ["metrics"]:
            if method != "GET":
                return False
            if self._bearer(request, authorized) or self._session(request):
                self._send(request, HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE)
            else:
                self._send(request, HTTPStatus.UNAUTHORIZED, b"bearer token required\n",
                           "text/plain", {"WWW-Authenticate": "Bearer"})
            return True
        if not parts or parts[0] != "ui":
            return False
        if method == "POST":
            # Some answers come before the form is read: never read its bytes as a next request.
            request.close_connection = True
        if not auth.same_origin(request.headers.get("Origin"), request.headers.get("Host")):
            self._text(request, HTTPStatus.FORBIDDEN, "cross-origin request refused")
            return True
        host = auth.host_name(request.headers.get("Host"))
        if authorized(None) and not (is_loopback_host(host) or host == self.config.api.host.lower()):
            # No token: the API is loopback-only; a foreign Host is DNS rebinding.
            self._text(request, HTTPStatus.FORBIDDEN, "unknown host")
            return True
        rest = parts[1:]
        if len(rest) == 2 and rest[0] == "static" and method == "GET":
            self._static(request, rest[1])
        elif rest == ["login"]:
            self._login(request, method, authorized)
        elif method == "GET":
            self._get(request, rest, authorized)
        elif method == "POST":
            self._post(request, rest, authorized)
        else:
            self._text(request, HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        return True

    # -- authentication ------------------------------------------------------------------------

    @staticmethod
    def _bearer(request: BaseHTTPRequestHandler, authorized: Authorized) -> bool:
        header = request.headers.get("Authorization")
        return header is not None and authorized(header)

    def _session(self, request: BaseHTTPRequestHandler) -> auth.Session | None:
        return self.sessions.get(auth.session_id(request.headers.get("Cookie")))

    def _login(self, request: BaseHTTPRequestHandler, method: str, authorized: Authorized) -> None:
        if method == "GET":
            if authorized(None):  # no token configured: a session without one
                self._start_session(request)
            else:
                self._html(request, HTTPStatus.OK, pages.login_page())
            return
        if method != "POST":
            self._text(request, HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
            return
        form = self._form(request)
        token = (form or {}).get("token", "")
        if form is None or not token or not authorized(f"Bearer {token}"):
            log.warning("dashboard: failed login from %s", request.client_address[0])
            self._html(request, HTTPStatus.UNAUTHORIZED, pages.login_page("wrong token"))
            return
        self._start_session(request)

    def _start_session(self, request: BaseHTTPRequestHandler) -> None:
        session_id, _ = self.sessions.create()
        self._redirect(request, "/ui/", {"Set-Cookie": auth.set_cookie(session_id)})

    # -- pages ---------------------------------------------------------------------------------

    def _get(self, request: BaseHTTPRequestHandler, rest: list[str], authorized: Authorized) -> None:
        session = self._session(request)
        if session is None:
            if self._bearer(request, authorized) and rest == ["fragment", "jobs"]:
                session = auth.Session("", 0.0)  # a script reading rows: no forms on them
            else:
                self._redirect(request, "/ui/login")
                return
        if rest == []:
            self._html(request, HTTPStatus.OK,
                       pages.overview_page(views.overview(self.config), session.csrf))
        elif rest == ["fragment", "jobs"]:
            self._html(request, HTTPStatus.OK,
                       pages.job_rows(views.live_jobs(self.jobs.store, self.outbox)))
        elif len(rest) >= 2 and rest[0] == "jobs":
            record = self._record(request, rest[1])
            if record is None:
                return
            if len(rest) == 2:
                view = views.job_view(record, self.outbox)
                self._html(request, HTTPStatus.OK, pages.job_page(view, session.csrf))
            elif len(rest) == 4 and rest[2] == "preview" and PREVIEW.fullmatch(rest[3]):
                self._preview(request, record, int(rest[3].split(".")[0]))
            else:
                self._text(request, HTTPStatus.NOT_FOUND, "not found")
        else:
            self._text(request, HTTPStatus.NOT_FOUND, "not found")

    def _record(self, request: BaseHTTPRequestHandler, job_id: str) -> JobRecord | None:
        record = self.jobs.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if record is None:
            self._text(request, HTTPStatus.NOT_FOUND, "no such job")
        return record

    def _preview(self, request: BaseHTTPRequestHandler, record: JobRecord, number: int) -> None:
        try:
            path = preview_file(record, number)
        except PreviewError as exc:
            self._text(request, HTTPStatus.NOT_FOUND, str(exc))
            return
        if path is None or not path.is_file():
            self._text(request, HTTPStatus.NOT_FOUND, "no such preview")
            return
        self._send(request, HTTPStatus.OK, path.read_bytes(), "image/png")

    def _static(self, request: BaseHTTPRequestHandler, name: str) -> None:
        kind = STATIC_TYPES.get(name)
        if kind is None:
            self._text(request, HTTPStatus.NOT_FOUND, "not found")
            return
        self._send(request, HTTPStatus.OK, (STATIC / name).read_bytes(), kind)

    # -- actions -------------------------------------------------------------------------------

    def _post(self, request: BaseHTTPRequestHandler, rest: list[str], authorized: Authorized) -> None:
        session = self._session(request)
        form = self._form(request)
        if form is None:
            return
        if session is None or not auth.csrf_ok(session, form.get("csrf")):
            self._text(request, HTTPStatus.FORBIDDEN, "session or CSRF token missing or wrong")
            return
        if rest == ["logout"]:
            self.sessions.drop(auth.session_id(request.headers.get("Cookie")))
            self._redirect(request, "/ui/login", {"Set-Cookie": auth.set_cookie("", 0)})
        elif len(rest) == 3 and rest[0] == "jobs" and rest[2] == "retry":
            record = self._record(request, rest[1])
            if record is None:
                return
            try:
                self.jobs.retry(record.job_id)
            except JobNotRetryable as exc:
                self._text(request, HTTPStatus.CONFLICT, str(exc))
                return
            log.info("dashboard: job %s retried by an operator", record.job_id)
            self._redirect(request, f"/ui/jobs/{record.job_id}")
        elif (len(rest) == 3 and rest[0] == "deliveries" and rest[2] in ("retry", "resend")
              and DELIVERY_ID.fullmatch(rest[1])):
            self._delivery(request, rest[1], rest[2])
        else:
            self._text(request, HTTPStatus.NOT_FOUND, "not found")

    def _delivery(self, request: BaseHTTPRequestHandler, delivery_id: str, action: str) -> None:
        if self.outbox is None:
            self._text(request, HTTPStatus.CONFLICT, "this node has no outbox")
            return
        try:
            delivery = (self.outbox.retry if action == "retry" else self.outbox.resend)(delivery_id)
        except ValueError as exc:
            self._text(request, HTTPStatus.CONFLICT, str(exc))
            return
        log.info("dashboard: delivery %s %s by an operator", delivery_id,
                 "retried" if action == "retry" else "sent again")
        self._redirect(request, f"/ui/jobs/{delivery.job_id}")

    # -- plumbing ------------------------------------------------------------------------------

    def _form(self, request: BaseHTTPRequestHandler) -> dict[str, str] | None:
        """The url-encoded form of a POST (first value per field), or None after answering."""
        try:
            length = int(request.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            request.close_connection = True
            self._text(request, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
            return None
        body = request.rfile.read(length).decode("utf-8", "replace")
        try:
            fields = urllib.parse.parse_qs(body, max_num_fields=16)
        except ValueError:
            self._text(request, HTTPStatus.BAD_REQUEST, "too many form fields")
            return None
        return {k: v[0] for k, v in fields.items()}

    def _html(self, request: BaseHTTPRequestHandler, status: HTTPStatus, text: str) -> None:
        self._send(request, status, text.encode("utf-8"), "text/html; charset=utf-8")

    def _text(self, request: BaseHTTPRequestHandler, status: HTTPStatus, text: str) -> None:
        self._send(request, status, (text + "\n").encode("utf-8"), "text/plain; charset=utf-8")

    def _redirect(self, request: BaseHTTPRequestHandler, location: str,
                  headers: dict[str, str] | None = None) -> None:
        self._send(request, HTTPStatus.SEE_OTHER, b"", "text/plain",
                   {"Location": location, **(headers or {})})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: HTTPStatus, body: bytes, kind: str,
              headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)
