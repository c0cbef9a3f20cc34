"""Prometheus metrics: counters fed by the pipeline, gauges read from the ledger at scrape time."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicom_node.assocguard import SlotUsage
from dicom_node.ledger import Ledger, SelfCheckRecord, queries

WEB_AUTH_KINDS = ("login", "bearer")
SYNTH_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
CHECK_OUTCOMES = ("passed", "fallback", "rejected")
CONSISTENCY_BUCKETS_DB = (10, 20, 25, 30, 35, 38, 40, 42, 45, 50, 60)
LUNG_BIAS_BUCKETS_HU = (-50, -30, -20, -15, -10, -5, -2, 0, 2, 5, 10, 15, 20, 30, 50)
OFFAXIS_GAIN_BUCKETS_DB = (-5, -2, -1, 0, 1, 2, 3, 4, 5, 10)


class _LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, storage_dir: Path) -> None:
        self._ledger, self._storage_dir = ledger, storage_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("dicom_node_series", "Series in the ledger by state", labels=["state"])
        for state, n in sorted(queries.series_counts(self._ledger.engine).items()):   # every state, 0 too
            by_state.add_metric([state], n)
        yield by_state
        queues = GaugeMetricFamily("dicom_node_send_queue", "Send jobs by destination and state",
                                   labels=["destination", "state"])
        for dest, counts in sorted(queries.send_counts(self._ledger.engine, []).items()):
            for state, n in sorted(counts.items()):
                queues.add_metric([dest, state], n)
        yield queues
        usage = shutil.disk_usage(self._storage_dir)
        disk = GaugeMetricFamily("dicom_node_disk_used_ratio", "Used fraction of the storage_dir file system")
        disk.add_metric([], usage.used / usage.total)
        yield disk


class _AssociationCollector(Collector):
    def __init__(self, usage: Callable[[], SlotUsage]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = self._usage()
        by_state = GaugeMetricFamily("dicom_node_associations", "DICOM connections: active (holding an association "
                                     "slot) or pending (accepted, not associated yet)", labels=["state"])
        by_state.add_metric(["active"], usage.active)
        by_state.add_metric(["pending"], usage.pending)
        yield by_state
        slots = GaugeMetricFamily("dicom_node_association_slots", "Association slots (node.max_associations)")
        slots.add_metric([], usage.max_associations)
        yield slots


class NodeMetrics:
    """One registry per node (tests run several nodes in one process)."""

    def __init__(self, ledger: Ledger, storage_dir: Path) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Counter("dicom_node_instances_received", "C-STORE instances stored, by outcome",
                                 ["outcome"], registry=r)
        self.refused = Counter("dicom_node_stores_refused", "C-STORE requests answered with a failure status",
                               ["status"], registry=r)
        self.series = Counter("dicom_node_series_processed", "Series processed, by result", ["result"], registry=r)
        self.synth_seconds = Histogram("dicom_node_synthesis_seconds", "Seconds to synthesize one series",
                                       buckets=SYNTH_BUCKETS_S, registry=r)
        self.send_attempts = Counter("dicom_node_send_attempts", "Send attempts per destination",
                                     ["destination"], registry=r)
        self.send_failures = Counter("dicom_node_send_failures", "Failed send attempts per destination",
                                     ["destination"], registry=r)
        self.web_auth_failures = Counter("dicom_node_web_auth_failures",
                                         "Failed web logins and wrong bearer tokens, by kind", ["kind"], registry=r)
        self.web_auth_refused = Counter("dicom_node_web_auth_refused",
                                        "Credentials refused unread (429) from a locked-out address, by kind",
                                        ["kind"], registry=r)
        for kind in WEB_AUTH_KINDS:                 # present at 0 from the start, for rate() and alerts
            self.web_auth_failures.labels(kind)
            self.web_auth_refused.labels(kind)
        self.web_lockouts = Counter("dicom_node_web_lockouts", "Addresses locked out after failed authentication",
                                    registry=r)
        self.web_locked_addresses = Gauge("dicom_node_web_locked_addresses",
                                          "Addresses locked out of web authentication now", registry=r)
        self.web_body_refused = Counter("dicom_node_web_bodies_refused",
                                        "HTTP requests refused with 413: body above web.max_body_bytes", registry=r)
        self.web_previews_busy = Counter("dicom_node_web_previews_busy",
                                         "Preview requests answered 503 because the renderer was busy", registry=r)
        self.webhooks = Counter("dicom_node_webhook_events", "Webhook events by receiver and result (delivered, "
                                "failed: gave up after retries, dropped: the receiver's queue was full)",
                                ["webhook", "result"], registry=r)
        self.connections_refused = Counter("dicom_node_connections_refused",
                                           "DICOM connections or associations refused, by reason", ["reason"],
                                           registry=r)
        self.self_checks = Counter("dicom_node_self_checks", "Self-checks of derived volumes, by backend and "
                                   "result (passed, failed)", ["backend", "result"], registry=r)
        self.self_check_outcomes = Counter("dicom_node_self_check_outcomes", "Series by self-check outcome: passed, "
                                           "fallback (interpolation sent instead), rejected", ["outcome"], registry=r)
        for outcome in CHECK_OUTCOMES:
            self.self_check_outcomes.labels(outcome)
        self.consistency_db = Histogram("dicom_node_self_check_consistency_db", "Self-check: PSNR of the derived "
                                        "volume re-thickened against its input (dB)", ["backend"],
                                        buckets=CONSISTENCY_BUCKETS_DB, registry=r)
        self.lung_bias_hu = Histogram("dicom_node_self_check_lung_bias_hu", "Self-check: mean HU in the lungs, "
                                      "re-thickened derived minus input", ["backend"],
                                      buckets=LUNG_BIAS_BUCKETS_HU, registry=r)
        self.offaxis_gain_db = Histogram("dicom_node_self_check_offaxis_gain_db", "A backend's off-axis validation "
                                         "PSNR minus BIS's on the same held-out images (dB)", ["backend"],
                                         buckets=OFFAXIS_GAIN_BUCKETS_DB, registry=r)
        r.register(_LedgerCollector(ledger, storage_dir))

    def observe_checks(self, checks: Sequence[SelfCheckRecord], outcome: str) -> None:
        """Count one series' self-checks and its outcome (passed, fallback or rejected); figures only."""
        if outcome not in CHECK_OUTCOMES:
            raise ValueError(f"self-check outcome must be one of {CHECK_OUTCOMES}, got {outcome!r}")
        self.self_check_outcomes.labels(outcome).inc()
        for c in checks:
            self.self_checks.labels(c.backend, "passed" if c.passed else "failed").inc()
            self.consistency_db.labels(c.backend).observe(c.consistency_db)
            if c.lung_bias_hu is not None:
                self.lung_bias_hu.labels(c.backend).observe(c.lung_bias_hu)
            if c.offaxis_psnr_db is not None and c.offaxis_bis_psnr_db is not None:
                self.offaxis_gain_db.labels(c.backend).observe(c.offaxis_psnr_db - c.offaxis_bis_psnr_db)

    def watch_associations(self, usage: Callable[[], SlotUsage]) -> None:
        """Report the Storage SCP's association slots (dicom_node_associations{state})."""
        self.registry.register(_AssociationCollector(usage))

    def watch_reserve(self, reserved_bytes: Callable[[], int], writes: Callable[[], tuple[int, int]]) -> None:
        """Report the spool reserve: bytes held, and received instances written into it or not."""
        Gauge("dicom_node_spool_reserve_bytes", "Bytes of finished files kept to be overwritten by received "
              "ones (node.spool_reserve_mb)", registry=self.registry).set_function(lambda: float(reserved_bytes()))
        puts = Gauge("dicom_node_spool_reserve_writes", "Received instances since start written into a reserved "
                     "file (reused) or a new one (new)", ["kind"], registry=self.registry)
        puts.labels("reused").set_function(lambda: float(writes()[0]))
        puts.labels("new").set_function(lambda: float(writes()[1]))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)



