"""Composition root: builds the parts, owns the threads and timers, drains on stop.

receive (pynetdicom threads) → spool + ledger → completion timer (APScheduler) → one synth worker
(owns the model) → one sender thread per destination (a broken destination never blocks another).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom import _config as pynetdicom_config

from dicom_node.assemble import assemble, read_headers
from dicom_node.config import DestinationSection, FolderDestinationSection, NodeConfig
from dicom_node.errors import InvalidSeriesError
from dicom_node.ledger import BackoffPolicy, JobState, Ledger, RecordOutcome, SendClaim, SeriesClaim, open_engine
from dicom_node.logcontext import current_series
from dicom_node.metrics import NodeMetrics
from dicom_node.policy import OWN_OUTPUT
from dicom_node.receive import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, StoreSCP
from dicom_node.record import InstanceRecorder, reconcile_spool
from dicom_node.send import SendReport, remove_derived, send_dicom, send_folder
from dicom_node.spool import Spool, StoredInstance
from dicom_node.write import derived_files, write_derived_series
from synth.synthesizer import SynthesisRefusedError, Synthesizer, build_synthesizer

logger = logging.getLogger(__name__)

# The association threads wait on the GIL behind the recorder and the workers; hand it over sooner.
SWITCH_INTERVAL_S = 0.0005
PROCESSING_ERROR = "processing_error"
NO_INSTANCES = "no_instances"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskGuard:
    """Refuse stores (0xA700) above a disk-usage watermark; re-checked at most once a second."""

    def __init__(self, path: Path, watermark: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._path, self._watermark, self._clock = path, watermark, clock
        self._checked_at, self._status = -1e9, STATUS_SUCCESS
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= 1.0:
                usage = shutil.disk_usage(self._path)
                full = usage.used / usage.total > self._watermark
                if full and self._status == STATUS_SUCCESS:
                    logger.error("disk above %.0f%% at %s: refusing stores", self._watermark * 100, self._path)
                elif not full and self._status != STATUS_SUCCESS:
                    logger.warning("disk below watermark again at %s: accepting stores", self._path)
                self._status = STATUS_OUT_OF_RESOURCES if full else STATUS_SUCCESS
                self._checked_at = now
            return self._status


class Node:
    def __init__(self, cfg: NodeConfig, synthesizer: Synthesizer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spool = Spool(cfg.storage_dir, fsync=cfg.node.fsync)
        self.ledger = Ledger(open_engine(cfg.database_url))
        self.lease_s = cfg.database.lease_s
        self.metrics = NodeMetrics(self.ledger, cfg.storage_dir)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.synthesizer = synthesizer if synthesizer is not None else build_synthesizer(cfg.synth)
        self.backoff = BackoffPolicy(cfg.send.retry_initial_s, cfg.send.retry_max_s, cfg.send.max_attempts)
        self.disk_guard = DiskGuard(cfg.storage_dir, cfg.node.disk_watermark)
        self.recorder = InstanceRecorder(self.ledger, cfg.series.quiet_period_s, clock, self._count_outcomes)
        self.scp: StoreSCP | None = None
        if cfg.node.receive:
            self.scp = StoreSCP(cfg.node, self.spool, self._on_stored, accept_store=self.disk_guard,
                                on_refused=lambda status: self.metrics.refused.labels(f"0x{status:04X}").inc(),
                                on_connection_refused=lambda reason: self.metrics.connections_refused.labels(
                                    reason).inc())
            self.metrics.watch_associations(self.scp.slot_usage)
        self._stop = threading.Event()
        self._wake_synth = threading.Event()
        self._wake_send = {name: threading.Event() for name in cfg.destination_names()}
        self._threads: list[threading.Thread] = []
        self.web: Any = None                     # dicom_node.web.server.WebServer when [web] is enabled
        self._scheduler = BackgroundScheduler(daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        pynetdicom_config.PASS_CONTEXTVARS = True
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if self.cfg.web.enabled:             # first: a busy web port fails start-up before anything runs
            from dicom_node.web.server import WebServer  # the dashboard is optional at import time

            self.web = WebServer(self)
            self.web.start()
        self._recover()
        self.recorder.start()
        self._scheduler.add_job(self._complete_due, "interval", seconds=0.25, max_instances=1, coalesce=True,
                                id="complete-due")
        self._scheduler.add_job(self._heartbeat, "interval", seconds=self.lease_s / 4, max_instances=1,
                                coalesce=True, id="lease-heartbeat")
        self._scheduler.add_job(self._sweep_leases, "interval", seconds=min(30.0, self.lease_s / 4),
                                max_instances=1, coalesce=True, id="lease-sweep")
        self._scheduler.add_job(self._retention_sweep, "interval", seconds=self.cfg.retention.sweep_interval_s,
                                max_instances=1, coalesce=True, id="retention")
        self._scheduler.start()
        if self.cfg.node.process:
            self._spawn("synth-worker", self._synth_loop)
            for dest in self.cfg.destinations:
                self._spawn(f"send-{dest.name}", self._send_loop, dest)
            for folder in self.cfg.folder_destinations:
                self._spawn(f"send-{folder.name}", self._send_loop, folder)
        if self.scp is not None:
            try:
                self.scp.start()
            except OSError:                  # the port is taken: stop what already runs, then fail loudly
                self.stop(drain_s=1.0)
                raise
        logger.info("node %s started: backend %s, %d destination(s)%s", self.owner,
                    self.synthesizer.identity.backend, len(self._wake_send),
                    "" if self.scp is not None else ", worker only (not receiving)")

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let in-flight stores finish, stop the workers, release our leases."""
        if self.scp is not None:
            self.scp.drain(drain_s)
        self.recorder.stop(drain_s)
        if self.web is not None:
            self.web.stop()
        self._stop.set()
        self._wake_synth.set()
        for ev in self._wake_send.values():
            ev.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + drain_s
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        released = self.ledger.release_owner(self.owner, self.clock())
        logger.info("node stopped; %d lease(s) released", released)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _recover(self) -> None:
        """Work leased by a process of this host that no longer runs goes back to the queue."""
        host = socket.gethostname()
        now = self.clock()
        for owner in self.ledger.lease_owners():
            parts = owner.split(":")
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                n = self.ledger.release_owner(owner, now)
                logger.warning("recovered %d job(s) left by stopped process %s", n, owner)
        self.ledger.reclaim_expired(now)
        if self.cfg.node.receive:
            reconcile_spool(self.spool, self.ledger, self.cfg.series.quiet_period_s, now)

    # -- receive -----------------------------------------------------------------------------
    def _on_stored(self, stored: StoredInstance, calling_ae: str) -> None:
        self.recorder.put(stored, calling_ae)

    def _count_outcomes(self, outcomes: list[RecordOutcome]) -> None:
        for outcome in outcomes:
            self.metrics.instances.labels(outcome.value).inc()

    # -- timers ------------------------------------------------------------------------------
    def _complete_due(self) -> None:
        completed = self.ledger.complete_due(self.clock())
        for uid in completed:
            logger.info("series %s complete (quiet for %.1f s)", uid, self.cfg.series.quiet_period_s)
        if completed:
            self._wake_synth.set()

    def _retention_sweep(self) -> None:
        """Finished work older than retention.done_days goes; failed or rejected work never does here."""
        cutoff = self.clock() - self.cfg.retention.done_days * 86400
        for source_uid, derived_uid in self.ledger.purge_done(cutoff):
            self.spool.remove_source(source_uid)
            remove_derived(self.spool.derived_dir(derived_uid))
            logger.info("retention: removed series %s and its derived series %s", source_uid, derived_uid)

    def _heartbeat(self) -> None:
        """Keep our leases alive while we work; a killed process stops renewing and loses them."""
        self.ledger.renew_owner(self.owner, self.clock(), self.lease_s)

    def _sweep_leases(self) -> None:
        if n := self.ledger.reclaim_expired(self.clock()):
            logger.warning("re-queued %d job(s) whose lease expired", n)
            self._wake_synth.set()

    # -- synthesis ---------------------------------------------------------------------------
    def _synth_loop(self) -> None:
        while not self._stop.is_set():
            claim = self.ledger.claim_series(self.owner, self.clock(), self.lease_s)
            if claim is None:
                self._wake_synth.wait(timeout=1.0)
                self._wake_synth.clear()
                continue
            token = current_series.set(claim.series_uid)
            try:
                self.process_series(claim)
            finally:
                current_series.reset(token)

    def process_series(self, claim: SeriesClaim) -> None:
        uid = claim.series_uid
        started = time.monotonic()
        try:
            if self.ledger.is_derived_series(uid):
                raise InvalidSeriesError(uid, OWN_OUTPUT, "this series was derived by this node")
            files = self.spool.instance_files(uid)
            if not files:
                raise InvalidSeriesError(uid, NO_INSTANCES, "no instance files are held for this series")
            volume, source = assemble(read_headers(files, uid), uid, self.cfg.series)
            synth_started = time.monotonic()
            thin = self.synthesizer(volume, progress=self._log_progress)
            synth_s = time.monotonic() - synth_started
            self.metrics.synth_seconds.observe(synth_s)
            derived = write_derived_series(thin, source, self.synthesizer.identity, self.synthesizer.factor,
                                           self.spool.derived, self.cfg.node.uid_root,
                                           self.cfg.series.series_number_offset)
        except SynthesisRefusedError as exc:
            self._reject(claim, exc.reason, str(exc))
            self.metrics.series.labels("rejected").inc()
            return
        except InvalidSeriesError as exc:
            self._reject(claim, exc.reason, exc.detail)
            self.metrics.series.labels("rejected").inc()
            return
        except Exception as exc:  # the per-series worker boundary: keep the series, say why
            logger.exception("series %s failed in processing", uid)
            self._reject(claim, PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"[:500])
            self.metrics.series.labels("error").inc()
            return
        logger.info("series %s: %d slices at %.2f mm -> %d slices at %.2f mm in %.1f s (%s)", uid,
                    volume.shape[0], volume.spacing_mm[0], derived.count, thin.spacing_mm[0], synth_s,
                    self.synthesizer.identity.backend)
        self.metrics.series.labels("derived").inc()
        self.ledger.series_synthesized(claim, self.owner, derived.series_uid, derived.count,
                                       list(self._wake_send), time.monotonic() - started, self.clock())
        for ev in self._wake_send.values():
            ev.set()

    @staticmethod
    def _log_progress(done: int, total: int) -> None:
        logger.debug("synthesis %d/%d", done, total)

    def _reject(self, claim: SeriesClaim, reason: str, detail: str) -> None:
        self.spool.reject(claim.series_uid, reason, detail)
        self.ledger.reject_series(claim, self.owner, reason, detail, self.clock())
        logger.error("series %s rejected (%s): %s", claim.series_uid, reason, detail)

    # -- sending -----------------------------------------------------------------------------
    def _send_loop(self, dest: DestinationSection | FolderDestinationSection) -> None:
        wake = self._wake_send[dest.name]
        while not self._stop.is_set():
            claim = self.ledger.claim_send(dest.name, self.owner, self.clock(), self.lease_s)
            if claim is None:
                due = self.ledger.next_send_due(dest.name)
                wait = 1.0 if due is None else min(1.0, max(0.01, due - self.clock()))
                wake.wait(timeout=wait)
                wake.clear()
                continue
            token = current_series.set(claim.series_uid)
            try:
                self._send_one(dest, claim)
            finally:
                current_series.reset(token)

    def _send_one(self, dest: DestinationSection | FolderDestinationSection, claim: SendClaim) -> None:
        files = derived_files(self.spool.derived_dir(claim.derived_series_uid))
        started = time.monotonic()
        if not files:
            report = SendReport(dest.name, 0, 0, "derived-missing", "the derived series files are missing")
        elif isinstance(dest, DestinationSection):
            try:
                report = send_dicom(files, dest, self.cfg.node.ae_title, self.cfg.send.timeout_s)
            except Exception as exc:  # a peer misbehaving must not kill the sender thread
                logger.exception("sending series %s to %s failed", claim.series_uid, dest.name)
                report = SendReport(dest.name, len(files), 0, "error", f"{type(exc).__name__}: {exc}"[:500])
        else:
            report = send_folder(files, dest, claim.derived_series_uid)
        state = self.ledger.send_finished(claim, self.owner, report.sent, report.status, report.error,
                                          report.ok, self.backoff, self.clock())
        self.metrics.send_attempts.labels(dest.name).inc()
        if not report.ok:
            self.metrics.send_failures.labels(dest.name).inc()
        elapsed = time.monotonic() - started
        if report.ok:
            logger.info("sent %d/%d of %s to %s in %.2f s", report.sent, report.total,
                        claim.derived_series_uid, dest.name, elapsed)
        elif state is JobState.FAILED:
            logger.error("gave up sending %s to %s after %d attempt(s): %s", claim.derived_series_uid,
                         dest.name, claim.attempts + 1, report.error)
        else:
            logger.warning("sending %s to %s failed (attempt %d, %d/%d sent, %s); will retry",
                           claim.derived_series_uid, dest.name, claim.attempts + 1, report.sent, report.total,
                           report.error)


def run_until_signalled(node: Node, stop_event: threading.Event) -> None:
    node.start()
    try:
        while not stop_event.wait(timeout=1.0):
            pass
    finally:
        node.stop()



