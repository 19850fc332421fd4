"""A browser's view of the node's dashboard for the tests: a cookie jar, a login with the API
token, the CSRF token of the page last read, and forms posted as a browser posts them; and a
scrape of ``/metrics`` read with prometheus_client's own parser."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Browser:
    """Requests to ``http://127.0.0.1:<port>`` with cookies kept between them; redirects are
    returned, not followed (the tests look at them)."""

    port: int
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)
    csrf: str | None = None

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={**({"Content-Type": "application/x-www-form-urlencoded"} if data else {}),
                     **(headers or {})})
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                             _NoRedirect())
        try:
            with opener.open(request, timeout=60) as rsp:
                answer = Answer(rsp.status, rsp.read(), dict(rsp.headers))
        except urllib.error.HTTPError as exc:
            answer = Answer(exc.code, exc.read(), dict(exc.headers))
        found = CSRF.search(answer.body.decode("utf-8", "replace"))
        if found:
            self.csrf = found.group(1)
        return answer

    def get(self, path: str, **headers: str) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, csrf: str | None = None, **fields: str) -> Answer:
        """POST a form carrying the session's CSRF token (or ``csrf`` when given)."""
        token = csrf if csrf is not None else self.csrf
        return self.request("POST", path, {**({"csrf": token} if token else {}), **fields})

    def login(self, token: str) -> Answer:
        answer = self.request("POST", "/ui/login", {"token": token})
        if answer.status == 303:
            self.get("/ui/")  # the overview holds the session's CSRF token
        return answer

    def session_cookie(self) -> str | None:
        return next((c.value for c in self.jar if c.name == "mmed_session"), None)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(text: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus_client's parser: (name, labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(scrape: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the scrape has none)."""
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)
