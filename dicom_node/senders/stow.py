"""STOW-RS without the network: the multipart/related request body, and what a response says (PS3.18 §10.5).

The response is a DICOM JSON Store Instances Response: Failed SOP Sequence (0008,1198) with a
Failure Reason (0008,1197) per instance, Referenced SOP Sequence (0008,1199) with an optional
Warning Reason (0008,1196), Other Failures Sequence (0008,119A). HTTP 200 means all stored, 202
some stored with warnings or failures, 409 none stored (a conflict). `judge` turns status and body
into a per-request outcome; the sender adds them up. A 429 or 503 says the server is busy: the sender
sends nothing more this attempt, and waits at least its Retry-After (RFC 9110 §10.2.3, seconds or an
HTTP date), up to the configured maximum backoff, before the next.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

MEDIA_TYPE = "application/dicom"
RESPONSE_MEDIA_TYPE = "application/dicom+json"

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

RETRY_STATUSES = frozenset({408, 429})                          # and every 5xx: the server may recover
STOP_STATUSES = frozenset({401, 403, 404, 405, 406, 411, 413, 414, 415})  # the request itself is refused
BUSY_STATUSES = frozenset({429, 503})                          # back off: send nothing more this attempt


class StowResponseError(ValueError):
    """A response body that is not a DICOM JSON Store Instances Response."""


@dataclass(frozen=True, slots=True)
class StowResponse:
    """What the body says, by SOP Instance UID; `referenced` is None when the body has no such list."""

    referenced: tuple[str, ...] | None
    failed: tuple[tuple[str, int | None], ...]       # (SOP Instance UID, Failure Reason)
    warnings: tuple[tuple[str, int], ...]             # (SOP Instance UID, Warning Reason)
    other_failures: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class StowOutcome:
    """One STOW-RS request judged: what was stored, what failed and whether another try can help."""

    stored: tuple[str, ...]
    failed: tuple[str, ...]
    status: str            # "ok", or "http-409", "failure-0xA700", "unacknowledged", ...
    error: str             # "" when every instance was stored
    retry: bool            # a failure here may clear by itself (connection, 408, 429, 5xx, 202 failures)
    stop: bool             # the request as such is refused (credentials, URL, size) or the server is busy
    warnings: tuple[tuple[str, int], ...] = ()
    retry_after_s: float = 0.0   # the server asked for at least this long before the next try (Retry-After)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float:
    """A Retry-After header as seconds from now: delay-seconds or an HTTP date; 0 when absent or unreadable."""
    text = (value or "").strip()
    if not text:
        return 0.0
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def multipart_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related; type="application/dicom" request with `parts`."""
    while True:
        boundary = "DICOMNODE" + secrets.token_hex(16)
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            break
    chunks: list[bytes] = []
    for part in parts:
        chunks += [b"--", marker, b"\r\nContent-Type: ", MEDIA_TYPE.encode(), b"\r\n\r\n", part, b"\r\n"]
    chunks += [b"--", marker, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="{MEDIA_TYPE}"; boundary={boundary}'


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    if element is None:
        return []
    if not isinstance(element, dict) or element.get("vr", "SQ") != "SQ":
        raise StowResponseError(f"({tag[:4]},{tag[4:]}) is not a sequence")
    items = element.get("Value", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise StowResponseError(f"({tag[:4]},{tag[4:]}) items are not datasets")
    return items


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _code(item: dict[str, Any], tag: str) -> int | None:
    value = _value(item, tag)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _uid(item: dict[str, Any]) -> str:
    value = _value(item, REFERENCED_SOP_INSTANCE_UID)
    return value if isinstance(value, str) else ""


def parse_response(body: bytes) -> StowResponse:
    """The DICOM JSON body of a STOW-RS response (a dataset, or a list of one, as some servers send)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StowResponseError(f"not JSON ({exc})") from None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        raise StowResponseError(f"expected one DICOM JSON dataset, got {type(document).__name__}")
    referenced_items = _items(document, REFERENCED_SOP_SEQUENCE)
    has_referenced = REFERENCED_SOP_SEQUENCE in document
    failed = tuple((_uid(item), _code(item, FAILURE_REASON)) for item in _items(document, FAILED_SOP_SEQUENCE))
    warnings = tuple((_uid(item), code) for item in referenced_items
                     if (code := _code(item, WARNING_REASON)) is not None)
    others = tuple(_code(item, FAILURE_REASON) for item in _items(document, OTHER_FAILURES_SEQUENCE))
    referenced = tuple(_uid(item) for item in referenced_items) if has_referenced else None
    return StowResponse(referenced, failed, warnings, others)


def _reason_text(code: int | None) -> str:
    return "no reason given" if code is None else f"0x{code:04X}"


def judge(http_status: int, body: StowResponse | None, sent: Sequence[str], retry_after_s: float = 0.0) -> StowOutcome:
    """One response: HTTP status plus the parsed body (None when there was none or it was not DICOM JSON),
    and the seconds its Retry-After asked for."""
    sent_set = set(sent)
    failed_reasons = {uid: code for uid, code in (body.failed if body else ()) if uid in sent_set}
    referenced = None if body is None or body.referenced is None else set(body.referenced) & sent_set
    if http_status == 200 or (http_status == 202 and body is not None):   # a bare 202 says not which failed
        stored = [uid for uid in sent if uid not in failed_reasons and (referenced is None or uid in referenced)]
    else:
        stored = [uid for uid in sent if referenced is not None and uid in referenced and uid not in failed_reasons]
    failed = [uid for uid in sent if uid not in set(stored)]
    warnings = body.warnings if body else ()
    if not failed:
        return StowOutcome(tuple(stored), (), "ok", "", retry=False, stop=False, warnings=warnings)
    retry = http_status in (200, 202) or http_status in RETRY_STATUSES or http_status >= 500
    stop = http_status in STOP_STATUSES or http_status in BUSY_STATUSES or 300 <= http_status < 400
    if http_status in (200, 202) and failed_reasons:
        first = next(iter(failed_reasons.values()))
        status = f"failure-{_reason_text(first)}"
        error = (f"HTTP {http_status}: {len(failed_reasons)} of {len(sent)} instance(s) failed "
                 f"(Failure Reason {_reason_text(first)})")
    elif http_status in (200, 202):
        status = "unacknowledged"
        where = "Referenced SOP Sequence" if body is not None else "body (no Store Instances Response)"
        error = f"HTTP {http_status}: {len(failed)} of {len(sent)} instance(s) missing from the response's {where}"
    else:
        status = f"http-{http_status}"
        error = f"HTTP {http_status} ({_meaning(http_status)}): {len(failed)} of {len(sent)} instance(s) not stored"
        if failed_reasons:
            error += f", Failure Reason {_reason_text(next(iter(failed_reasons.values())))}"
    wait_s = retry_after_s if retry else 0.0
    if wait_s:
        error += f"; it asked to wait {wait_s:.0f} s (Retry-After)"
    return StowOutcome(tuple(stored), tuple(failed), status, error, retry=retry, stop=stop, warnings=warnings,
                       retry_after_s=wait_s)


def _meaning(http_status: int) -> str:
    known = {400: "bad request", 401: "credentials refused", 403: "forbidden", 404: "no STOW-RS service at this URL",
             405: "method not allowed at this URL", 408: "request timeout", 409: "conflict: none stored",
             413: "request too large: lower instances_per_request", 415: "media type not supported",
             429: "too many requests"}
    if http_status in known:
        return known[http_status]
    if 300 <= http_status < 400:
        return "redirect: set url to the final address"
    return "server error" if http_status >= 500 else "refused"
