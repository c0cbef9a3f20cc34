"""Serve the dashboard with uvicorn in a background thread, on `web.host`:`web.port`.

The socket is bound in `start()` (so a busy port fails at start-up, and port 0 gives a free one,
exposed as `.port`), then handed to uvicorn. uvicorn's own logging config is not applied: the node's
handlers (set in `cli.py`) stay in charge, and the access log is off.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from dicom_node.web.app import build_app
from dicom_node.web.context import WebContext

if TYPE_CHECKING:
    from dicom_node.operations import Operations

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, ops: Operations) -> None:
        self._cfg = ops.cfg.web
        self.app = build_app(ops)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the web server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self._cfg.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        try:
            self._socket = _bind(self._cfg.host, self._cfg.port)
        except OSError:
            self._context().close()
            raise
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_keep_alive=5, timeout_graceful_shutdown=2, server_header=False)
        server = uvicorn.Server(config)
        self._server = server
        sock = self._socket
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web server did not start on {self._cfg.host}:{self._cfg.port}")
            time.sleep(0.01)
        logger.info("dashboard on %s (actions %s, public read %s)", self.url,
                    "enabled" if self._cfg.token else "disabled (no web.token)",
                    "on" if self._cfg.public_read else "off")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("the web server did not stop within %.0f s", STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._context().close()
        self._server = self._thread = None

    def _context(self) -> WebContext:
        ctx: WebContext = self.app.state.ctx
        return ctx
