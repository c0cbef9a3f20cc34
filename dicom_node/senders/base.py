"""What every destination kind shares: the Sender interface and the reports it gives back.

A sender delivers a derived series' files to one configured destination and says how it went; the
send stage records that in the ledger (retry with backoff, then `failed`; at once when the report
says a retry cannot help). A sender never raises for
a peer's failure: it reports it. It may raise a transient error of our own side (our disk full) so
the stage backs off without spending an attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SendReport:
    destination: str
    total: int
    sent: int
    status: str            # "ok", or the last failure, e.g. "0xA700", "association-rejected"
    error: str             # human-readable detail of the last failure ("" when ok)
    failed_sop_uids: tuple[str, ...] = ()
    retry: bool = True     # False: trying again cannot help (refused credentials, a 4xx): kept as failed now
    retry_after_s: float = 0.0   # the destination asked for at least this long before the next try

    @property
    def ok(self) -> bool:
        return self.sent == self.total and not self.failed_sop_uids


@dataclass(frozen=True, slots=True)
class CheckResult:
    """An administrator's "can the node reach it?": C-ECHO, a writable folder, an HTTP OPTIONS..."""

    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class SenderContext:
    """What a sender needs from the node's config beyond its own destination section."""

    calling_ae: str
    timeout_s: float


class Sender(Protocol):
    name: str
    kind: str              # "dicom", "folder", ...: shown on the dashboard

    def describe(self) -> str:
        """Where it sends, for people (AE@host:port, a folder path, a URL); no secrets."""
        ...

    def deliver(self, files: Sequence[Path], *, derived_series_uid: str) -> SendReport: ...

    def check(self) -> CheckResult: ...
