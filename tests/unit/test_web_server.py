"""WebServer: uvicorn in a thread on port 0, started and stopped by the node."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.web.server import WebServer
from tests.support import TEST_RESERVE_MB


def config(tmp_path: Path, port: int = 0) -> dict[str, object]:
    return {"node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
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
            WebServer(node.operations).start()


def test_health_answers_while_the_thread_pool_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 requests stuck in a sync handler fill Starlette's 40-thread pool; /healthz and /readyz still answer."""
    node = Node(parse_config(config(tmp_path)))
    node.start()
    release = threading.Event()
    stuck: list[socket.socket] = []
    try:
        server: WebServer = node.web
        ctx = server.app.state.ctx
        real_overview = ctx.overview
        inside: list[int] = []

        def blocked_overview() -> object:
            inside.append(threading.get_ident())       # list.append is atomic
            release.wait(60)
            return real_overview()

        monkeypatch.setattr(ctx, "overview", blocked_overview)
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /api/overview HTTP/1.1\r\nHost: node\r\n\r\n")
            stuck.append(sock)
        deadline = time.monotonic() + 10
        while len(inside) < 40:           # the pool's 40 threads (AnyIO's default) all stuck
            assert time.monotonic() < deadline, f"only {len(inside)} requests reached the handler"
            time.sleep(0.02)
        for path, status in (("/healthz", 200), ("/readyz", 200)):
            started = time.monotonic()
            assert httpx.get(f"{server.url}{path}", timeout=5).status_code == status
            assert time.monotonic() - started < 1.0, path

        checking = threading.Event()

        def hung_readiness(*_args: object) -> list[object]:
            checking.set()
            release.wait(60)
            return []

        monkeypatch.setattr(node.operations, "readiness", hung_readiness)
        ctx.readiness.timeout_s = 0.5
        started = time.monotonic()
        hung = httpx.get(f"{server.url}/readyz", timeout=5)
        assert hung.status_code == 503 and time.monotonic() - started < 2.0
        assert hung.json()["reasons"] == ["the readiness checks did not finish within 0.5 s "
                                          "(database or disk not answering)"]
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503      # shares the hung run
        assert checking.is_set()
    finally:
        release.set()
        for sock in stuck:
            sock.close()
        node.stop(drain_s=2.0)

