"""Composition root: builds the parts, owns the threads and timers, drains on stop.

receive (pynetdicom threads) → spool + ledger → completion timer (APScheduler) → one synth worker
(owns the model) → one sender thread per destination (a broken destination never blocks another).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom import _config as pynetdicom_config

from dicom_node.config import NodeConfig
from dicom_node.disk import DiskGuard
from dicom_node.errors import StartupError
from dicom_node.ledger import RecordOutcome, open_ledger
from dicom_node.metrics import NodeMetrics
from dicom_node.preflight import listen_error
from dicom_node.ratelog import RateLimitedLog
from dicom_node.receive import STATUS_OUT_OF_RESOURCES, StoreSCP
from dicom_node.record import InstanceRecorder, reconcile_spool
from dicom_node.senders import SenderContext, build_sender
from dicom_node.sending import SendStage
from dicom_node.spool import Spool, StoredInstance
from dicom_node.stage import Stage, StageHealth, Supervisor
from dicom_node.synthesis import SynthesisStage
from dicom_node.transient import describe
from synth.backends import build_synthesizer
from synth.seam import Synthesizer

logger = logging.getLogger(__name__)

# The association threads wait on the GIL behind the recorder and the workers; hand it over sooner.
SWITCH_INTERVAL_S = 0.0005
COMPLETE_EVERY_S = 0.25
SUPERVISE_EVERY_S = 1.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Node:
    """Composes the parts: spool, ledger, receiver, recorder, the stages and the timers."""

    def __init__(self, cfg: NodeConfig, synthesizer: Synthesizer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spool = Spool(cfg.storage_dir, fsync=cfg.node.fsync)
        self.ledger = open_ledger(cfg.database_url, migrate=True)    # the node serves: it migrates
        self.lease_s = cfg.database.lease_s
        self.metrics = NodeMetrics(self.ledger, cfg.storage_dir)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.synthesizer = synthesizer if synthesizer is not None else build_synthesizer(cfg.synth)
        self.disk_guard = DiskGuard(cfg.storage_dir, cfg.node.disk_watermark)
        self.recorder = InstanceRecorder(self.ledger, cfg.series.quiet_period_s, clock, self._count_outcomes)
        self.scp: StoreSCP | None = None
        if cfg.node.receive:
            self.scp = StoreSCP(cfg.node, self.spool, self._on_stored, accept_store=self.disk_guard,
                                on_refused=self._on_refused,
                                on_connection_refused=lambda reason: self.metrics.connections_refused.labels(
                                    reason).inc())
            self.metrics.watch_associations(self.scp.slot_usage)
        self.supervisor = Supervisor()
        self._synth_stage: Stage | None = None
        self._send_stages: list[Stage] = []
        if cfg.node.process:
            self._build_stages()
        self.web: Any = None                     # dicom_node.web.server.WebServer when [web] is enabled
        self._scheduler = BackgroundScheduler(daemon=True)
        self._job_log = RateLimitedLog(logger)

    def _build_stages(self) -> None:
        context = SenderContext(self.cfg.node.ae_title, self.cfg.send.timeout_s)
        for dest in self.cfg.all_destinations():
            sending = SendStage(self.cfg, build_sender(dest, context), ledger=self.ledger, spool=self.spool,
                                metrics=self.metrics, owner=self.owner, clock=self.clock)
            self._send_stages.append(self.supervisor.add(Stage(f"send-{dest.name}", sending.step)))
        synthesis = SynthesisStage(self.cfg, ledger=self.ledger, spool=self.spool, synthesizer=self.synthesizer,
                                   disk=self.disk_guard, metrics=self.metrics, owner=self.owner, clock=self.clock,
                                   on_synthesized=self._wake_senders)
        self._synth_stage = self.supervisor.add(Stage("synthesis", synthesis.step))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        pynetdicom_config.PASS_CONTEXTVARS = True
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if self.cfg.web.enabled:             # first: a busy web port fails start-up before anything runs
            from dicom_node.web.server import WebServer  # the dashboard is optional at import time

            self.web = WebServer(self)
            try:
                self.web.start()
            except OSError as exc:
                raise StartupError(listen_error("web.port", self.cfg.web.host, self.cfg.web.port, exc)) from exc
        self._recover()
        self.recorder.start()
        jobs: list[tuple[str, Callable[[], None], float]] = [
            ("complete-due", self._complete_due, COMPLETE_EVERY_S),
            ("lease-heartbeat", self._heartbeat, self.lease_s / 4),
            ("lease-sweep", self._sweep_leases, min(30.0, self.lease_s / 4)),
            ("retention", self._retention_sweep, self.cfg.retention.sweep_interval_s),
            ("supervise", self._supervise, SUPERVISE_EVERY_S),
        ]
        for name, job, every_s in jobs:
            self._scheduler.add_job(self._guarded(name, job), "interval", seconds=every_s, max_instances=1,
                                    coalesce=True, id=name)
        self._scheduler.start()
        self.supervisor.start()
        if self.scp is not None:
            try:
                self.scp.start()
            except OSError as exc:           # the port is taken: stop what already runs, then fail loudly
                self.stop(drain_s=1.0)
                raise StartupError(listen_error("node.port", self.cfg.node.host, self.cfg.node.port, exc)) from exc
        logger.info("node %s started: backend %s, %d destination(s)%s", self.owner,
                    self.synthesizer.identity.backend, len(self.cfg.destination_names()),
                    "" if self.scp is not None else ", worker only (not receiving)")

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let in-flight stores finish, stop the stages, release our leases."""
        if self.scp is not None:
            self.scp.drain(drain_s)
        self.recorder.stop(drain_s)
        if self.web is not None:
            self.web.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self.supervisor.stop(drain_s)
        try:
            released = self.ledger.release_owner(self.owner, self.clock())
        except Exception as exc:  # the database is away: the leases expire by themselves
            logger.error("could not release this node's leases (%s); they expire in %.0f s", describe(exc),
                         self.lease_s)
            return
        logger.info("node stopped; %d lease(s) released", released)

    def health(self) -> list[StageHealth]:
        """Every stage and timer: running and not backing off (for /readyz and the dashboard)."""
        checks = self.supervisor.health()
        if self.cfg.node.process or self.cfg.node.receive:
            running = self._scheduler.running
            checks.append(StageHealth("timers", running, "timers running" if running else "timers stopped"))
        return checks

    def _guarded(self, name: str, job: Callable[[], None]) -> Callable[[], None]:
        """A timer job that logs its failure at most once a second instead of a traceback per run."""
        def run() -> None:
            try:
                job()
            except Exception as exc:  # a timer boundary: the next run tries again
                self._job_log.error(f"{name}:{type(exc).__name__}", "timer %s failed: %s", name, describe(exc))
        return run

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

    def _on_refused(self, status: int, series_uid: str | None, sop_uid: str | None) -> None:
        self.metrics.refused.labels(f"0x{status:04X}").inc()
        if status == STATUS_OUT_OF_RESOURCES and series_uid and sop_uid:
            self.recorder.put_refusal(series_uid, sop_uid)        # its series waits for it to come again

    def _count_outcomes(self, outcomes: list[RecordOutcome]) -> None:
        for outcome in outcomes:
            self.metrics.instances.labels(outcome.value).inc()

    # -- timers ------------------------------------------------------------------------------
    def _complete_due(self) -> None:
        completed = self.ledger.complete_due(self.clock(), self.cfg.series.refused_wait_s)
        for uid in completed:
            logger.info("series %s complete (quiet for %.1f s)", uid, self.cfg.series.quiet_period_s)
        if completed and self._synth_stage is not None:
            self._synth_stage.wake.set()

    def _retention_sweep(self) -> None:
        """Finished work older than retention.done_days goes; failed or rejected work never does here."""
        cutoff = self.clock() - self.cfg.retention.done_days * 86400
        for source_uid, derived_uid in self.ledger.purge_done(cutoff):
            self.spool.remove_source(source_uid)
            self.spool.remove_derived(derived_uid)
            logger.info("retention: removed series %s and its derived series %s", source_uid, derived_uid)

    def _heartbeat(self) -> None:
        """Keep our leases alive while we work; a killed process stops renewing and loses them."""
        self.ledger.renew_owner(self.owner, self.clock(), self.lease_s)

    def _sweep_leases(self) -> None:
        if n := self.ledger.reclaim_expired(self.clock()):
            logger.warning("re-queued %d job(s) whose lease expired", n)
            if self._synth_stage is not None:
                self._synth_stage.wake.set()

    def _supervise(self) -> None:
        self.supervisor.check()

    def _wake_senders(self) -> None:
        for stage in self._send_stages:
            stage.wake.set()


def run_until_signalled(node: Node, stop_event: threading.Event) -> None:
    node.start()
    try:
        while not stop_event.wait(timeout=1.0):
            pass
    finally:
        node.stop()



