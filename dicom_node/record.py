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
from dicom_node.spool import Spool, StoredInstance

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
BATCH_WINDOW_S = 0.05
RETRY_DELAY_S = 1.0


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
        batch = [item for item in items if not isinstance(item, Refusal)]
        refusals = [(r.series_uid, r.sop_uid, r.at) for r in items if isinstance(r, Refusal)]
        while True:
            try:
                outcomes = self._ledger.record_instances(batch, self._quiet_s, refusals=refusals)
                break
            except Exception:  # the database is away: keep the batch, try again; never drop it
                logger.exception("could not record %d instance(s) in the ledger; retrying", len(batch))
                time.sleep(RETRY_DELAY_S)
        if self._on_recorded is not None:
            self._on_recorded(outcomes)
        with self._idle:
            self._pending -= len(items)
            self._idle.notify_all()


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
