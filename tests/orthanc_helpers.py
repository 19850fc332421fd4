"""A real Orthanc (Debian package, ``/usr/sbin/Orthanc``) on free loopback ports for tests.

The generated configuration keeps everything in a temporary folder, serves REST on 127.0.0.1
without authentication (RemoteAccessAllowed false), declares the node as a DICOM modality, and
installs a Lua auto-routing script: every stable series that is not a SEG or SR (the node's own
results coming back) is sent to the node, as a PACS administrator would set it up.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.served_node import stop_process
from tests.receive_helpers import free_port

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_AET = "ORTHANC"
#: Debian's orthanc-dicomweb plugin (QIDO-RS, WADO-RS, STOW-RS under /dicom-web/).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: OnStableSeries fires once a series got no new instance for StableAge seconds.
ROUTING_LUA = """
function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality']
  if modality ~= 'SEG' and modality ~= 'SR' then
    print('auto-routing series ' .. seriesId .. ' (' .. tostring(modality) .. ') to the node')
    -- One C-STORE association for the whole series (Lua's SendToModality takes instances).
    RestApiPost('/modalities/node/store', seriesId)
  end
end
"""


@dataclass
class Orthanc:
    proc: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: bytes, content_type: str = "application/dicom") -> Any:
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return json.loads(rsp.read())

    def upload(self, files: list[Path]) -> list[dict[str, Any]]:
        """POST /instances, one file at a time (Orthanc's REST upload)."""
        return [self.post("/instances", Path(f).read_bytes()) for f in files]

    def stop(self) -> None:
        stop_process(self.proc, grace=15, after_kill=5)


def orthanc_config(folder: Path, http_port: int, dicom_port: int, node_port: int,
                   node_aet: str = "MMEDNODE", auto_route: bool = True, stable_age: int = 1,
                   dicomweb: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lua = folder / "route.lua"
    lua.write_text(ROUTING_LUA)
    config = {
        "Name": "mmed-test-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "StableAge": stable_age,
        "LuaScripts": [str(lua)] if auto_route else [],
        "DicomModalities": {"node": [node_aet, "127.0.0.1", node_port]},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "DicomScuTimeout": 10,
    }
    if dicomweb:
        # Full metadata from the stored files: viewers need every attribute of a SEG/SR.
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                              "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(folder: Path, node_port: int, *, auto_route: bool = True, dicomweb: bool = False,
                  timeout: float = 30.0) -> Orthanc:
    """Start Orthanc with a generated config and wait until GET /system answers."""
    http_port, dicom_port = free_port(), free_port()
    config = orthanc_config(folder, http_port, dicom_port, node_port, auto_route=auto_route, dicomweb=dicomweb)
    log = folder / "orthanc.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(ORTHANC_BIN), "--verbose", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = Orthanc(proc, http_port, dicom_port, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if orthanc.get("/system").get("DicomAet") == ORTHANC_AET:
                return orthanc
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            orthanc.stop()
            raise RuntimeError(f"Orthanc did not answer within {timeout} s")
        time.sleep(0.1)
