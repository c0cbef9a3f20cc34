"""WebServer: uvicorn in a thread on port 0, started and stopped by the node."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.web.server import WebServer


def config(tmp_path: Path, port: int = 0) -> dict[str, object]:
    return {"node": {"port": 0, "storage_dir": str(tmp_path / "var")},
            "web": {"enabled": True, "port": port, "token": "t0ken"}}


def test_node_serves_the_dashboard_on_port_zero(tmp_path: Path) -> None:
    node = Node(parse_config(config(tmp_path)))
    node.start()
    try:
        server: WebServer = node.web
        port = server.port
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "alive"}
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert "Overview" in httpx.get(server.url, timeout=5).text
    finally:
        node.stop(drain_s=2.0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


def test_a_busy_port_fails_at_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        node = Node(parse_config(config(tmp_path, port=busy.getsockname()[1])))
        with pytest.raises(OSError):
            WebServer(node).start()
