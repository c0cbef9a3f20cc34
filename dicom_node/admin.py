"""What an administrator can do to a series, and in which states: one place for the CLI and the web.

retry    a failed series: its failed sends again; a rejected, no_rule or thin_series_exists series:
         processed again (selection, rules and skip_if_thin run again)
resend   a done or failed series: its derived series sent again (to one destination, or all)
discard  a finished series (done, failed, rejected, no_rule, thin_series_exists): its ledger rows and
         files removed

`allowed(state, has_sends)` says which actions a state allows (the dashboard shows only those);
`perform(...)` checks the same rules, changes the ledger and the spool, and returns what it did.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.ledger import Ledger
from dicom_node.ledger.admin import ACTION_STATES
from dicom_node.spool import Spool

ACTIONS = tuple(ACTION_STATES)


class Refusal(enum.StrEnum):
    NOT_FOUND = "not_found"          # no such series (HTTP 404)
    CONFLICT = "conflict"            # the series' state or the destination does not allow it (HTTP 409)


class AdminError(Exception):
    """An action that cannot be done; `refusal` says why in a way the web maps to a status."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal, self.message = refusal, message


@dataclass(frozen=True, slots=True)
class Done:
    series_uid: str
    action: str
    message: str


def allowed(state: str, *, has_sends: bool) -> dict[str, bool]:
    """Action → whether a series in `state` allows it (resend also needs a send job to repeat)."""
    return {action: state in states and (action != "resend" or has_sends)
            for action, states in ACTION_STATES.items()}


def perform(ledger: Ledger, spool: Spool, action: str, series_uid: str, *, now: float,
            destinations: Sequence[str], destination: str | None = None) -> Done:
    """Do one action; AdminError(NOT_FOUND) for an unknown series, (CONFLICT) for a wrong state or
    destination. `destinations` are the configured names (resend to a removed one is refused)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    try:
        if action == "retry":
            message = ledger.retry(series_uid, now)
        elif action == "resend":
            if destination is not None and destination not in destinations:
                raise AdminError(Refusal.CONFLICT, f"no destination named {destination!r} is configured")
            message = ledger.resend(series_uid, now, destination)
        else:
            derived = ledger.discard(series_uid)
            spool.remove_source(series_uid)
            if derived:
                spool.remove_derived(derived)
            message = "discarded (ledger rows and files removed)"
    except KeyError as exc:
        raise AdminError(Refusal.NOT_FOUND, str(exc).strip("'\"")) from exc
    except ValueError as exc:
        raise AdminError(Refusal.CONFLICT, str(exc)) from exc
    return Done(series_uid, action, message)
