"""OHIF Viewer's ready-built ``dist/`` served same-origin with a DICOMweb proxy to Orthanc.

A browser page may only read DICOMweb answers from its own origin (or from a server that sends
CORS headers, which Orthanc does not), so one loopback HTTP server does what a hospital's
reverse proxy does: ``/dicom-web/...`` goes to Orthanc's DICOMweb plugin, ``/app-config.js`` is
the configuration written here (a DICOMweb data source on ``/dicom-web``), every other path is
a file of ``dist/``, and unknown paths get ``index.html`` (OHIF routes in the browser).
Orthanc names bulk data (e.g. an Enhanced CT's palette LUTs) by absolute URLs on its own port;
the proxy rewrites them to its own origin, as a reverse proxy's URL rewriting would, else the
browser refuses them as cross-origin.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from tests.loopback_http import serve_loopback

DICOMWEB_PREFIX = "/dicom-web"
#: Request headers passed on to Orthanc (the DICOMweb content negotiation and byte ranges).
FORWARDED_HEADERS = ("Accept", "Range", "Content-Type")
#: Caching of OHIF's scripts (unchanged while the server runs) and of everything else.
STATIC_CACHE = "max-age=3600"
NO_CACHE = "no-store"
#: Answer headers passed back besides Content-Type (hop-by-hop ones such as Transfer-Encoding are not).
RETURNED_HEADERS = ("Content-Range", "Accept-Ranges")


def app_config(data_source_root: str = DICOMWEB_PREFIX) -> str:
    """OHIF's ``window.config``: one DICOMweb data source, no study list needed, no prompts.

    ``disableConfirmationPrompts`` makes the SEG and SR hydrate when they are opened, as a
    radiologist's click on "yes" would; the rest follows OHIF's documented DICOMweb options.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": data_source_root,
            "qidoRoot": data_source_root,
            "wadoRoot": data_source_root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": False,
        "strictZSpacingForVolumeViewport": True,
        "disableConfirmationPrompts": True,
        "measurementTrackingMode": "simplified",
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


def _handler(dist: Path, orthanc_port: int, config_js: bytes) -> type[BaseHTTPRequestHandler]:
    root = dist.resolve()
    index = root / "index.html"
    orthanc_origin = f"http://127.0.0.1:{orthanc_port}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path.startswith(DICOMWEB_PREFIX + "/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, config_js, "text/javascript")
            else:
                self._static(path)

        def _static(self, path: str) -> None:
            target = (root / path.lstrip("/")).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                target = index  # a client-side route such as /viewer
            kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            # dist/'s hashed bundles may be cached: each page of the browser then reuses the
            # scripts V8 compiled for the first (seconds of CPU per page in software rendering).
            cache = STATIC_CACHE if target.name.endswith(".js") and target != index else NO_CACHE
            self._send(200, target.read_bytes(), kind, {"Cache-Control": cache})

        def _proxy(self) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=60)
            try:
                headers = {k: v for k in FORWARDED_HEADERS if (v := self.headers.get(k))}
                conn.request("GET", self.path, headers=headers)
                rsp = conn.getresponse()
                body = rsp.read()
                kind = rsp.getheader("Content-Type", "application/octet-stream")
                if "json" in kind:
                    body = body.replace(orthanc_origin, f"http://{self.headers.get('Host', '')}".encode())
                extra = {k: v for k in RETURNED_HEADERS if (v := rsp.getheader(k))}
                self._send(rsp.status, body, kind, extra)
            finally:
                conn.close()

        def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            # Cross-origin isolation: OHIF uses SharedArrayBuffer for volumes when allowed.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            extra = {"Cache-Control": NO_CACHE, **(extra or {})}
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_ohif(dist: Path, orthanc_port: int) -> Iterator[str]:
    """Serve ``dist`` and the proxy on a free loopback port; yields the base URL."""
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF build in {dist} (run scripts/setup_viewers.sh)")
    with serve_loopback(_handler(dist, orthanc_port, app_config().encode()), name="ohif-http") as base:
        yield base
