"""Reading a config: TOML → validated frozen sections, with file and dotted key in every message."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.config.destinations import (
    Destination,
    DestinationSection,
    DicomwebDestinationSection,
    FolderDestinationSection,
)
from dicom_node.config.node import NodeSection
from dicom_node.config.rules import RuleSection, parse_rules
from dicom_node.config.sections import (
    DatabaseSection,
    RetentionSection,
    SelfCheckSection,
    SendSection,
    SeriesSection,
    SkipIfThinSection,
    WebSection,
)
from dicom_node.config.webhooks import WebhookSection
from dicom_node.errors import ConfigError
from synth.config import SR4ZCTConfig, SynthConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "node.toml"
SELF_CHECK_KEYS = tuple(f.name for f in dataclasses.fields(SelfCheckSection))   # [synth] keys the node owns
SECRET_WORDS = ("token", "password", "secret")    # option names whose values check-config never prints


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    series: SeriesSection = field(default_factory=SeriesSection)
    synth: SynthConfig = field(default_factory=SynthConfig)
    self_check: SelfCheckSection = field(default_factory=SelfCheckSection)   # written in [synth]
    send: SendSection = field(default_factory=SendSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    web: WebSection = field(default_factory=WebSection)
    destinations: tuple[DestinationSection, ...] = ()
    folder_destinations: tuple[FolderDestinationSection, ...] = ()
    dicomweb_destinations: tuple[DicomwebDestinationSection, ...] = ()
    rules: tuple[RuleSection, ...] = ()       # empty: every series goes to every destination
    webhooks: tuple[WebhookSection, ...] = ()
    source: str = ""                  # the file it came from, for messages
    deprecations: tuple[str, ...] = ()   # deprecated keys used, with what they map onto (logged, check-config)

    @property
    def storage_dir(self) -> Path:
        return Path(self.node.storage.storage_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.storage_dir / 'state.db'}"

    def all_destinations(self) -> list[Destination]:
        """Every configured destination, of every kind, in config order by kind (names are unique across kinds)."""
        return [*self.destinations, *self.folder_destinations, *self.dicomweb_destinations]

    def destination_names(self) -> list[str]:
        return [d.name for d in self.all_destinations()]

    def backends(self) -> list[str]:
        """Every synthesis backend the node may use: [synth] backend first, then the rules' own."""
        names = [self.synth.backend]
        for rule in self.rules:
            if rule.backend and rule.backend not in names:
                names.append(rule.backend)
        return names

    def assembly_spacing_mm(self) -> tuple[float, float]:
        """The slice spacing assembly accepts: what any backend in use accepts. The routed backend's own
        range (`synth.spacing_range_for`) is checked once the rule is known."""
        ranges = [self.synth.spacing_range_for(name) for name in self.backends()]
        return (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))

    def spacing_refusal(self, backend: str, spacing_mm: float) -> str | None:
        """Why `backend` does not take a series at `spacing_mm` (the detail of `spacing_out_of_range`), or None."""
        lo, hi = self.synth.spacing_range_for(backend)
        if lo <= spacing_mm <= hi:
            return None
        return (f"slice spacing {spacing_mm:.3f} mm is outside {lo}-{hi} mm, the range of backend {backend} "
                "(synth.min/max_input_spacing_mm)")


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


def _node_section(raw: Any, where: str, base: Path) -> NodeSection:
    """The flat [node] table into NodeSection's parts; paths resolved against `base`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    owner = NodeSection.key_parts()
    if unknown := sorted(raw.keys() - owner.keys()):
        raise ConfigError(f"{where}: unknown option(s) {unknown}")
    parts: dict[str, Any] = {name: _section(cls, {k: v for k, v in raw.items() if owner[k] == name}, where)
             for name, cls in NodeSection.PARTS}
    node = NodeSection(**parts)
    storage, listen = node.storage, node.listen
    return dataclasses.replace(
        node, storage=dataclasses.replace(storage, storage_dir=_resolve(base, storage.storage_dir)),
        listen=dataclasses.replace(listen, tls_cert=_resolve_opt(base, listen.tls_cert),
                                   tls_key=_resolve_opt(base, listen.tls_key),
                                   tls_ca=_resolve_opt(base, listen.tls_ca)))


def _resolve(base: Path, path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_opt(base: Path, path: str) -> str:
    return _resolve(base, path) if path else ""


def _synth_section(raw: Any, series: SeriesSection, where: str, base: Path) -> tuple[SynthConfig, tuple[str, ...]]:
    """[synth] with its [synth.sr4zct] table; the deprecated [series] spacing keys mapped onto it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    flat = {k: v for k, v in raw.items() if k != "sr4zct"}
    sub = _section(SR4ZCTConfig, raw.get("sr4zct", {}), f"{where}.sr4zct")
    if sub.weights:
        sub = dataclasses.replace(sub, weights=_resolve(base, sub.weights))
    if flat.get("weights"):
        flat["weights"] = _resolve(base, str(flat["weights"]))
    notes: list[str] = []
    if series.min_spacing_mm or series.max_spacing_mm:
        legacy = dict(zip(("min_input_spacing_mm", "max_input_spacing_mm"), series.legacy_spacing_mm, strict=True))
        for old, new in (("min_spacing_mm", "min_input_spacing_mm"), ("max_spacing_mm", "max_input_spacing_mm")):
            given = bool(getattr(series, old))
            if new in flat:
                note = f"series.{old} is deprecated and ignored: synth.{new} is set"
            else:
                flat[new] = legacy[new]     # both ends, a missing one at its old default, as before
                note = f"series.{old} is deprecated: read as synth.{new} = {legacy[new]:g}"
            if given:
                notes.append(note + " (one spacing range per backend, reason spacing_out_of_range)")
    synth = _section(SynthConfig, flat, where)
    return dataclasses.replace(synth, sr4zct=sub), tuple(notes)


def parse_config(raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> NodeConfig:
    """Validate a parsed TOML document. Relative paths are resolved against `base_dir`."""
    known = {"node", "series", "synth", "send", "retention", "database", "web", "destinations",
             "folder_destinations", "dicomweb_destinations", "rules", "webhooks"}
    if unknown := sorted(raw.keys() - known):
        raise ConfigError(f"{source}: unknown section(s) {unknown}")
    base = base_dir or Path.cwd()
    node = _node_section(raw.get("node", {}), f"{source}: node", base)
    series = _series_section(raw.get("series", {}), f"{source}: series")
    synth_raw = dict(raw.get("synth", {})) if isinstance(raw.get("synth", {}), dict) else raw.get("synth")
    check_raw = {key: synth_raw.pop(key) for key in SELF_CHECK_KEYS if key in synth_raw} \
        if isinstance(synth_raw, dict) else {}
    synth, deprecations = _synth_section(synth_raw, series, f"{source}: synth", base)
    dests_raw = raw.get("destinations", [])
    folders_raw = raw.get("folder_destinations", [])
    web_raw = raw.get("dicomweb_destinations", [])
    for key, value in (("destinations", dests_raw), ("folder_destinations", folders_raw),
                       ("dicomweb_destinations", web_raw)):
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
    webs = tuple(
        dataclasses.replace(w, ca_file=_resolve_opt(base, w.ca_file))
        for w in (
            _section(DicomwebDestinationSection, d, f"{source}: dicomweb_destinations[{i}]")
            for i, d in enumerate(web_raw)
        )
    )
    names = [d.name for d in dests] + [f.name for f in folders] + [w.name for w in webs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{source}: destination names must be unique, repeated: {dupes}")
    cfg = NodeConfig(
        node=node,
        series=series,
        synth=synth,
        self_check=_section(SelfCheckSection, check_raw, f"{source}: synth"),
        send=_section(SendSection, raw.get("send", {}), f"{source}: send"),
        retention=_section(RetentionSection, raw.get("retention", {}), f"{source}: retention"),
        database=_section(DatabaseSection, raw.get("database", {}), f"{source}: database"),
        web=_section(WebSection, raw.get("web", {}), f"{source}: web"),
        destinations=dests,
        folder_destinations=folders,
        dicomweb_destinations=webs,
        webhooks=_webhooks(raw.get("webhooks", []), source, base),
        source=source,
        deprecations=deprecations,
    )
    # Rules and skip_if_thin name destinations: looked up through all_destinations(), so every kind joins.
    cfg = dataclasses.replace(cfg, rules=parse_rules(raw.get("rules", []), source, cfg.destination_names()))
    _check_skip_if_thin(cfg)
    listen = node.listen
    if not listen.is_loopback and not listen.allowed_callers and not listen.allow_any_caller:
        raise ConfigError(
            f"{source}: node.host {listen.host!r} listens beyond loopback with an empty node.allowed_callers; "
            "list the calling AE titles, or set node.allow_any_caller = true explicitly"
        )
    return cfg


def _series_section(raw: Any, where: str) -> SeriesSection:
    if not isinstance(raw, dict) or "skip_if_thin" not in raw:
        return _section(SeriesSection, raw, where)
    rest = {k: v for k, v in raw.items() if k != "skip_if_thin"}
    skip = _section(SkipIfThinSection, raw["skip_if_thin"], f"{where}.skip_if_thin")
    return dataclasses.replace(_section(SeriesSection, rest, where), skip_if_thin=skip)


def _check_skip_if_thin(cfg: NodeConfig) -> None:
    skip = cfg.series.skip_if_thin
    if skip is None or any(d.name == skip.destination for d in cfg.destinations):
        return
    kind = "is not a DICOM ([[destinations]]) destination" if skip.destination in cfg.destination_names() \
        else "is not a configured destination"
    raise ConfigError(f"{cfg.source}: series.skip_if_thin.destination: {skip.destination!r} {kind}; C-FIND needs "
                      f"one of {[d.name for d in cfg.destinations]}")


def _webhooks(raw: Any, source: str, base: Path) -> tuple[WebhookSection, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: webhooks must be an array of tables ([[webhooks]])")
    hooks = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and item.get("ca_file"):
            item = {**item, "ca_file": _resolve(base, str(item["ca_file"]))}
        hooks.append(_section(WebhookSection, item, f"{source}: webhooks[{i}]"))
    labels = [h.label for h in hooks]
    if dupes := sorted({n for n in labels if labels.count(n) > 1}):
        raise ConfigError(f"{source}: webhooks: two webhooks share the name {dupes}; give each a webhooks.name")
    return tuple(hooks)


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
    out["node"] = cfg.node.flat()             # as the [node] table is written, not its parts
    out["synth"].update(out.pop("self_check"))  # as the [synth] table is written
    out["rules"] = [rule.as_toml() for rule in cfg.rules]
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
