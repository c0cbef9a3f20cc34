"""Administrator actions (retry, re-send, discard) through the ledger's own methods, each logged.

The log line names the series, the action, how the caller authenticated and from where; never a
patient attribute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_node import admin
from dicom_node.admin import Done, Refusal

if TYPE_CHECKING:
    from dicom_node.operations import Operations

logger = logging.getLogger(__name__)

HTTP_STATUS = {Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409}


class ActionError(Exception):
    """An action that cannot be done; `status` is the HTTP status that says why (404 or 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def perform(ops: Operations, action: str, series_uid: str, *, destination: str | None = None,
            who: str = "") -> Done:
    """Run one action (dicom_node.admin); raises ActionError (unknown series → 404, wrong state or
    destination → 409)."""
    try:
        done = ops.act(action, series_uid, destination=destination)
    except admin.AdminError as exc:
        raise ActionError(HTTP_STATUS[exc.refusal], exc.message) from exc
    logger.info("web: %s on series %s by %s: %s", action, series_uid, who or "unknown caller", done.message)
    return done


@dataclass(frozen=True, slots=True)
class EchoResult:
    destination: str
    ok: bool
    message: str
    elapsed_ms: float


def check_destination(ops: Operations, name: str, *, who: str = "") -> EchoResult:
    """C-ECHO a DICOM destination, check that a folder is writable: whatever its kind's sender checks."""
    started = time.monotonic()
    try:
        result = ops.check_destination(name)
    except KeyError as exc:
        raise ActionError(404, str(exc).strip("'\"")) from exc
    elapsed_ms = (time.monotonic() - started) * 1000
    logger.info("web: check of destination %s by %s: %s", name, who or "unknown caller", result.message)
    return EchoResult(name, result.ok, result.message, elapsed_ms)
