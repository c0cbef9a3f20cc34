"""What the web handlers share: the node's operations, auth, the read engine, the preview cache, templates."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import jinja2
import pydicom
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from dicom_node.ledger import queries
from dicom_node.ledger.queries import SendView, SeriesView, Throughput, read_engine
from dicom_node.operations import Check, DestinationInfo, ModelInfo, Operations
from dicom_node.web.auth import Auth, Identity
from dicom_node.web.guard import AuthGuard
from dicom_node.web.preview import VIEWS
from dicom_node.web.preview_queue import PreviewQueue
from dicom_node.web.status import (
    DiskInfo,
    DiskProbe,
    HeaderInfo,
    PatientInfo,
    ReadinessProbe,
    header_info,
    patient_info,
    software_version,
)
from dicom_node.web.throttle import AuthThrottle

HERE = Path(__file__).resolve().parent
WHICH = ("input", "output")


class NotFoundError(LookupError):
    """No such series, or its files are gone; the message says which."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeFacts:
    ae_title: str
    dicom_port: int | None
    receiving: bool
    processing: bool
    version: str
    owner: str
    started_at: float
    database: str
    public_read: bool
    actions_enabled: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    node: NodeFacts
    model: ModelInfo
    disk: DiskInfo
    series_by_state: dict[str, int]
    sends_by_destination: dict[str, dict[str, int]]
    destinations: list[DestinationInfo]
    last_hour: Throughput
    last_day: Throughput
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesDetail:
    series: SeriesView
    header: HeaderInfo | None
    patient: PatientInfo | None
    input_files: int
    output_files: int


@dataclasses.dataclass(frozen=True, slots=True)
class DestinationView:
    info: DestinationInfo
    counts: dict[str, int]
    active: list[SendView]
    failed: list[SendView]


def _fmt_time(value: float | None) -> str:
    if value is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _fmt_duration(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def _fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _short_uid(uid: str, keep: int = 14) -> str:
    return uid if len(uid) <= 2 * keep + 1 else f"{uid[:keep]}…{uid[-keep:]}"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(ts=_fmt_time, dur=_fmt_duration, size=_fmt_bytes, short=_short_uid)
    return Jinja2Templates(env=env)


class WebContext:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        cfg = ops.cfg.web
        self.auth = Auth(cfg)
        self.guard = AuthGuard(AuthThrottle.from_config(cfg), ops.metrics)
        self.engine = read_engine(ops.ledger_engine)
        self.previews = PreviewQueue(max_slices=cfg.preview_max_slices, wait_s=cfg.preview_wait_s)
        self.readiness = ReadinessProbe(ops, self.engine)
        self.disk = DiskProbe(ops)
        self.templates = _templates()
        self.started_at = time.time()

    def close(self) -> None:
        self.previews.close()
        self.readiness.close()
        if self.engine is not self.ops.ledger_engine:
            self.engine.dispose()

    def identify(self, request: Request) -> Identity:
        return self.auth.identify(request)

    def who(self, request: Request, identity: Identity) -> str:
        client = request.client.host if request.client is not None else "?"
        return f"{identity.via or 'anonymous'} from {client}"

    # -- data shared by the pages and the API ------------------------------------------------------
    def node_facts(self) -> NodeFacts:
        cfg = self.ops.cfg.node
        return NodeFacts(cfg.identity.ae_title, self.ops.dicom_port(), cfg.roles.receive, cfg.roles.process,
                         software_version(),
                         self.ops.owner, self.started_at, self.engine.url.get_backend_name(),
                         self.auth.public_read, self.auth.actions_enabled)

    def overview(self) -> Overview:
        now = self.ops.clock()
        return Overview(
            node=self.node_facts(), model=self.ops.model(), disk=self.disk(),
            series_by_state=queries.series_counts(self.engine),
            sends_by_destination=queries.send_counts(self.engine, self.ops.cfg.destination_names()),
            destinations=self.ops.destinations(),
            last_hour=queries.throughput(self.engine, now, 3600.0),
            last_day=queries.throughput(self.engine, now, 86400.0),
            checks=self.ops.readiness(self.engine))

    def _files(self, view: SeriesView, which: str) -> list[Path]:
        if which == "input":
            return self.ops.input_files(view.series_uid)
        if which == "output":
            if not view.derived_series_uid:
                return []
            return self.ops.output_files(view.derived_series_uid)
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")

    def series_detail(self, series_uid: str, identity: Identity) -> SeriesDetail:
        view = queries.get_series(self.engine, series_uid)
        if view is None:
            raise NotFoundError(f"no series {series_uid} in the ledger")
        inputs, outputs = self._files(view, "input"), self._files(view, "output")
        header = patient = None
        first = inputs[0] if inputs else (outputs[0] if outputs else None)
        if first is not None:
            try:
                header = header_info(first)
                if self.auth.patient_data_visible(identity):
                    patient = patient_info(first)
            except (OSError, pydicom.errors.InvalidDicomError):
                header = patient = None
        return SeriesDetail(view, header, patient, len(inputs), len(outputs))

    def destination_views(self) -> list[DestinationView]:
        counts = queries.send_counts(self.engine, self.ops.cfg.destination_names())
        out = []
        infos = {d.name: d for d in self.ops.destinations()}
        for name in counts:
            info = infos.get(name, DestinationInfo(name, "removed", "no longer in the config"))
            out.append(DestinationView(
                info, counts[name],
                queries.send_jobs(self.engine, destination=name, states=queries.ACTIVE_SEND_STATES),
                queries.send_jobs(self.engine, destination=name, states=("failed",))))
        return out

    def preview_source(self, series_uid: str, which: str, view_name: str) -> tuple[Hashable, Callable[[], list[Path]]]:
        """The cache key of a preview and what lists its files (NotFoundError: no such series or preview)."""
        if which not in WHICH:
            raise NotFoundError(f"no preview {which!r}: use one of {WHICH}")
        if view_name not in VIEWS:
            raise NotFoundError(f"no view {view_name!r}: use one of {VIEWS}")
        view = queries.get_series(self.engine, series_uid)
        if view is None:
            raise NotFoundError(f"no series {series_uid} in the ledger")
        # Keyed by what changes when the files change: new instances, or a new synthesis.
        if which == "input":
            key: tuple[object, ...] = (series_uid, which, view.instance_count, view.last_received_at)
        else:
            key = (series_uid, which, view.derived_series_uid, view.derived_count, view.synth_seconds)

        def files() -> list[Path]:            # run on the preview thread, only when not cached
            found = self._files(view, which)
            if not found:
                raise NotFoundError(f"the {which} files of series {series_uid} are not held (any more)")
            return found

        return key, files

    async def preview_png(self, series_uid: str, which: str, view_name: str) -> bytes:
        """A PNG section; NotFoundError when the series or its files are gone, PreviewError when unreadable,
        PreviewBusyError when the renderer is busy."""
        key, files = await run_in_threadpool(self.preview_source, series_uid, which, view_name)
        return (await self.previews.pngs(key, files))[view_name]


def context_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def series_json(view: SeriesView) -> dict[str, Any]:
    data = dataclasses.asdict(view)
    data["receive_seconds"] = view.receive_seconds
    data["total_seconds"] = view.total_seconds
    return data
