"""Real peers and payloads for the routing/sender/outbox tests.

* :class:`StoreSCP`: dcmtk ``storescp`` as the PACS, on a loopback port, stopped by PID.
* :class:`HungPeer`: a TCP listener that never answers (a PACS that hangs mid-association).
* :func:`payload`: real DICOM files from pydicom's test data, copied into the test's folder.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from testkit.served_node import stop_process

#: dcmtk binaries; a pyenv shim named ``storescp`` (a Python app) shadows dcmtk's on PATH here.
DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool (checked to be dcmtk's, not a same-named Python script)."""
    path = DCMTK_BIN / tool
    if not path.exists():
        found = shutil.which(tool)
        if found is None:
            raise FileNotFoundError(f"dcmtk {tool} not installed (apt-get install dcmtk)")
        path = Path(found)
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class StoreSCP:
    """dcmtk storescp writing what it receives into ``out_dir``."""

    def __init__(self, out_dir: Path, port: int, ae_title: str = "PACS", extra: list[str] | None = None):
        self.out_dir = out_dir
        self.port = port
        self.ae_title = ae_title
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = out_dir.parent / f"storescp-{port}.log"

    def start(self, wait_ready: bool = True) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise
        cmd = [dcmtk("storescp"), "-od", str(self.out_dir), "-aet", self.ae_title, *self.extra,
               str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready and not wait_for(lambda: _listening(self.port), 10):
            self.stop()
            raise RuntimeError(f"storescp did not listen on {self.port}: {self.log_path.read_text()}")
        return self

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file, for everything stored so far."""
        out = {}
        for path in self.out_dir.iterdir():
            if path.is_file() and not path.name.startswith("."):
                out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
        return out

    def stop(self) -> None:
        stop_process(self.proc, grace=5, after_kill=5)
        self.proc = None


class HungPeer:
    """Accepts TCP connections and never answers: a PACS hung mid-association."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)  # connections complete in the backlog; nobody reads them

    def close(self) -> None:
        self.sock.close()


def payload(folder: Path, *names: str) -> list[Path]:
    """Copy pydicom test files (e.g. CT_small.dcm, liver.dcm) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        source = get_testdata_file(name)
        if source is None:
            raise FileNotFoundError(f"pydicom test file {name} missing (pip install pydicom-data)")
        target = folder / name
        shutil.copyfile(str(source), target)
        out.append(target)
    return out


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client certificate, all
    signed by that CA, plus a second, unrelated CA (for 'wrong certificate' cases). PEM files."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=mmed test {ca}")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for leaf in ("server", "client"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN=mmed test {leaf}")
        openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{leaf}.pem", "-days", "2", "-extfile", f"{leaf}.ext")
    names = ("ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    return {name: folder / name for name in names}


def results_by_source(pacs: StoreSCP, sources: set[str], whole: bool = False) -> dict[str, Counter[str]]:
    """Source Series UID -> Counter of result modalities, one count per file the PACS stored
    (a SEG names its source in ReferencedSeriesSequence, an SR in its evidence). ``whole``
    reads the pixel data too: every file must be a complete object."""
    out: dict[str, Counter[str]] = {}
    for path in pacs.out_dir.iterdir():
        ds = dcmread(path, stop_before_pixels=not whole)
        if ds.Modality == "SEG":
            referenced = {str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence}
        else:
            referenced = {str(s.SeriesInstanceUID)
                          for study in ds.CurrentRequestedProcedureEvidenceSequence
                          for s in study.ReferencedSeriesSequence}
        (source,) = referenced & sources
        out.setdefault(source, Counter())[str(ds.Modality)] += 1
    return out
