"""A real HTTP server on a free loopback port for tests (the standard library's threading server),
shared by every test that serves files or proxies: the model mirror, OHIF's dist/."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JOIN_TIMEOUT_S = 10


@contextmanager
def serve_loopback(handler: Callable[..., BaseHTTPRequestHandler], name: str = "test-http") -> Iterator[str]:
    """Serve ``handler`` (a request handler class, or a partial of one) on 127.0.0.1 at a free
    port in a daemon thread; yields the base URL; shuts the server down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(JOIN_TIMEOUT_S)


def quiet(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """``handler`` without its per-request log lines on stderr."""

    class Quiet(handler):  # type: ignore[valid-type,misc]
        def log_message(self, format: str, *args: Any) -> None:
            return

    return Quiet
