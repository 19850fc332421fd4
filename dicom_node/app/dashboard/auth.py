"""Who may see the dashboard and act on it: the API's bearer token, or a browser session set
from it.

* A request with ``Authorization: Bearer <token>`` (Prometheus, scripts) is let in as the API
  lets it in.
* A browser logs in once at ``/ui/login`` with the token; the node answers with a session cookie
  (random, ``HttpOnly``, ``SameSite=Strict``, path ``/``) that stands for the token for
  :data:`SESSION_SECONDS` since its last use. Sessions live in the node's memory (a restart logs
  everyone out); at most :data:`MAX_SESSIONS`, the least recently used going first.
* Without ``api.token_env`` the API is open and listens on loopback only: a browser gets a
  session without a login, but only when the request names a loopback host (``Host``), so a page
  on another site that resolves its own name to 127.0.0.1 (DNS rebinding) cannot read the
  dashboard.
* Every action is a POST that must carry the session's CSRF token (a hidden form field the
  node's own pages hold) and, when the browser says where it comes from (``Origin``), come from
  the dashboard's own origin. A bearer request needs no CSRF token: a browser never adds that
  header by itself.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

SESSION_COOKIE = "mmed_session"
SESSION_SECONDS = 8 * 3600.0
MAX_SESSIONS = 256


@dataclass
class Session:
    csrf: str
    expires: float


class Sessions:
    """Browser sessions of one node (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), self._clock() + SESSION_SECONDS)
        with self._lock:
            self._by_id[session_id] = session
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for this id (its lifetime renewed), or None."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if session.expires < now:
                del self._by_id[session_id]
                return None
            session.expires = now + SESSION_SECONDS
            self._by_id.move_to_end(session_id)
            return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)


def session_id(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        cookies = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


def set_cookie(session: str, max_age: int = int(SESSION_SECONDS)) -> str:
    """The ``Set-Cookie`` value for a session id (empty with ``max_age`` 0: logs out)."""
    return (f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; "
            f"Max-Age={max_age}")


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())


def host_name(host_header: str | None) -> str:
    """The host part of a ``Host`` header (``[::1]:8089`` -> ``[::1]``)."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """Whether a browser's ``Origin`` names this server (an absent Origin passes: the CSRF token
    still has to match)."""
    if origin is None:
        return True
    parts = urllib.parse.urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == (
        host_header or "").strip().lower()
