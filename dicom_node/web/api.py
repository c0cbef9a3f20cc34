"""The JSON API (described in `openapi.py`) and the preview images the pages also use."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_node.admin import ACTIONS
from dicom_node.ledger import queries
from dicom_node.web.actions import ActionError, check_destination, perform
from dicom_node.web.auth import CSRF_HEADER, Identity
from dicom_node.web.context import NotFoundError, WebContext, context_of, series_json
from dicom_node.web.limits import int_param
from dicom_node.web.openapi import openapi_document
from dicom_node.web.preview import VIEWS, PreviewError
from dicom_node.web.preview_queue import PreviewBusyError

DEFAULT_LIMIT = 100


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _reader(request: Request) -> tuple[WebContext, Identity | JSONResponse]:
    """The context, and the caller if they may read (else the error to answer)."""
    ctx = context_of(request)
    identity = ctx.identify(request)
    if identity.bad_credentials:
        return ctx, error(401, "wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    if not ctx.auth.can_read(identity):
        return ctx, error(401, "login required: web.public_read is false", **{"WWW-Authenticate": "Bearer"})
    return ctx, identity


def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


def overview(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    o = ctx.overview()
    return JSONResponse({
        "node": dataclasses.asdict(o.node),
        "model": dataclasses.asdict(o.model),
        "disk": {**dataclasses.asdict(o.disk), "above_watermark": o.disk.above_watermark},
        "series_by_state": o.series_by_state,
        "sends_by_destination": o.sends_by_destination,
        "destinations": [dataclasses.asdict(d) for d in o.destinations],
        "throughput": {
            "last_hour": {**dataclasses.asdict(o.last_hour), "series_per_hour": o.last_hour.series_per_hour},
            "last_day": {**dataclasses.asdict(o.last_day), "series_per_hour": o.last_day.series_per_hour},
        },
        "ready": o.ready,
        "checks": [dataclasses.asdict(c) for c in o.checks],
    })


def series_list(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    try:
        limit = int_param(request, "limit", default=DEFAULT_LIMIT, lo=1, hi=queries.MAX_LIMIT)
        offset = int_param(request, "offset", default=0, lo=0, hi=queries.MAX_OFFSET)
        rows, total = queries.list_series(ctx.engine, state=request.query_params.get("state") or None,
                                          limit=limit, offset=offset)
    except ValueError as exc:
        return error(400, str(exc))
    return JSONResponse({"total": total, "limit": limit, "offset": offset,
                         "series": [series_json(r) for r in rows]})


def series(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    uid = request.path_params["series_uid"]
    try:
        detail = ctx.series_detail(uid, identity)
    except NotFoundError as exc:
        return error(404, str(exc))
    data = series_json(detail.series)
    base = f"/api/series/{uid}/preview"
    data["previews"] = {f"{which}_{view}": f"{base}/{which}/{view}.png"
                        for which, n in (("input", detail.input_files), ("output", detail.output_files)) if n
                        for view in VIEWS}
    data["header"] = dataclasses.asdict(detail.header) if detail.header is not None else None
    data["patient"] = dataclasses.asdict(detail.patient) if detail.patient is not None else None
    return JSONResponse(data)


def destinations(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    return JSONResponse([
        {**dataclasses.asdict(d.info), "counts": d.counts,
         "active": [dataclasses.asdict(j) for j in d.active], "failed": [dataclasses.asdict(j) for j in d.failed]}
        for d in ctx.destination_views()])


async def preview(request: Request) -> Response:
    """GET .../preview/{input|output}/{coronal|sagittal}.png (pages and API); drawn off the shared pool."""
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    p = request.path_params
    try:
        png = await ctx.preview_png(p["series_uid"], p["which"], p["view"])
    except NotFoundError as exc:
        return error(404, str(exc))
    except PreviewError as exc:
        return error(422, f"cannot draw the {p['which']} of series {p['series_uid']}: {exc}")
    except PreviewBusyError as exc:
        ctx.ops.metrics.web_previews_busy.inc()
        return error(503, str(exc), **{"Retry-After": str(exc.retry_after_s)})
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


def _actor(request: Request) -> tuple[WebContext, Identity | JSONResponse]:
    """The context, and the caller if they may act (else the error to answer)."""
    ctx = context_of(request)
    if not ctx.auth.actions_enabled:
        return ctx, error(403, "actions are disabled: web.token is empty in the config")
    identity = ctx.identify(request)
    if not identity.logged_in:
        return ctx, error(401, "log in or send Authorization: Bearer <web.token>",
                          **{"WWW-Authenticate": "Bearer"})
    if not ctx.auth.csrf_valid(identity, request.headers.get(CSRF_HEADER, "")):
        return ctx, error(403, f"a session caller must send its {CSRF_HEADER} header")
    return ctx, identity


async def action(request: Request) -> Response:
    """POST /api/series/{uid}/{retry|resend|discard}; bearer token, or session cookie + X-CSRF-Token."""
    uid, name = request.path_params["series_uid"], request.path_params["action"]
    if name not in ACTIONS:
        return error(404, f"no action {name!r}: use one of {ACTIONS}")
    ctx, identity = _actor(request)
    if isinstance(identity, Response):
        return identity
    body = await request.body()          # at most web.max_body_bytes: BodyLimit answers 413 beyond
    destination = request.query_params.get("destination") or None
    if body.strip():
        try:
            payload: Any = json.loads(body)
        except ValueError:
            return error(400, "the request body must be JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("destination", ""), str | None):
            return error(400, 'the request body must be an object like {"destination": "pacs"}')
        destination = payload.get("destination") or destination
    try:
        result = await run_in_threadpool(perform, ctx.ops, name, uid, destination=destination,
                                          who=ctx.who(request, identity))
    except ActionError as exc:
        return error(exc.status, exc.message)
    return JSONResponse(dataclasses.asdict(result))


async def check(request: Request) -> Response:
    """POST /api/destinations/{name}/check: C-ECHO a DICOM destination, or test that a folder is writable."""
    ctx, identity = _actor(request)
    if isinstance(identity, Response):
        return identity
    try:
        result = await run_in_threadpool(check_destination, ctx.ops, request.path_params["name"],
                                          who=ctx.who(request, identity))
    except ActionError as exc:
        return error(exc.status, exc.message)
    return JSONResponse(dataclasses.asdict(result))
