"""Administrator actions (retry, re-send, discard) through the ledger's own methods, each logged.

The log line names the series, the action, how the caller authenticated and from where; never a
patient attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_node.send import remove_derived

if TYPE_CHECKING:
    from dicom_node.app import Node

logger = logging.getLogger(__name__)

ACTIONS = ("retry", "resend", "discard")


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
