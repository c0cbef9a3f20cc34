"""Composition root: builds the parts, starts them in order, stops them in reverse. Nothing else.

receive (receive.StoreSCP, pynetdicom threads) → spool + recorder → completion (a timer) → synthesis
stage (one worker, owns the model) → one send stage per destination (a broken one never blocks
another); recovery at start-up, leases, retention and supervision on timers; the dashboard reads
and acts through `operations.Operations`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pynetdicom import _config as pynetdicom_config

from dicom_node.config import NodeConfig
from dicom_node.disk import DiskGuard
from dicom_node.errors import StartupError
from dicom_node.ledger import RecordOutcome, open_ledger, queries
from dicom_node.metrics import NodeMetrics
from dicom_node.operations import Operations
from dicom_node.preflight import listen_error
from dicom_node.receive import STATUS_OUT_OF_RESOURCES, StoreSCP
from dicom_node.record import InstanceRecorder
from dicom_node.recovery import Leases, lease_owner_name, recover
from dicom_node.retention import sweep_retention
from dicom_node.senders import SenderContext, build_sender
from dicom_node.sending import SendStage
from dicom_node.spool import Spool, StoredInstance
from dicom_node.stage import Stage, StageHealth, Supervisor
from dicom_node.synthesis import SynthesisStage
from dicom_node.timers import Timers
from dicom_node.transient import describe
from dicom_node.web.server import WebServer
from dicom_node.webhooks import Webhooks, event_payload, patient_fields
from synth.backends import build_synthesizer
from synth.seam import Synthesizer

logger = logging.getLogger(__name__)

# The association threads wait on the GIL behind the recorder and the workers; hand it over sooner.
SWITCH_INTERVAL_S = 0.0005
COMPLETE_EVERY_S = 0.25
SUPERVISE_EVERY_S = 1.0
RESERVE_EVERY_S = 5.0                # how often the spool reserve is topped up (only while idle; reserve.py)
LEASE_SWEEP_MAX_S = 30.0


class Node:
    def __init__(self, cfg: NodeConfig, synthesizer: Synthesizer | None = None,
                 clock: Callable[[], float] = time.time, *,
                 synthesizers: Mapping[str, Synthesizer] | None = None) -> None:
        """`synthesizer` for [synth] backend and `synthesizers` (by backend name, for the rules' other
        backends) replace what the config would build (tests)."""
        self.cfg, self.clock = cfg, clock
        reserve_mb = cfg.node.storage.spool_reserve_mb if cfg.node.roles.receive else 0
        self.spool = Spool(cfg.storage_dir, fsync=cfg.node.storage.fsync, reserve_bytes=reserve_mb << 20)
        self.ledger = open_ledger(cfg.database_url, migrate=True)    # the node serves: it migrates
        self.metrics = NodeMetrics(self.ledger, cfg.storage_dir)
        reserve = self.spool.reserve
        if reserve.enabled:
            self.metrics.watch_reserve(lambda: reserve.bytes, lambda: (reserve.taken, reserve.missed))
        self.owner = lease_owner_name()
        self.synthesizer = synthesizer if synthesizer is not None else build_synthesizer(cfg.synth)
        self.synthesizers = self._rule_synthesizers(synthesizers or {}) if cfg.node.roles.process else {}
        self.webhooks = Webhooks(cfg.webhooks, self._event_payload, delivered=self.metrics.webhooks)
        self._hook_reads = queries.read_engine(self.ledger.engine) if cfg.webhooks else None   # no write lock
        self.disk_guard = DiskGuard(cfg.storage_dir, cfg.node.storage.disk_watermark,
                                    reserved=lambda: self.spool.reserve.bytes)
        self.recorder = InstanceRecorder(self.ledger, cfg.series.quiet_period_s, clock, self._count_outcomes)
        self.scp = self._build_receiver() if cfg.node.roles.receive else None
        self.supervisor = Supervisor()
        self._synth_stage: Stage | None = None
        self._send_stages: list[Stage] = []
        if cfg.node.roles.process:
            self._build_stages()
        self.leases = Leases(self.ledger, owner=self.owner, lease_s=cfg.database.lease_s, clock=clock,
                             on_requeued=self._wake_synthesis)
        self.timers = Timers()
        self._stopping = threading.Event()       # ends a reserve fill in progress
        self.operations = Operations(cfg, ledger=self.ledger, spool=self.spool, metrics=self.metrics,
                                     owner=self.owner, clock=clock, synthesizer=self.synthesizer,
                                     disk_guard=self.disk_guard, stage_health=self.health,
                                     dicom_port=self.dicom_port,
                                     slot_usage=self.scp.slot_usage if self.scp is not None else None)
        self.web = WebServer(self.operations) if cfg.web.enabled else None

    def _build_receiver(self) -> StoreSCP:
        scp = StoreSCP(self.cfg.node, self.spool, self._on_stored, accept_store=self.disk_guard,
                       on_refused=self._on_refused,
                       on_connection_refused=lambda reason: self.metrics.connections_refused.labels(reason).inc())
        self.metrics.watch_associations(scp.slot_usage)
        return scp

    def _rule_synthesizers(self, given: Mapping[str, Synthesizer]) -> dict[str, Synthesizer]:
        """One synthesizer per backend a rule names beside [synth] backend, built (and loaded) at start-up."""
        return {name: given[name] if name in given else build_synthesizer(dataclasses.replace(self.cfg.synth,
                                                                                              backend=name))
                for name in self.cfg.backends()[1:]}

    def _event_payload(self, event: str, series_uid: str) -> dict[str, Any] | None:
        """A webhook's body (in the webhook's own thread): the series as the ledger has it now."""
        view = queries.get_series(self._hook_reads or self.ledger.engine, series_uid)
        if view is None:
            return None
        patient = patient_fields(self.spool, series_uid) if self.cfg.web.show_patient_data else None
        return event_payload(event, view, node_ae=self.cfg.node.identity.ae_title, now=self.clock(),
                             patient=patient)

    def _build_stages(self) -> None:
        context = SenderContext(self.cfg.node.identity.ae_title, self.cfg.send.timeout_s)
        for dest in self.cfg.all_destinations():
            sending = SendStage(self.cfg, build_sender(dest, context), ledger=self.ledger, spool=self.spool,
                                metrics=self.metrics, owner=self.owner, clock=self.clock,
                                notify=self.webhooks.notify)
            self._send_stages.append(self.supervisor.add(Stage(f"send-{dest.name}", sending.step)))
        synthesis = SynthesisStage(self.cfg, ledger=self.ledger, spool=self.spool, synthesizer=self.synthesizer,
                                   disk=self.disk_guard, metrics=self.metrics, owner=self.owner, clock=self.clock,
                                   on_synthesized=self._wake_senders, synthesizers=self.synthesizers,
                                   notify=self.webhooks.notify)
        self._synth_stage = self.supervisor.add(Stage("synthesis", synthesis.step))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        pynetdicom_config.PASS_CONTEXTVARS = True
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if self.web is not None:             # first: a busy web port fails start-up before anything runs
            try:
                self.web.start()
            except OSError as exc:
                raise StartupError(listen_error("web.port", self.cfg.web.host, self.cfg.web.port, exc)) from exc
        recover(self.ledger, self.spool, now=self.clock(), quiet_period_s=self.cfg.series.quiet_period_s,
                receiving=self.cfg.node.roles.receive)
        self.recorder.start()
        self.webhooks.start()
        lease_s = self.cfg.database.lease_s
        self.timers.every("complete-due", COMPLETE_EVERY_S, self._complete_due)
        self.timers.every("lease-heartbeat", lease_s / 4, self.leases.heartbeat)
        self.timers.every("lease-sweep", min(LEASE_SWEEP_MAX_S, lease_s / 4), self.leases.sweep)
        self.timers.every("retention", self.cfg.retention.sweep_interval_s, self._retention_sweep)
        self.timers.every("supervise", SUPERVISE_EVERY_S, self.supervisor.check)
        if self.spool.reserve.enabled:
            self.timers.every("spool-reserve", RESERVE_EVERY_S, self._fill_reserve, now=True)
        self.timers.start()
        self.supervisor.start()
        if self.scp is not None:
            try:
                self.scp.start()
            except OSError as exc:           # the port is taken: stop what already runs, then fail loudly
                self.stop(drain_s=1.0)
                listen = self.cfg.node.listen
                raise StartupError(listen_error("node.port", listen.host, listen.port, exc)) from exc
        for deprecation in self.cfg.deprecations:
            logger.warning("config %s: %s", self.cfg.source, deprecation)
        logger.info("node %s started: backend %s, %d destination(s)%s", self.owner,
                    self.synthesizer.identity.backend, len(self.cfg.destination_names()),
                    "" if self.scp is not None else ", worker only (not receiving)")

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let in-flight stores finish, stop the stages, release our leases."""
        self._stopping.set()
        if self.scp is not None:
            self.scp.drain(drain_s)
        self.recorder.stop(drain_s)
        if self.web is not None:
            self.web.stop()
        self.timers.stop()
        self.supervisor.stop(drain_s)
        self.webhooks.stop()
        try:
            released = self.ledger.release_owner(self.owner, self.clock())
        except Exception as exc:  # the database is away: the leases expire by themselves
            logger.error("could not release this node's leases (%s); they expire in %.0f s", describe(exc),
                         self.cfg.database.lease_s)
            return
        logger.info("node stopped; %d lease(s) released", released)

    def health(self) -> list[StageHealth]:
        """Every stage and the timers: running and not backing off (for /readyz and the dashboard)."""
        return [*self.supervisor.health(), self.timers.health()]

    def dicom_port(self) -> int | None:
        """The port the Storage SCP listens on, or None when it does not (yet, or at all)."""
        try:
            return self.scp.port if self.scp is not None else None
        except RuntimeError:                 # not started
            return None

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
        if completed:
            self._wake_synthesis()

    def _fill_reserve(self) -> None:
        written = self.spool.reserve.fill(self._stopping, room=self.disk_guard.reserve_may_grow)
        if written:
            logger.info("spool reserve topped up by %d MB to %d MB", written >> 20, self.spool.reserve.bytes >> 20)

    def _retention_sweep(self) -> None:
        sweep_retention(self.ledger, self.spool, self.cfg.retention, now=self.clock())

    def _wake_synthesis(self) -> None:
        if self._synth_stage is not None:
            self._synth_stage.wake.set()

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
