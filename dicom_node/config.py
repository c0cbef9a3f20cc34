"""One typed config object from one TOML file; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.errors import ConfigError
from synth.config import SynthConfig

_AE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "node.toml"
MIB = 1024 * 1024
DEFAULT_MAX_PDU = MIB               # bench/README.md "max_pdu": larger PDUs receive faster; 1 MiB is past the knee
MIN_MAX_PDU, MAX_MAX_PDU = 16 * 1024, 16 * MIB

# Upper bounds: beyond these a value is a typo, and an unbounded wait or retry loop is a hang.
MAX_TIMEOUT_S = 3600.0            # network, DIMSE and send timeouts, lease: one hour
MAX_PERIOD_S = 86400.0            # quiet period, retry delays, sweep interval: one day
MAX_ATTEMPTS = 1000               # send attempts before a send is kept as failed
MAX_DONE_DAYS = 3650.0            # retention of finished work: ten years
SECRET_WORDS = ("token", "password", "secret")    # option names whose values check-config never prints


def _check_ae(where: str, value: str) -> None:
    if not _AE_RE.match(value):
        raise ValueError(f"{where} must be 1-16 printable ASCII characters without backslash, got {value!r}")


def _check_port(where: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{where} must be a TCP port 0-65535, got {value}")


def _check_range(where: str, value: float, upper: float, what: str) -> None:
    """`value` in (0, upper]; written so that NaN fails too."""
    if not 0 < value <= upper:
        raise ValueError(f"{where} must be positive and at most {upper:g} ({what}), got {value}")


def _check_int_range(where: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be {lo}-{hi}, got {value}")


def _check_float_range(where: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:          # also false for nan
        raise ValueError(f"{where} must be between {lo:g} and {hi:g}, got {value}")


@dataclass(frozen=True, slots=True)
class NodeSection:
    ae_title: str = "SYNTHNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    storage_dir: str = "var"
    uid_root: str = ""               # empty: UUID-derived UIDs under 2.25
    max_pdu: int = DEFAULT_MAX_PDU   # bytes; the longest P-DATA PDU we accept (0: deprecated, the default)
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    receive_poll_us: int = 20        # how often a busy association is polled (pynetdicom: 1000); see polling.py
    allow_any_caller: bool = False   # required for a non-loopback listener without an allow-list
    allowed_callers: list[str] = field(default_factory=list)   # "AE" or "AE@host"; empty = any
    disk_watermark: float = 0.95     # refuse stores (0xA700) above this fraction of the disk in use
    fsync: bool = True               # flush each received file to disk before answering success
    receive: bool = True             # false: a worker that only synthesizes and sends
    process: bool = True             # false: a receiver that only stores and queues
    tls_cert: str = ""               # PEM certificate: the SCP speaks DICOM TLS when set
    tls_key: str = ""
    tls_ca: str = ""                 # when set, callers must present a certificate signed by it
    # Association policy (deploy/README.md "Association policy"; dicom_node/assocguard.py)
    max_associations: int = 32       # established associations at once; more are refused (local limit)
    max_pending: int = 64            # connections not yet associated, all peers together
    max_pending_per_address: int = 16   # ... and from one peer address; more are closed at once
    association_request_timeout_s: float = 5.0   # accept (and TLS handshake) to a complete A-ASSOCIATE-RQ
    pdu_read_timeout_s: float = 30.0  # a PDU, once its first byte has come, must be complete within this
    max_dataset_mb: int = 64         # a C-STORE data set (inflated, if deflated) above this: 0xA700

    def __post_init__(self) -> None:
        _check_ae("node.ae_title", self.ae_title)
        _check_port("node.port", self.port)
        if not self.storage_dir:
            raise ValueError("node.storage_dir must not be empty")
        if self.uid_root and (not _UID_ROOT_RE.match(self.uid_root) or len(self.uid_root) > 24):
            raise ValueError(f"node.uid_root must be a dotted numeric UID root of at most 24 characters, "
                             f"got {self.uid_root!r}")
        _check_range("node.dimse_timeout_s", self.dimse_timeout_s, MAX_TIMEOUT_S, "one hour")
        _check_range("node.network_timeout_s", self.network_timeout_s, MAX_TIMEOUT_S, "one hour")
        if not 1 <= self.receive_poll_us <= 1000:
            raise ValueError(f"node.receive_poll_us must be in 1-1000, got {self.receive_poll_us}")
        if not 0 < self.disk_watermark <= 1:
            raise ValueError(f"node.disk_watermark must be in (0, 1], got {self.disk_watermark}")
        for entry in self.allowed_callers:
            ae, _, host = entry.partition("@")
            _check_ae("node.allowed_callers entry", ae)
            if "@" in entry and not host:
                raise ValueError(f"node.allowed_callers entry {entry!r} has an empty host after '@'")
        if not (self.receive or self.process):
            raise ValueError("node.receive and node.process cannot both be false")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("node.tls_cert and node.tls_key must be set together")
        if self.tls_ca and not self.tls_cert:
            raise ValueError("node.tls_ca needs node.tls_cert and node.tls_key")
        self._check_association_policy()

    def _check_association_policy(self) -> None:
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
class SeriesSection:
    quiet_period_s: float = 10.0
    min_spacing_mm: float = 4.0
    max_spacing_mm: float = 6.0
    spacing_tolerance: float = 0.05   # relative deviation of one gap from the median gap
    max_tilt_deg: float = 0.5         # angle between the slice normal and the stacking direction
    min_slices: int = 2
    max_slices: int = 2000
    series_number_offset: int = 1000
    refused_wait_s: float = 3600.0    # how long a series waits for instances refused with 0xA700 to come again

    def __post_init__(self) -> None:
        _check_range("series.quiet_period_s", self.quiet_period_s, MAX_PERIOD_S, "one day")
        if not 0 <= self.refused_wait_s <= 7 * 86400:
            raise ValueError(f"series.refused_wait_s must be in [0, 604800] s, got {self.refused_wait_s}")
        if not 0 < self.min_spacing_mm <= self.max_spacing_mm:
            raise ValueError("series.min_spacing_mm must be positive and not above series.max_spacing_mm, "
                             f"got {self.min_spacing_mm} and {self.max_spacing_mm}")
        if not 0 < self.spacing_tolerance < 0.5:
            raise ValueError(f"series.spacing_tolerance must be in (0, 0.5), got {self.spacing_tolerance}")
        if not 0 <= self.max_tilt_deg < 45:
            raise ValueError(f"series.max_tilt_deg must be in [0, 45), got {self.max_tilt_deg}")
        if not 2 <= self.min_slices <= self.max_slices:
            raise ValueError(f"series.min_slices must be at least 2 and not above series.max_slices, "
                             f"got {self.min_slices} and {self.max_slices}")
        if not 0 <= self.series_number_offset < 100000:
            raise ValueError(f"series.series_number_offset must be in [0, 100000), got "
                             f"{self.series_number_offset}")


@dataclass(frozen=True, slots=True)
class SendSection:
    retry_initial_s: float = 30.0
    retry_max_s: float = 600.0
    max_attempts: int = 10
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ValueError("send.retry_initial_s must be positive and not above send.retry_max_s, "
                             f"got {self.retry_initial_s} and {self.retry_max_s}")
        _check_range("send.retry_max_s", self.retry_max_s, MAX_PERIOD_S, "one day")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"send.max_attempts must be in 1-{MAX_ATTEMPTS}, got {self.max_attempts}")
        _check_range("send.timeout_s", self.timeout_s, MAX_TIMEOUT_S, "one hour")


@dataclass(frozen=True, slots=True)
class DestinationSection:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: str = ""                 # CA bundle to verify the destination (system CAs when empty)
    tls_cert: str = ""               # client certificate, when the destination asks for one
    tls_key: str = ""

    def __post_init__(self) -> None:
        if (self.tls_ca or self.tls_cert) and not self.tls:
            raise ValueError(f"destinations.{self.name}: tls_ca/tls_cert given but tls is false")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"destinations.{self.name}.tls_cert and tls_key must be set together")
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.name):
            raise ValueError(f"destination name must be 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        _check_ae(f"destinations.{self.name}.ae_title", self.ae_title)
        _check_port(f"destinations.{self.name}.port", self.port)
        if not self.host:
            raise ValueError(f"destinations.{self.name}.host must not be empty")


@dataclass(frozen=True, slots=True)
class FolderDestinationSection:
    name: str
    path: str

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.name):
            raise ValueError(f"destination name must be 1-64 of A-Z a-z 0-9 _ . -, got {self.name!r}")
        if not self.path:
            raise ValueError(f"folder_destinations.{self.name}.path must not be empty")


@dataclass(frozen=True, slots=True)
class RetentionSection:
    done_days: float = 3.0           # finished work is cleaned up this long after it finished
    sweep_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.done_days <= MAX_DONE_DAYS:
            raise ValueError(f"retention.done_days must be in 0-{MAX_DONE_DAYS:g} (ten years), got {self.done_days}")
        _check_range("retention.sweep_interval_s", self.sweep_interval_s, MAX_PERIOD_S, "one day")


@dataclass(frozen=True, slots=True)
class DatabaseSection:
    url: str = ""                    # empty: SQLite at <storage_dir>/state.db; or postgresql+psycopg://...
    lease_s: float = 120.0           # how long claimed work stays ours without renewal

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database.url must be a sqlite:// or postgresql:// URL, got {self.url.split(':')[0]!r}")
        if not 5 <= self.lease_s <= MAX_TIMEOUT_S:
            raise ValueError(f"database.lease_s must be in 5-{MAX_TIMEOUT_S:g} (one hour), got {self.lease_s}")


@dataclass(frozen=True, slots=True)
class WebSection:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""                  # bearer token / login for actions; empty: actions disabled
    public_read: bool = True         # pages and read-only API without login
    show_patient_data: bool = False  # patient names/IDs on pages, only to logged-in users
    max_body_bytes: int = 16384      # a request body above this is refused with 413 while it is read
    auth_max_failures: int = 5       # failed logins / bearer tokens from one address before a lockout
    auth_window_s: float = 300.0     # ... counted over this window
    auth_lockout_s: float = 60.0     # the first lockout (429); each further one doubles ...
    auth_lockout_max_s: float = 3600.0   # ... up to this
    preview_max_slices: int = 256    # a preview section reads at most this many slices of a series
    preview_wait_s: float = 10.0     # how long a preview request waits for its render before 503

    def __post_init__(self) -> None:
        _check_port("web.port", self.port)
        if self.show_patient_data and not self.token:
            raise ValueError("web.show_patient_data needs web.token (patient data only to logged-in users)")
        _check_int_range("web.max_body_bytes", self.max_body_bytes, 1024, 1 << 24)
        _check_int_range("web.auth_max_failures", self.auth_max_failures, 1, 1000)
        _check_int_range("web.preview_max_slices", self.preview_max_slices, 16, 4096)
        for key, value in (("web.auth_window_s", self.auth_window_s), ("web.auth_lockout_s", self.auth_lockout_s),
                           ("web.preview_wait_s", self.preview_wait_s)):
            _check_float_range(key, value, 0.1, 86400.0)
        _check_float_range("web.auth_lockout_max_s", self.auth_lockout_max_s, self.auth_lockout_s, 7 * 86400.0)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    series: SeriesSection = field(default_factory=SeriesSection)
    synth: SynthConfig = field(default_factory=SynthConfig)
    send: SendSection = field(default_factory=SendSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    web: WebSection = field(default_factory=WebSection)
    destinations: tuple[DestinationSection, ...] = ()
    folder_destinations: tuple[FolderDestinationSection, ...] = ()
    source: str = ""                  # the file it came from, for messages

    @property
    def storage_dir(self) -> Path:
        return Path(self.node.storage_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.storage_dir / 'state.db'}"

    def all_destinations(self) -> list[DestinationSection | FolderDestinationSection]:
        """Every configured destination, of every kind, in config order by kind."""
        return [*self.destinations, *self.folder_destinations]

    def destination_names(self) -> list[str]:
        return [d.name for d in self.all_destinations()]


T = TypeVar("T")


def _section(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown := sorted(raw.keys() - names):
        raise ConfigError(f"{where}: unknown option(s) {unknown}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = hints[key]
        origin = typing.get_origin(expected)
        if expected is float and type(value) in (int, float):
            value = _finite(value, f"{where}.{key}")
        elif origin is list:
            (item_type,) = typing.get_args(expected)
            if not isinstance(value, list) or not all(type(v) is item_type for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of {item_type.__name__}, got {value!r}")
        elif type(value) is not expected:
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:   # a missing required key
        raise ConfigError(f"{where}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _finite(value: float, where: str) -> float:
    """TOML allows nan, inf and integers beyond a float: none of them is a duration or a size."""
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"{where}: must be a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    return number


def _resolve(base: Path, path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_opt(base: Path, path: str) -> str:
    return _resolve(base, path) if path else ""


def parse_config(raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> NodeConfig:
    """Validate a parsed TOML document. Relative paths are resolved against `base_dir`."""
    known = {"node", "series", "synth", "send", "retention", "database", "web", "destinations",
             "folder_destinations"}
    if unknown := sorted(raw.keys() - known):
        raise ConfigError(f"{source}: unknown section(s) {unknown}")
    base = base_dir or Path.cwd()
    node = _section(NodeSection, raw.get("node", {}), f"{source}: node")
    node = dataclasses.replace(
        node, storage_dir=_resolve(base, node.storage_dir), tls_cert=_resolve_opt(base, node.tls_cert),
        tls_key=_resolve_opt(base, node.tls_key), tls_ca=_resolve_opt(base, node.tls_ca))
    synth_raw = dict(raw.get("synth", {})) if isinstance(raw.get("synth", {}), dict) else raw.get("synth")
    if isinstance(synth_raw, dict) and synth_raw.get("weights"):
        synth_raw["weights"] = _resolve(base, str(synth_raw["weights"]))
    dests_raw = raw.get("destinations", [])
    folders_raw = raw.get("folder_destinations", [])
    for key, value in (("destinations", dests_raw), ("folder_destinations", folders_raw)):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be an array of tables ([[{key}]])")
    dests = tuple(
        dataclasses.replace(d, tls_ca=_resolve_opt(base, d.tls_ca), tls_cert=_resolve_opt(base, d.tls_cert),
                            tls_key=_resolve_opt(base, d.tls_key))
        for d in (_section(DestinationSection, d, f"{source}: destinations[{i}]") for i, d in enumerate(dests_raw))
    )
    folders = tuple(
        dataclasses.replace(f, path=_resolve(base, f.path))
        for f in (
            _section(FolderDestinationSection, d, f"{source}: folder_destinations[{i}]")
            for i, d in enumerate(folders_raw)
        )
    )
    names = [d.name for d in dests] + [f.name for f in folders]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{source}: destination names must be unique, repeated: {dupes}")
    cfg = NodeConfig(
        node=node,
        series=_section(SeriesSection, raw.get("series", {}), f"{source}: series"),
        synth=_section(SynthConfig, synth_raw, f"{source}: synth"),
        send=_section(SendSection, raw.get("send", {}), f"{source}: send"),
        retention=_section(RetentionSection, raw.get("retention", {}), f"{source}: retention"),
        database=_section(DatabaseSection, raw.get("database", {}), f"{source}: database"),
        web=_section(WebSection, raw.get("web", {}), f"{source}: web"),
        destinations=dests,
        folder_destinations=folders,
        source=source,
    )
    if not node.is_loopback and not node.allowed_callers and not node.allow_any_caller:
        raise ConfigError(
            f"{source}: node.host {node.host!r} listens beyond loopback with an empty node.allowed_callers; "
            "list the calling AE titles, or set node.allow_any_caller = true explicitly"
        )
    return cfg


def load_config(path: Path) -> NodeConfig:
    """Read and validate a TOML config file; relative paths in it are relative to the working directory."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(raw, source=str(path), base_dir=Path.cwd())


def to_dict(cfg: NodeConfig) -> dict[str, Any]:
    """The resolved config as plain data, for `check-config`: secrets show as "(set)", never in clear."""
    out = dataclasses.asdict(cfg)
    out.pop("source")
    redacted: dict[str, Any] = _redact(out)
    return redacted


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and value and any(word in key.lower() for word in SECRET_WORDS):
        return "(set)"
    if isinstance(value, str) and key == "url":
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """A database URL with its password replaced by ***, for messages and check-config."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@]*@", r"\1:***@", url)
