"""Administrator actions (retry, re-send, discard) through the ledger's own methods, each logged.

The log line names the series, the action, how the caller authenticated and from where; never a
patient attribute.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node import admin
from dicom_node.admin import Done, Refusal
from dicom_node.send import echo

if TYPE_CHECKING:
    from dicom_node.app import Node

logger = logging.getLogger(__name__)

ECHO_TIMEOUT_S = 10.0
HTTP_STATUS = {Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409}


class ActionError(Exception):
    """An action that cannot be done; `status` is the HTTP status that says why (404 or 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def perform(node: Node, action: str, series_uid: str, *, destination: str | None = None,
            who: str = "") -> Done:
    """Run one action (dicom_node.admin); raises ActionError (unknown series → 404, wrong state or
    destination → 409)."""
    try:
        done = admin.perform(node.ledger, node.spool, action, series_uid, now=node.clock(),
                             destinations=node.cfg.destination_names(), destination=destination)
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


def check_destination(node: Node, name: str, *, who: str = "") -> EchoResult:
    """C-ECHO a DICOM destination, or check that a folder destination is writable."""
    started = time.monotonic()
    for dest in node.cfg.destinations:
        if dest.name == name:
            try:
                status = echo(dest, node.cfg.node.ae_title, timeout_s=min(ECHO_TIMEOUT_S, node.cfg.send.timeout_s))
                what = "no association" if status is None else f"status 0x{status:04X}"
            except (OSError, ValueError, RuntimeError) as exc:   # TLS and socket errors: report, not 500
                status, what = None, f"{type(exc).__name__}: {exc}"[:200]
            ok = status == 0
            message = (f"C-ECHO {dest.ae_title}@{dest.host}:{dest.port}: "
                       + ("success" if ok else f"failed ({what})"))
            break
    else:
        folder = next((f for f in node.cfg.folder_destinations if f.name == name), None)
        if folder is None:
            raise ActionError(404, f"no destination named {name!r} is configured")
        path = Path(folder.path)
        existing = next((p for p in (path, *path.parents) if p.exists()), path)   # created on first send
        ok = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
        message = f"folder {path}: " + ("writable" if ok else f"{existing} is not a writable folder")
    elapsed_ms = (time.monotonic() - started) * 1000
    logger.info("web: check of destination %s by %s: %s", name, who or "unknown caller", message)
    return EchoResult(name, ok, message, elapsed_ms)
