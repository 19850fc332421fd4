"""docker/ cannot be built here (no Docker engine): parse compose.yaml and the node config it
mounts, and check them against each other and against the services table docs/scaling.md
promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from config.loader import load_config
from tests.receive_helpers import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
DOC = PROJECT_ROOT / "docs" / "scaling.md"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def documented_services() -> dict[str, dict[str, list[str]]]:
    text = DOC.read_text()
    table = re.search(r"<!-- services-table.*?-->\n(.*?)<!-- end services-table -->", text, re.DOTALL)
    assert table, "docs/scaling.md lost its services table"
    rows: dict[str, dict[str, list[str]]] = {}
    for line in table.group(1).strip().splitlines()[2:]:
        name, ports, volumes = (cell.strip() for cell in line.strip().strip("|").split("|"))
        split = lambda cell: [] if cell == "-" else [c.strip() for c in cell.split(",")]
        rows[name] = {"ports": split(ports), "volumes": split(volumes)}
    return rows


def test_compose_matches_the_documented_services(compose: dict[str, Any]) -> None:
    documented = documented_services()
    services = compose["services"]
    assert set(services) == set(documented) == {"redis", "orthanc", "node", "worker-gpu"}
    for name, promised in documented.items():
        assert [str(p) for p in services[name].get("ports", [])] == promised["ports"], name
        assert services[name].get("volumes", []) == promised["volumes"], name
    named = {v.split(":")[0] for s in documented.values() for v in s["volumes"] if not v.startswith(".")}
    assert named == set(compose["volumes"])


def test_gpu_worker_reserves_a_gpu_and_reads_models(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["command"][:2] == ["mmed-node", "worker"]
    assert "./models:/models:ro" in worker["volumes"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert compose["services"]["node"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_mounted_config_fits_the_compose_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    node_service = services["node"]
    mount = next(v for v in node_service["volumes"] if v.endswith(":ro") and "config" in v)
    source, target, _ = mount.split(":")
    config = load_config(DOCKER / source)  # validates with the real schema
    assert target in node_service["command"]
    broker = urlparse(config.queue.broker_url or "")
    assert broker.scheme == "redis" and broker.hostname in services
    # The data dir is the shared volume, at the same path in the node and the worker.
    data = str(config.node.data_dir)
    for name in ("node", "worker-gpu"):
        assert f"mmed-data:{data}" in services[name]["volumes"], name
    assert f"{config.node.port}:{config.node.port}" in node_service["ports"]
    pacs = config.destinations["pacs"]
    assert pacs.host == "orthanc" and f"{pacs.port}:{pacs.port}" in services["orthanc"]["ports"]
    assert pacs.ae_title == services["orthanc"]["environment"]["ORTHANC__DICOM_AET"]
    assert config.node.ae_title in services["orthanc"]["environment"]["ORTHANC__DICOM_MODALITIES"]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_install_torch_and_torchvision_together(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert re.search(r"pip install [^\n]*\btorch torchvision\b", text)
    assert "pip install ." in text and "USER mmed" in text
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base
    if name == "Dockerfile":
        assert base.group(1) == "python:3.11-slim-bookworm"
    else:
        assert base.group(1).startswith("nvidia/cuda:") and "ubuntu24.04" in base.group(1)
        assert re.search(r'CMD \["mmed-node", "worker".*"--queues", "gpu"\]', text)


def test_readme_points_to_scaling_doc() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "## Scaling out" in readme and "docs/scaling.md" in readme
    assert Path(DOC).is_file()
