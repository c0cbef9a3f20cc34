"""The `[node]` table: one flat TOML table (the key names administrators write), grouped in the code
into typed parts by concern. `NodeSection.PARTS` says which part holds which key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar

from dicom_node.config.checks import MAX_TIMEOUT_S, MIB, check_ae, check_port, check_positive_upto

_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DEFAULT_MAX_PDU = MIB               # bench/README.md "max_pdu": larger PDUs receive faster; 1 MiB is past the knee
MAX_SPOOL_RESERVE_MB = 1 << 16          # 64 GiB
MIN_MAX_PDU, MAX_MAX_PDU = 16 * 1024, 16 * MIB


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the node is: its AE title on the network, and the UID root of what it makes."""

    ae_title: str = "SYNTHNODE"
    uid_root: str = ""               # empty: UUID-derived UIDs under 2.25

    def __post_init__(self) -> None:
        check_ae("node.ae_title", self.ae_title)
        if self.uid_root and (not _UID_ROOT_RE.match(self.uid_root) or len(self.uid_root) > 24):
            raise ValueError(f"node.uid_root must be a dotted numeric UID root of at most 24 characters, "
                             f"got {self.uid_root!r}")


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the Storage SCP listens, who may call it, and its DICOM TLS."""

    host: str = "127.0.0.1"
    port: int = 11112
    allow_any_caller: bool = False   # required for a non-loopback listener without an allow-list
    allowed_callers: list[str] = field(default_factory=list)   # "AE" or "AE@host"; empty = any
    tls_cert: str = ""               # PEM certificate: the SCP speaks DICOM TLS when set
    tls_key: str = ""
    tls_ca: str = ""                 # when set, callers must present a certificate signed by it

    def __post_init__(self) -> None:
        check_port("node.port", self.port)
        for entry in self.allowed_callers:
            ae, _, host = entry.partition("@")
            check_ae("node.allowed_callers entry", ae)
            if "@" in entry and not host:
                raise ValueError(f"node.allowed_callers entry {entry!r} has an empty host after '@'")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("node.tls_cert and node.tls_key must be set together")
        if self.tls_ca and not self.tls_cert:
            raise ValueError("node.tls_ca needs node.tls_cert and node.tls_key")

    def caller_allowed(self, ae_title: str, host: str) -> bool:
        if not self.allowed_callers:
            return True
        for entry in self.allowed_callers:
            ae, _, allowed_host = entry.partition("@")
            if ae == ae_title.strip() and (not allowed_host or allowed_host == host):
                return True
        return False

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Timing:
    """How long the SCP waits on a peer, and how often it polls a busy association."""

    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    receive_poll_us: int = 20        # how often a busy association is polled (pynetdicom: 1000); see polling.py

    def __post_init__(self) -> None:
        check_positive_upto("node.dimse_timeout_s", self.dimse_timeout_s, MAX_TIMEOUT_S, "one hour")
        check_positive_upto("node.network_timeout_s", self.network_timeout_s, MAX_TIMEOUT_S, "one hour")
        if not 1 <= self.receive_poll_us <= 1000:
            raise ValueError(f"node.receive_poll_us must be in 1-1000, got {self.receive_poll_us}")


@dataclass(frozen=True, slots=True)
class AssociationPolicy:
    """Bounds a peer cannot exceed (deploy/README.md "Association policy"; dicom_node/assocguard.py)."""

    max_pdu: int = DEFAULT_MAX_PDU   # bytes; the longest P-DATA PDU we accept (0: deprecated, the default)
    max_associations: int = 32       # established associations at once; more are refused (local limit)
    max_pending: int = 64            # connections not yet associated, all peers together
    max_pending_per_address: int = 16   # ... and from one peer address; more are closed at once
    association_request_timeout_s: float = 5.0   # accept (and TLS handshake) to a complete A-ASSOCIATE-RQ
    pdu_read_timeout_s: float = 30.0  # a PDU, once its first byte has come, must be complete within this
    max_dataset_mb: int = 64         # a C-STORE data set (inflated, if deflated) above this: 0xA700

    def __post_init__(self) -> None:
        if self.max_pdu != 0 and not MIN_MAX_PDU <= self.max_pdu <= MAX_MAX_PDU:
            raise ValueError(f"node.max_pdu must be in {MIN_MAX_PDU}-{MAX_MAX_PDU} bytes (or 0, deprecated: "
                             f"the default {DEFAULT_MAX_PDU}), got {self.max_pdu}")
        if not 1 <= self.max_associations <= 1000:
            raise ValueError(f"node.max_associations must be in 1-1000, got {self.max_associations}")
        if not 1 <= self.max_pending <= 10000:
            raise ValueError(f"node.max_pending must be in 1-10000, got {self.max_pending}")
        if not 1 <= self.max_pending_per_address <= self.max_pending:
            raise ValueError(f"node.max_pending_per_address must be in 1-node.max_pending ({self.max_pending}), "
                             f"got {self.max_pending_per_address}")
        if not 0 < self.association_request_timeout_s <= 120:
            raise ValueError(f"node.association_request_timeout_s must be in (0, 120], "
                             f"got {self.association_request_timeout_s}")
        if not 0 < self.pdu_read_timeout_s <= 600:
            raise ValueError(f"node.pdu_read_timeout_s must be in (0, 600], got {self.pdu_read_timeout_s}")
        if not 1 <= self.max_dataset_mb <= 4096:
            raise ValueError(f"node.max_dataset_mb must be in 1-4096, got {self.max_dataset_mb}")

    @property
    def max_pdu_bytes(self) -> int:
        """The maximum PDU length the SCP negotiates and enforces; `max_pdu = 0` means the default."""
        return self.max_pdu or DEFAULT_MAX_PDU

    @property
    def max_dataset_bytes(self) -> int:
        return self.max_dataset_mb * MIB


@dataclass(frozen=True, slots=True)
class Storage:
    """Where the spool and the ledger live, and how carefully they are written."""

    storage_dir: str = "var"
    disk_watermark: float = 0.95     # refuse stores (0xA700) above this fraction of the disk in use
    fsync: bool = True               # flush each received file to disk before answering success
    spool_reserve_mb: int = 512      # finished files kept to be overwritten by received ones (0: off); reserve.py

    def __post_init__(self) -> None:
        if not self.storage_dir:
            raise ValueError("node.storage_dir must not be empty")
        if not 0 <= self.spool_reserve_mb <= MAX_SPOOL_RESERVE_MB:
            raise ValueError(f"node.spool_reserve_mb must be in 0-{MAX_SPOOL_RESERVE_MB} (0 turns the reserve off), "
                             f"got {self.spool_reserve_mb}")
        if not 0 < self.disk_watermark <= 1:
            raise ValueError(f"node.disk_watermark must be in (0, 1], got {self.disk_watermark}")


@dataclass(frozen=True, slots=True)
class Roles:
    """What this process does (several may share one ledger and storage)."""

    receive: bool = True             # false: a worker that only synthesizes and sends
    process: bool = True             # false: a receiver that only stores and queues

    def __post_init__(self) -> None:
        if not (self.receive or self.process):
            raise ValueError("node.receive and node.process cannot both be false")


@dataclass(frozen=True, slots=True)
class NodeSection:
    identity: Identity = field(default_factory=Identity)
    listen: Listener = field(default_factory=Listener)
    timing: Timing = field(default_factory=Timing)
    associations: AssociationPolicy = field(default_factory=AssociationPolicy)
    storage: Storage = field(default_factory=Storage)
    roles: Roles = field(default_factory=Roles)

    PARTS: ClassVar[tuple[tuple[str, type], ...]] = (
        ("identity", Identity), ("listen", Listener), ("timing", Timing), ("associations", AssociationPolicy),
        ("storage", Storage), ("roles", Roles))

    @classmethod
    def key_parts(cls) -> dict[str, str]:
        """TOML key under [node] → the part that holds it."""
        return {f.name: part for part, part_cls in cls.PARTS for f in dataclasses.fields(part_cls)}

    def updated(self, **changes: object) -> NodeSection:
        """A copy with some [node] keys changed, named as in the TOML (e.g. port=11113, process=False)."""
        owner = self.key_parts()
        if unknown := sorted(changes.keys() - owner.keys()):
            raise ValueError(f"no [node] option(s) {unknown}")
        by_part: dict[str, dict[str, object]] = {}
        for key, value in changes.items():
            by_part.setdefault(owner[key], {})[key] = value
        return dataclasses.replace(self, **{part: dataclasses.replace(getattr(self, part), **values)
                                            for part, values in by_part.items()})

    def flat(self) -> dict[str, object]:
        """The section as the flat [node] table it was written as (for check-config)."""
        out: dict[str, object] = {}
        for part, _cls in self.PARTS:
            out.update(dataclasses.asdict(getattr(self, part)))
        return out
