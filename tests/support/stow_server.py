"""A local STOW-RS server (stdlib http.server on a loopback port) whose answers a test chooses.

It parses every multipart/related request into datasets, keeps them, and answers with what
`answer(request_number, sop_uids)` returns: (HTTP status, DICOM JSON body or None). Helpers build
the Store Instances Responses a real server sends.
"""

from __future__ import annotations

import io
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

Answer = tuple[int, dict[str, Any] | None]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _ref(sop_uid: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [CT_IMAGE_STORAGE]},
                            "00081155": {"vr": "UI", "Value": [sop_uid]}}
    return {**item, **(extra or {})}


def store_response(stored: Sequence[str], failed: Sequence[str] = (), reason: int = 0x0110,
                   warning: int | None = None) -> dict[str, Any]:
    """A Store Instances Response: `stored` in the Referenced SOP Sequence, `failed` with a Failure Reason."""
    warn = {"00081196": {"vr": "US", "Value": [warning]}} if warning is not None else None
    body: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [_ref(uid, warn) for uid in stored]}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_ref(uid, {"00081197": {"vr": "US", "Value": [reason]}})
                                                  for uid in failed]}
    return body


def all_stored(_number: int, sop_uids: list[str]) -> Answer:
    return 200, store_response(sop_uids)


@dataclass
class StowServer:
    answer: Callable[[int, list[str]], Answer] = all_stored
    received: list[Dataset] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)    # headers of each POST
    times: list[float] = field(default_factory=list)                # time.monotonic() of each POST
    retry_after: str = ""                                           # sent as Retry-After with every non-2xx
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    scheme: str = "http"
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/dicom-web"

    def handle(self, headers: dict[str, str], body: bytes) -> Answer:
        match = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
        datasets = [] if match is None else _parts(body, match.group(1).encode())
        sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
        with self.lock:
            number = len(self.requests)
            self.requests.append(headers)
            self.times.append(time.monotonic())
        status, reply = self.answer(number, sop_uids)
        if 200 <= status < 300:
            stored = set(sop_uids) - {item["00081155"]["Value"][0]
                                      for item in (reply or {}).get("00081198", {}).get("Value", [])}
            with self.lock:
                self.received.extend(ds for ds in datasets if str(ds.SOPInstanceUID) in stored)
        return status, reply


def _parts(body: bytes, boundary: bytes) -> list[Dataset]:
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        out.append(dcmread(io.BytesIO(payload.removesuffix(b"\r\n"))))
    return out


@contextmanager
def running_stow_server(answer: Callable[[int, list[str]], Answer] = all_stored, *,
                        tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Iterator[StowServer]:
    """The server on a free loopback port; over HTTPS with `tls` (a server-side context)."""
    state = StowServer(answer, scheme="https" if tls else "http", host=host)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status, reply = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            data = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            if state.retry_after and not 200 <= status < 300:
                self.send_header("Retry-After", state.retry_after)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="stow-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
