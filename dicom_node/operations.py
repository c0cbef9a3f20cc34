"""What people and monitors may do with a running node: read its state, act on its series, check it.

The dashboard, the JSON API and /readyz use an `Operations` (built by the node), never the node
itself: they read through the ledger's read model, act through `dicom_node.admin`, check a
destination through its sender, and learn readiness and the model from here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from dicom_node import admin
from dicom_node.assocguard import SlotUsage
from dicom_node.config import NodeConfig
from dicom_node.disk import DiskGuard
from dicom_node.ledger import Ledger
from dicom_node.ledger.queries import ping
from dicom_node.metrics import NodeMetrics
from dicom_node.receive import STATUS_SUCCESS
from dicom_node.senders import CheckResult, SenderContext, build_sender
from dicom_node.spool import Spool
from dicom_node.stage import StageHealth
from synth.seam import Synthesizer


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    backend: str
    name: str
    version: str
    weights_sha256: str
    is_model: bool
    device: str
    precision: str
    factor: int


@dataclass(frozen=True, slots=True)
class DestinationInfo:
    name: str
    kind: str          # "dicom", "folder", ...
    target: str        # AE@host:port, the folder path, ...


@dataclass(frozen=True, slots=True)
class StorageDirs:
    root: Path
    incoming: Path
    rejected: Path
    derived: Path
    watermark: float


class Operations:
    def __init__(self, cfg: NodeConfig, *, ledger: Ledger, spool: Spool, metrics: NodeMetrics, owner: str,
                 clock: Callable[[], float], synthesizer: Synthesizer, disk_guard: DiskGuard,
                 stage_health: Callable[[], list[StageHealth]], dicom_port: Callable[[], int | None],
                 slot_usage: Callable[[], SlotUsage] | None) -> None:
        self.cfg, self.metrics, self.owner, self.clock = cfg, metrics, owner, clock
        self._ledger, self._spool, self._synthesizer, self._disk_guard = ledger, spool, synthesizer, disk_guard
        self._stage_health, self._dicom_port, self._slot_usage = stage_health, dicom_port, slot_usage
        self._sender_context = SenderContext(cfg.node.identity.ae_title, cfg.send.timeout_s)

    # -- reading -------------------------------------------------------------------------------
    @property
    def ledger_engine(self) -> Engine:
        """The ledger's engine, for the read model (`dicom_node.ledger.queries`)."""
        return self._ledger.engine

    def input_files(self, series_uid: str) -> list[Path]:
        return self._spool.instance_files(series_uid)

    def output_files(self, derived_series_uid: str) -> list[Path]:
        return self._spool.derived_files(derived_series_uid)

    def storage(self) -> StorageDirs:
        spool = self._spool
        return StorageDirs(spool.root, spool.incoming, spool.rejected, spool.derived,
                           self.cfg.node.storage.disk_watermark)

    def dicom_port(self) -> int | None:
        return self._dicom_port()

    def model(self) -> ModelInfo:
        synthesizer = self._synthesizer
        identity = synthesizer.identity
        device = getattr(synthesizer, "device", None)
        autocast = getattr(synthesizer, "autocast_dtype", None)
        if device is None:
            device_text = "cpu (numpy)" if identity.backend == "interpolation" else self.cfg.synth.device
        else:
            device_text = str(device)
        precision = "fp32" if autocast is None else str(autocast).removeprefix("torch.")
        return ModelInfo(identity.backend, identity.name, identity.version, identity.weights_sha256,
                         identity.is_model, device_text, precision, int(synthesizer.factor))

    def destinations(self) -> list[DestinationInfo]:
        senders = [build_sender(dest, self._sender_context) for dest in self.cfg.all_destinations()]
        return [DestinationInfo(s.name, s.kind, s.describe()) for s in senders]

    def readiness(self, engine: Engine) -> list[Check]:
        """Ledger reachable, disk below the watermark, synthesizer loaded, every stage running and not
        backing off, DICOM listener up and its association slots (when receiving)."""
        checks = [_ledger_check(engine), self._disk_check()]
        identity = self._synthesizer.identity
        checks.append(Check("synthesizer", True, f"{identity.backend} {identity.version}"))
        checks.extend(Check(h.name, h.ok, h.detail) for h in self._stage_health())
        if self.cfg.node.roles.receive:
            port = self._dicom_port()
            checks.append(Check("dicom", port is not None, f"{self.cfg.node.identity.ae_title} on port {port}"
                                if port is not None else "the DICOM listener is not running"))
            if self._slot_usage is not None:
                checks.append(association_check(self._slot_usage()))
        return checks

    def _disk_check(self) -> Check:
        try:
            usage = shutil.disk_usage(self._spool.root)
        except OSError as exc:
            return Check("disk", False, f"storage folder unreadable: {exc.strerror}")
        ok = self._disk_guard() == STATUS_SUCCESS
        watermark = self.cfg.node.storage.disk_watermark
        return Check("disk", ok, f"{usage.used / usage.total:.1%} used, watermark {watermark:.0%}"
                     + ("" if ok else ": refusing C-STORE with 0xA700"))

    # -- acting --------------------------------------------------------------------------------
    def act(self, action: str, series_uid: str, *, destination: str | None = None) -> admin.Done:
        """retry | resend | discard (dicom_node.admin); AdminError says why one cannot be done."""
        return admin.perform(self._ledger, self._spool, action, series_uid, now=self.clock(),
                             destinations=self.cfg.destination_names(), destination=destination)

    def check_destination(self, name: str) -> CheckResult:
        """C-ECHO, folder writable, ...: what the destination's kind checks; KeyError for an unknown name."""
        dest = next((d for d in self.cfg.all_destinations() if d.name == name), None)
        if dest is None:
            raise KeyError(f"no destination named {name!r} is configured")
        return build_sender(dest, self._sender_context).check()

    def destination_names(self) -> Sequence[str]:
        return self.cfg.destination_names()


def _ledger_check(engine: Engine) -> Check:
    try:
        ping(engine)
    except Exception as exc:  # any database failure makes the node unready; say which kind
        return Check("ledger", False, f"ledger unreachable: {type(exc).__name__}")
    return Check("ledger", True, engine.url.get_backend_name())


def association_check(usage: SlotUsage) -> Check:
    """Association slots in use. Always ok: a full house is load, not a fault (the node serves every
    association it holds, and refuses more with a transient local-limit rejection that the caller
    retries); a 503 would also let a peer that fills the slots take the node out of a balancer."""
    detail = (f"{usage.active} of {usage.max_associations} association slots in use, "
              f"{usage.pending} connection(s) waiting to associate")
    if usage.full:
        detail += ": new associations are refused (local limit exceeded) until a slot frees"
    return Check("associations", True, detail)
