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

from dicom_node.send import echo, remove_derived

if TYPE_CHECKING:
    from dicom_node.app import Node

logger = logging.getLogger(__name__)

ACTIONS = ("retry", "resend", "discard")
ECHO_TIMEOUT_S = 10.0


class ActionError(Exception):
    """An action that cannot be done; `status` is the HTTP status that says why (404 or 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ActionResult:
    series_uid: str
    action: str
    message: str


def perform(node: Node, action: str, series_uid: str, *, destination: str | None = None,
            who: str = "") -> ActionResult:
    """Run one action; raises ActionError (unknown series → 404, wrong state or destination → 409)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    now = node.clock()
    try:
        if action == "retry":
            message = node.ledger.retry(series_uid, now)
        elif action == "resend":
            if destination is not None and destination not in node.cfg.destination_names():
                raise ActionError(409, f"no destination named {destination!r} is configured")
            message = node.ledger.resend(series_uid, now, destination)
        else:  # discard
            derived = node.ledger.discard(series_uid)
            node.spool.remove_source(series_uid)
            if derived:
                remove_derived(node.spool.derived_dir(derived))
            message = "discarded (ledger rows and files removed)"
    except KeyError as exc:
        raise ActionError(404, str(exc).strip("'\"")) from exc
    except ValueError as exc:
        raise ActionError(409, str(exc)) from exc
    logger.info("web: %s on series %s by %s: %s", action, series_uid, who or "unknown caller", message)
    return ActionResult(series_uid, action, message)


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
