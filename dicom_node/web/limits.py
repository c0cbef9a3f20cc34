"""Limits on what one request may ask for: its body's size, and its integer query parameters.

`BodyLimit` (ASGI middleware) answers 413 to a declared `Content-Length` above `web.max_body_bytes`
without reading a byte of the body, and counts the bytes of a body as the app reads it (chunked
bodies declare nothing), so no handler ever holds more than the limit plus one chunk. The 413 says
`Connection: close`, so the server drops the connection instead of draining the rest.

`int_param` parses an integer query parameter strictly (ASCII digits, optional sign) within a
range; anything else is a `ParamError` whose message names the parameter, for a 400.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)

MAX_INT_DIGITS = 12
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


class ParamError(ValueError):
    """A query parameter out of range or not an integer; the message names it."""


def int_param(request: Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    shown = raw if len(raw) <= 2 * MAX_INT_DIGITS else raw[:2 * MAX_INT_DIGITS] + "…"
    if not _INT_RE.match(raw):
        raise ParamError(f"{name} must be an integer {lo}-{hi}, got {shown!r}")
    if len(raw.lstrip("+-")) > MAX_INT_DIGITS or not lo <= int(raw) <= hi:
        raise ParamError(f"{name} must be {lo}-{hi}, got {shown}")
    return int(raw)


class BodyTooLargeError(Exception):
    """Raised from `receive` once a body passes the limit; `BodyLimit` turns it into the 413."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, on_refused: Callable[[], None] = lambda: None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app, self.max_bytes, self._on_refused = app, max_bytes, on_refused
        self._log = RateLimitedLog(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, send, f"declared {declared[:20]!r}")
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watching_send)
        except BodyTooLargeError:
            if started:        # the handler answered before reading it all; the server closes the connection
                logger.warning("web: %s %r: body passed %d bytes after the response had started",
                               scope.get("method"), str(scope.get("path", ""))[:100], self.max_bytes)
                return
            await self._refuse(scope, send, f"more than {self.max_bytes} bytes streamed")

    async def _refuse(self, scope: Scope, send: Send, what: str) -> None:
        self._on_refused()
        client = scope.get("client")
        self._log.warning("body too large", "web: %s %r from %s refused with 413: body %s, "
                          "limit web.max_body_bytes = %d", scope.get("method"), str(scope.get("path", ""))[:100],
                          client[0] if client else "?", what, self.max_bytes)
        message = f"request body too large: at most {self.max_bytes} bytes (web.max_body_bytes)"
        if str(scope.get("path", "")).startswith("/api/"):
            body, content_type = json.dumps({"error": message}).encode(), b"application/json"
        else:
            body, content_type = message.encode(), b"text/plain; charset=utf-8"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
