"""Suite-wide guard: tests start real DICOM peers (dcmtk storescp, Orthanc) that listen on every
interface, so they must run inside the private loopback-only network namespace that
``scripts/test.sh`` creates."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Test helper modules import as ``tests.x``, the synthetic inputs shared with bench/ as ``testkit.x``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("MMED_IN_NETNS") != "1" and os.environ.get("MMED_ALLOW_HOST_NETWORK") != "1":
        raise pytest.UsageError(
            "run the tests with scripts/test.sh (a private loopback-only network namespace); "
            "set MMED_ALLOW_HOST_NETWORK=1 to run them on the host network anyway"
        )


@pytest.fixture
def served() -> Iterator[list[Any]]:
    """Nodes started with ``testkit.served_node.ServedNode`` by a test; stopped after it."""
    nodes: list[Any] = []
    yield nodes
    for node in nodes:
        node.stop()


# The study the viewer tests share (built once per session by `mmed-node tools run`).
from tests.viewers.study import viewer_study  # noqa: F401
