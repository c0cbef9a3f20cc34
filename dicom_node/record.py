"""Recording received instances in the ledger, off the C-STORE path.

The C-STORE handler's durable act is the fsynced spool file; the ledger catches up here in batches
(one transaction for many instances). A crash between the two loses nothing: at start-up
`reconcile_spool` records every spool file the ledger does not know in its current form.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pydicom

from dicom_node.ledger import Ledger, RecordOutcome
from dicom_node.ratelog import RateLimitedLog
from dicom_node.spool import Spool, StoredInstance
from dicom_node.transient import describe, is_transient

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
BATCH_WINDOW_S = 0.05
RETRY_INITIAL_S = 0.2          # the database is away: wait this long, doubling, up to RETRY_MAX_S
RETRY_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """An instance refused for lack of space (0xA700): its series waits for it to be sent again."""

    series_uid: str
    sop_uid: str
    at: float


Item = tuple[StoredInstance, float, str] | Refusal


class InstanceRecorder:
    def __init__(self, ledger: Ledger, quiet_period_s: float, clock: Callable[[], float],
                 on_recorded: Callable[[list[RecordOutcome]], None] | None = None) -> None:
        self._ledger, self._quiet_s, self._clock = ledger, quiet_period_s, clock
        self._on_recorded = on_recorded
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(logger)

    def put(self, stored: StoredInstance, calling_ae: str) -> None:
        """O(1) for the C-STORE handler: the receive time is taken now, the ledger is written later."""
        with self._idle:
            self._pending += 1
        self._queue.put((stored, self._clock(), calling_ae))

    def put_refusal(self, series_uid: str, sop_uid: str) -> None:
        """O(1) for the C-STORE handler: note an instance refused for lack of space."""
        with self._idle:
            self._pending += 1
        self._queue.put(Refusal(series_uid, sop_uid, self._clock()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything put so far is in the ledger."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Record what was put (for up to `timeout_s`), then stop, even if the database is away."""
        self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch: list[Item] = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            # Gather what arrives within a short window: one transaction for many instances costs
            # far less than one each, and nothing waits on it (the sender already has its status).
            window_ends = time.monotonic() + BATCH_WINDOW_S
            while len(batch) < MAX_BATCH and (left := window_ends - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            self._record(batch)

    def _record(self, items: list[Item]) -> None:
        """Record a batch; a batch the ledger refuses for a reason of its own is recorded item by item,
        so one bad row never blocks the intake behind it."""
        try:
            outcomes = self._write_retrying(items)
        except _Stopped:
            outcomes = []
        except Exception:  # not the database's absence: some row is bad; find it
            outcomes = self._isolate(items)
        if self._on_recorded is not None and outcomes:
            self._on_recorded(outcomes)
        with self._idle:
            self._pending -= len(items)
            self._idle.notify_all()

    def _isolate(self, items: list[Item]) -> list[RecordOutcome]:
        outcomes: list[RecordOutcome] = []
        for item in items:
            try:
                outcomes += self._write_retrying([item])
            except _Stopped:
                break
            except Exception as exc:  # this one row: say which, keep going
                what = (f"refusal of {item.sop_uid} in series {item.series_uid}" if isinstance(item, Refusal)
                        else f"instance {item[0].sop_uid} of series {item[0].series_uid}")
                logger.error("could not record the %s in the ledger (%s); its spool file is kept and recorded "
                             "again at the next start", what, describe(exc))
        return outcomes

    def _write_retrying(self, items: list[Item]) -> list[RecordOutcome]:
        """One transaction for `items`; transient errors (database away, locked, full) are retried with
        backoff until they pass or the recorder is stopped (the files stay in the spool: nothing is lost)."""
        batch = [item for item in items if not isinstance(item, Refusal)]
        refusals = [(r.series_uid, r.sop_uid, r.at) for r in items if isinstance(r, Refusal)]
        delay = RETRY_INITIAL_S
        while True:
            try:
                return self._ledger.record_instances(batch, self._quiet_s, refusals=refusals)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._log.warning("transient", "could not record %d item(s) in the ledger (%s); retrying in %.1f s",
                                  len(items), describe(exc), delay)
            if self._stop.wait(delay):
                logger.warning("stopped with %d item(s) not recorded; their spool files are recorded at the next "
                               "start", len(items))
                raise _Stopped
            delay = min(RETRY_MAX_S, delay * 2)


class _Stopped(Exception):
    """The recorder was stopped while the database was away."""


def reconcile_spool(spool: Spool, ledger: Ledger, quiet_period_s: float, now: float) -> int:
    """Record spool files the ledger lacks (or holds in another version); returns how many."""
    stamps = ledger.instance_stamps()
    batch: list[tuple[StoredInstance, float, str]] = []
    for series_uid, sop_uid, path, mtime_ns in spool.incoming_files():
        if stamps.get((series_uid, sop_uid)) == mtime_ns:
            continue
        try:
            data = path.read_bytes()
            study_uid = str(pydicom.dcmread(path, stop_before_pixels=True,
                                            specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID", ""))
        except Exception as exc:  # a file we wrote but cannot read back: keep it, say so
            logger.error("spool file %s/%s cannot be read back (%s); left in place", series_uid, sop_uid,
                         type(exc).__name__)
            continue
        digest = hashlib.sha256(data).hexdigest()
        batch.append((StoredInstance(study_uid, series_uid, sop_uid, path, len(data), digest, mtime_ns), now, ""))
    if batch:
        outcomes = ledger.record_instances(batch, quiet_period_s)
        new = sum(o is not RecordOutcome.DUPLICATE for o in outcomes)
        logger.warning("recorded %d spool file(s) the ledger did not have (%d new or changed): "
                       "received just before a stop", len(batch), new)
    return len(batch)
