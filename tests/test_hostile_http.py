"""Issue 11, the HTTP API: no token on a network address, and a body nested 60000 deep."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path

import yaml

from testkit.served_node import ServedNode, mmed_node
from tests.receive_helpers import PROJECT_ROOT, free_port


def test_api_without_token_refuses_a_network_address(tmp_path: Path) -> None:
    """Row 12: ``api.host: 0.0.0.0`` without ``api.token_env``: the node does not start."""
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"port": free_port(), "data_dir": str(tmp_path / "var")},
        "api": {"enabled": True, "host": "0.0.0.0", "port": free_port()},
    }))
    proc = subprocess.run([*mmed_node(), "serve", "--config", str(config)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "api.host 0.0.0.0 is not a loopback address" in proc.stdout + proc.stderr


def test_deeply_nested_body_is_a_bad_request(tmp_path: Path) -> None:
    """Row 13: a body of 60000 ``[``: a 400 answer, and the API keeps serving."""
    api_port = free_port()
    node = ServedNode(tmp_path, {"api": {"enabled": True, "host": "127.0.0.1", "port": api_port}})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        conn.request("POST", "/questions", body=b"[" * 60000, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 400 and "nests deeper than" in answer["error"]
        conn.request("GET", "/health")
        health = conn.getresponse()
        assert health.status == 200 and json.loads(health.read())["status"] == "ok"
        conn.close()
        assert "RecursionError" not in node.log_text() and "Traceback" not in node.log_text()
        node.assert_alive()
    finally:
        node.stop()
