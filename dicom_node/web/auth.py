"""Who is asking: `Authorization: Bearer <web.token>` or a session cookie issued after entering it.

Sessions are HMAC-signed with a key made when the server starts (a restart logs everyone out) and
expire after `SESSION_MAX_AGE_S`. The cookie is HttpOnly and SameSite=Strict; a form that acts also
carries a per-session CSRF value, and a cookie-authenticated API call must send it as `X-CSRF-Token`.
With `web.token` empty nobody logs in and no action is possible.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from dicom_node.config import WebSection

SESSION_COOKIE = "dicom_node_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SESSION_MAX_AGE_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class Identity:
    logged_in: bool
    via: str                  # "bearer", "session" or "" (anonymous)
    session_id: str = ""      # the session's nonce (for CSRF and logout)
    bad_credentials: bool = False   # a bearer token was given and is wrong


ANONYMOUS = Identity(logged_in=False, via="")


class Auth:
    def __init__(self, cfg: WebSection, clock: Callable[[], float] = time.time) -> None:
        self._token = cfg.token
        self.public_read = cfg.public_read
        self.show_patient_data = cfg.show_patient_data
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def actions_enabled(self) -> bool:
        return bool(self._token)

    def token_valid(self, candidate: str) -> bool:
        return bool(self._token) and hmac.compare_digest(candidate.encode(), self._token.encode())

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue_session(self) -> str:
        payload = f"{int(self._clock())}.{secrets.token_hex(12)}"
        return f"{payload}.{self._sign(payload)}"

    def _session_id(self, cookie: str) -> str | None:
        issued, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not (issued.isdigit() and nonce and signature):
            return None
        if not hmac.compare_digest(signature, self._sign(f"{issued}.{nonce}")):
            return None
        if self._clock() - int(issued) > SESSION_MAX_AGE_S:
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        return nonce

    def revoke(self, identity: Identity) -> None:
        if identity.session_id:
            with self._lock:
                self._revoked.add(identity.session_id)

    def csrf_token(self, identity: Identity) -> str:
        return self._sign(f"csrf.{identity.session_id}") if identity.session_id else ""

    def csrf_valid(self, identity: Identity, value: str) -> bool:
        """Bearer callers need none (no ambient credentials); session callers must echo theirs."""
        if identity.via == "bearer":
            return True
        expected = self.csrf_token(identity)
        return bool(expected) and hmac.compare_digest(value.encode(), expected.encode())

    def bearer_problem(self, header: str) -> str | None:
        """None when an `Authorization` header carries the right token, else what is wrong (never the value)."""
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return "an Authorization header that is not Bearer"
        if not self._token:
            return "a bearer token while web.token is empty"
        if not credentials.strip():
            return "an empty bearer token"
        return None if self.token_valid(credentials.strip()) else "a wrong bearer token"

    def identify(self, request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        if header:                    # an empty header is no credential
            if self.bearer_problem(header) is None:
                return Identity(logged_in=True, via="bearer")
            return Identity(logged_in=False, via="", bad_credentials=True)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie and self._token:
            session_id = self._session_id(cookie)
            if session_id is not None:
                return Identity(logged_in=True, via="session", session_id=session_id)
        return ANONYMOUS

    def can_read(self, identity: Identity) -> bool:
        return identity.logged_in or (self.public_read and not identity.bad_credentials)

    def patient_data_visible(self, identity: Identity) -> bool:
        return self.show_patient_data and identity.logged_in
