"""Failed authentication: throttled per address, counted in metrics, logged without the guessed value.

`AuthGuard` joins the policy (`throttle.AuthThrottle`), the node's metrics and a rate-limited log.
`BearerGuard` is the ASGI middleware that applies it to every request carrying an `Authorization`
header: from a locked-out address it answers 429 with `Retry-After` at once, without reading the
credential, the body or touching the thread pool; otherwise it checks the token, records a failure
or a success, and passes the request on (the handler answers 401 to a wrong token as before). The
login form does the same in its handler (`pages.login_submit`), since its token is in the body.
Every decision runs on the event loop without an `await` between the check and the record, so
parallel guesses from one address are counted one by one.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_node.metrics import WEB_AUTH_KINDS
from dicom_node.ratelog import RateLimitedLog
from dicom_node.web.auth import Auth
from dicom_node.web.throttle import AuthThrottle, Verdict, address_key

if TYPE_CHECKING:
    from dicom_node.metrics import NodeMetrics

logger = logging.getLogger(__name__)


def client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


class AuthGuard:
    def __init__(self, throttle: AuthThrottle, metrics: NodeMetrics) -> None:
        self.throttle = throttle
        self._metrics = metrics
        self._log = RateLimitedLog(logger)
        metrics.web_locked_addresses.set_function(throttle.locked_count)

    def locked_for(self, host: str) -> float:
        """Seconds the caller's address is still locked out (0.0: its credentials are looked at)."""
        return self.throttle.retry_after(address_key(host))

    def refused(self, host: str, kind: str, locked_for_s: float) -> None:
        """A credential from a locked-out address, refused unread."""
        self._metrics.web_auth_refused.labels(_checked(kind)).inc()
        self._log.warning(f"{kind} refused", "web: %s from %s refused unread: locked out for another %s s",
                          kind, address_key(host), _seconds(locked_for_s))

    def failed(self, host: str, kind: str, what: str) -> Verdict:
        """Record a failure (`what` says what was wrong, never the value sent); may lock the address out."""
        key = address_key(host)
        verdict = self.throttle.failure(key)
        self._metrics.web_auth_failures.labels(_checked(kind)).inc()
        if verdict.locked_for_s > 0:
            self._metrics.web_lockouts.inc()
            self._log.warning("lockout", "web: failed %s from %s (%s): %d failures within %s s, "
                              "address locked out for %s s (lockout %d)", kind, key, what,
                              self.throttle.max_failures, _seconds(self.throttle.window_s),
                              _seconds(verdict.locked_for_s), verdict.lockouts)
        else:
            self._log.warning(f"{kind} failure", "web: failed %s from %s (%s): failure %d of %d within %s s",
                              kind, key, what, verdict.failures, self.throttle.max_failures,
                              _seconds(self.throttle.window_s))
        return verdict

    def succeeded(self, host: str) -> None:
        self.throttle.success(address_key(host))


def _checked(kind: str) -> str:
    if kind not in WEB_AUTH_KINDS:
        raise ValueError(f"kind must be one of {WEB_AUTH_KINDS}, got {kind!r}")
    return kind


class BearerGuard:
    """Throttle `Authorization` headers per address (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, guard: AuthGuard, auth: Auth) -> None:
        self.app, self._guard, self._auth = app, guard, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        if not header:                # no credential (an empty header is none either): nothing to throttle
            await self.app(scope, receive, send)
            return
        host = client_host(scope)
        locked_for = self._guard.locked_for(host)
        if locked_for > 0:
            self._guard.refused(host, "bearer", locked_for)
            wait = retry_after_header(locked_for)
            response = JSONResponse(
                {"error": f"too many failed authentication attempts from this address: try again in {wait} s"},
                status_code=429, headers={"Retry-After": wait})
            await response(scope, receive, send)
            return
        problem = self._auth.bearer_problem(header)
        if problem is None:
            self._guard.succeeded(host)
        else:
            self._guard.failed(host, "bearer", problem)
        await self.app(scope, receive, send)
