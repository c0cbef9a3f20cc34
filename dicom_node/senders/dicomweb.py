"""DICOMweb destinations: STOW-RS (PS3.18 §10.5) to `{url}/studies`, `instances_per_request` per request.

HTTP goes through httpx: bounded connect/read/write timeouts, a streamed response whose size and
read time are capped here, TLS verified against the system CAs or `ca_file`, no proxy or netrc
taken from the environment. Every response is judged (stow.judge): connection errors, 408, 429
and 5xx are retried by the send stage with backoff (after a 429 or 503 nothing more is sent in that
attempt, and the next waits at least the response's Retry-After, up to send.retry_max_s); other 4xx
are kept as failed at once. Tokens
and passwords are never logged or shown (describe() names only the auth kind).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from dicom_node import __version__
from dicom_node.config import DicomwebDestinationSection
from dicom_node.encoding import encoded_bytes
from dicom_node.senders.base import CheckResult, SenderContext, SendReport
from dicom_node.senders.registry import sender_for
from dicom_node.senders.stow import (
    RESPONSE_MEDIA_TYPE,
    StowOutcome,
    StowResponse,
    StowResponseError,
    judge,
    multipart_body,
    parse_response,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

RESPONSE_BASE_BYTES = 64 * 1024          # a response may be this, plus per instance sent:
RESPONSE_PER_INSTANCE_BYTES = 16 * 1024  # Orthanc writes ~1 KiB per instance (indented, with URLs)
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    retry_after: str = ""          # the Retry-After header, as sent


class ResponseTooLargeError(httpx.HTTPError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")


class ResponseTooSlowError(httpx.HTTPError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"response body not read within {timeout_s:g} s")


def tls_context(dest: DicomwebDestinationSection) -> ssl.SSLContext:
    """Verification always on: the system CAs, or only those in `ca_file`."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _auth_headers(dest: DicomwebDestinationSection) -> dict[str, str]:
    return {"Authorization": f"Bearer {dest.token}"} if dest.token else {}


def _auth_kind(dest: DicomwebDestinationSection) -> str:
    return "bearer token" if dest.token else "basic auth" if dest.username else "no auth"


class DicomwebSender:
    kind = "dicomweb"

    def __init__(self, dest: DicomwebDestinationSection, ctx: SenderContext) -> None:
        self.dest, self.name, self._timeout_s = dest, dest.name, ctx.timeout_s
        if (dest.token or dest.username) and dest.url.startswith("http://") and not dest.is_loopback:
            logger.warning("%s: credentials go in clear over plain http:// to %s; use https://", dest.name,
                           dest.stow_url)

    def describe(self) -> str:
        return f"STOW-RS {self.dest.stow_url} ({_auth_kind(self.dest)})"

    def _client(self, timeout_s: float) -> httpx.Client:
        d = self.dest
        return httpx.Client(
            timeout=httpx.Timeout(timeout_s), verify=tls_context(d) if d.url.startswith("https://") else False,
            auth=httpx.BasicAuth(d.username, d.password) if d.username else None, trust_env=False,
            follow_redirects=False, headers={"User-Agent": f"dicom-synth-node/{__version__}", **_auth_headers(d)},
        )  # fmt: skip

    def _post(self, client: httpx.Client, body: bytes, content_type: str, limit: int, timeout_s: float) -> HttpAnswer:
        headers = {"Content-Type": content_type, "Accept": RESPONSE_MEDIA_TYPE}
        with client.stream("POST", self.dest.stow_url, content=body, headers=headers) as response:
            deadline = time.monotonic() + timeout_s
            received = bytearray()
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) > limit:
                    raise ResponseTooLargeError(limit)
                if time.monotonic() > deadline:
                    raise ResponseTooSlowError(timeout_s)
            return HttpAnswer(response.status_code, bytes(received), response.headers.get("Retry-After", ""))

    def _store(self, client: httpx.Client, files: Sequence[Path]) -> StowOutcome:
        sop_uids = [path.stem for path in files]         # derived files are named <SOPInstanceUID>.dcm
        body, content_type = multipart_body([encoded_bytes(path, self.dest.transfer_syntax) for path in files])
        limit = RESPONSE_BASE_BYTES + RESPONSE_PER_INSTANCE_BYTES * len(files)
        try:
            answer = self._post(client, body, content_type, limit, self._timeout_s)
        except httpx.HTTPError as exc:                  # refused, reset, timed out, TLS, too large or slow
            what = f"{type(exc).__name__}: {exc}"[:300]
            return StowOutcome((), tuple(sop_uids), "connection-failed", f"{self.dest.stow_url}: {what}",
                               retry=True, stop=True)
        parsed: StowResponse | None = None
        if answer.body.strip():
            try:
                parsed = parse_response(answer.body)
            except StowResponseError as exc:
                logger.warning("%s: HTTP %d with a body that is not a Store Instances Response (%s)",
                               self.name, answer.status, exc)
        return judge(answer.status, parsed, sop_uids, retry_after_seconds(answer.retry_after))

    def deliver(self, files: Sequence[Path], *, derived_series_uid: str) -> SendReport:
        size = self.dest.instances_per_request
        stored = 0
        failed: list[str] = []
        last: StowOutcome | None = None
        retry, wait_s = False, 0.0
        with self._client(self._timeout_s) as client:
            for start in range(0, len(files), size):
                batch = files[start:start + size]
                outcome = self._store(client, batch)
                for sop_uid, code in outcome.warnings:
                    logger.warning("%s stored %s with Warning Reason 0x%04X", self.name, sop_uid, code)
                stored += len(outcome.stored)
                if outcome.failed:
                    failed.extend(outcome.failed)
                    last, retry = outcome, retry or outcome.retry
                    wait_s = max(wait_s, outcome.retry_after_s)
                    logger.warning("%s: %s", self.name, outcome.error)
                if outcome.stop:
                    failed.extend(path.stem for path in files[start + size:])
                    break
        if last is None:
            return SendReport(self.name, len(files), stored, "ok", "")
        return SendReport(self.name, len(files), stored, last.status, last.error, tuple(failed), retry=retry,
                          retry_after_s=wait_s)

    def check(self) -> CheckResult:
        """An empty STOW-RS request (no instance in it): shows TLS, credentials and the URL, sends no data."""
        body, content_type = multipart_body([])
        where = f"STOW-RS {self.dest.stow_url}"
        try:
            with self._client(min(CHECK_TIMEOUT_S, self._timeout_s)) as client:
                answer = self._post(client, body, content_type, RESPONSE_BASE_BYTES, CHECK_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return CheckResult(False, f"{where}: failed ({type(exc).__name__}: {exc})"[:300])
        status = answer.status
        if 200 <= status < 300 or status in (400, 409):   # the STOW service answered (an empty request may be refused)
            return CheckResult(True, f"{where}: reachable (HTTP {status} to an empty request)")
        return CheckResult(False, f"{where}: failed (HTTP {status})")


@sender_for(DicomwebDestinationSection)
def _dicomweb(dest: DicomwebDestinationSection, ctx: SenderContext) -> DicomwebSender:
    return DicomwebSender(dest, ctx)
