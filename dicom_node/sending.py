"""The send stage: one per destination, so a destination that is down never delays another.

One `step()` claims the destination's most urgent due send job, delivers the derived series and
records the attempt (the ledger retries a failed attempt with backoff, then keeps it as failed).
A failure on our side that passes by itself — the destination folder's disk is full, the database
is full or away — does not count as an attempt: the job goes back untouched and the stage backs
off. A ledger write that fails is kept and retried before anything new is claimed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dicom_node.config import NodeConfig
from dicom_node.delivery import record_delivery
from dicom_node.ledger import BackoffPolicy, JobState, Ledger, SendClaim
from dicom_node.logcontext import current_series
from dicom_node.metrics import NodeMetrics
from dicom_node.senders import Sender, SendReport
from dicom_node.spool import Spool
from dicom_node.stage import PendingWrite
from dicom_node.transient import is_transient

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0
MIN_WAIT_S = 0.01
DETAIL_MAX = 500


class SendStage:
    def __init__(self, cfg: NodeConfig, sender: Sender, *, ledger: Ledger, spool: Spool,
                 metrics: NodeMetrics, owner: str, clock: Callable[[], float],
                 notify: Callable[[str, str], None] | None = None) -> None:
        """`notify(event, series_uid)` hears of a series this stage finished (done or failed)."""
        self._cfg, self._sender = cfg, sender
        self._notify = notify or (lambda _event, _uid: None)
        self._ledger, self._spool, self._metrics = ledger, spool, metrics
        self._owner, self._clock = owner, clock
        self._backoff = BackoffPolicy(cfg.send.retry_initial_s, cfg.send.retry_max_s, cfg.send.max_attempts)
        self._pending = PendingWrite()

    def step(self) -> float | None:
        self._pending.run()
        name = self._sender.name
        claim = self._ledger.claim_send(name, self._owner, self._clock(), self._cfg.database.lease_s)
        if claim is None:
            due = self._ledger.next_send_due(name)
            return IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(MIN_WAIT_S, due - self._clock()))
        token = current_series.set(claim.series_uid)
        try:
            started = time.monotonic()
            try:
                report = self._deliver(claim)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._pending.run(lambda: self._release(claim))
                raise
            elapsed_s = time.monotonic() - started
            self._pending.run(lambda: self._record(claim, report, elapsed_s))
            if report.ok:                    # on disk too, for a ledger rebuilt from the spool (never raises)
                record_delivery(self._spool.derived_dir(claim.derived_series_uid), destination=self._sender.name,
                                sent=report.sent, now=self._clock())
        finally:
            current_series.reset(token)
        return None

    def _deliver(self, claim: SendClaim) -> SendReport:
        files = self._spool.derived_files(claim.derived_series_uid)
        if not files:
            return SendReport(self._sender.name, 0, 0, "derived-missing", "the derived series files are missing")
        try:
            return self._sender.deliver(files, derived_series_uid=claim.derived_series_uid)
        except Exception as exc:  # a peer misbehaving must not end the stage: count it as an attempt
            if is_transient(exc):
                raise
            logger.exception("sending series %s to %s failed", claim.series_uid, self._sender.name)
            return SendReport(self._sender.name, len(files), 0, "error", f"{type(exc).__name__}: {exc}"[:DETAIL_MAX])

    def _release(self, claim: SendClaim) -> None:
        self._ledger.release_send(claim, self._owner, self._clock())

    def _record(self, claim: SendClaim, report: SendReport, elapsed_s: float) -> None:
        outcome = self._ledger.record_send(claim, owner=self._owner, sent=report.sent, status=report.status,
                                           error=report.error, ok=report.ok, policy=self._backoff,
                                           now=self._clock(), retry=report.retry,
                                           retry_after_s=report.retry_after_s)
        state = outcome.job_state
        if outcome.series_state is not None:
            self._notify(outcome.series_state, claim.series_uid)
        name = self._sender.name
        self._metrics.send_attempts.labels(name).inc()
        if not report.ok:
            self._metrics.send_failures.labels(name).inc()
        if report.ok:
            logger.info("sent %d/%d of %s to %s in %.2f s", report.sent, report.total,
                        claim.derived_series_uid, name, elapsed_s)
        elif state is JobState.FAILED:
            logger.error("gave up sending %s to %s after %d attempt(s)%s: %s", claim.derived_series_uid,
                         name, claim.attempts + 1, "" if report.retry else " (not retried: it cannot help)",
                         report.error)
        else:
            logger.warning("sending %s to %s failed (attempt %d, %d/%d sent, %s); will retry",
                           claim.derived_series_uid, name, claim.attempts + 1, report.sent, report.total,
                           report.error)
