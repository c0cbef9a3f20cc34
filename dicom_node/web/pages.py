"""Server-rendered pages: overview, series list, series with previews, destinations, login, API docs."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dicom_node import admin
from dicom_node.admin import ACTIONS
from dicom_node.ledger import TERMINAL, queries
from dicom_node.web.actions import ActionError, check_destination, perform
from dicom_node.web.auth import CSRF_FIELD, SESSION_COOKIE, SESSION_MAX_AGE_S, Identity
from dicom_node.web.context import NotFoundError, WebContext, context_of
from dicom_node.web.guard import client_host, retry_after_header
from dicom_node.web.limits import int_param
from dicom_node.web.openapi import openapi_document
from dicom_node.web.throttle import address_key

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE = queries.MAX_OFFSET // PAGE_SIZE


def _render(request: Request, ctx: WebContext, identity: Identity, template: str, status: int = 200,
            **values: Any) -> Response:
    context = {
        "title": values.pop("title", ""), "identity": identity, "ae_title": ctx.ops.cfg.node.identity.ae_title,
        "actions_enabled": ctx.auth.actions_enabled, "csrf": ctx.auth.csrf_token(identity),
        "csrf_field": CSRF_FIELD, "message": request.query_params.get("msg", ""), "refresh_s": 0,
        "version": ctx.node_facts().version, "path": request.url.path, **values,
    }
    return ctx.templates.TemplateResponse(request, template, context, status_code=status)


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def _reader(request: Request) -> tuple[WebContext, Identity | Response]:
    ctx = context_of(request)
    identity = ctx.identify(request)
    if not ctx.auth.can_read(identity):
        return ctx, _login_redirect(request)
    return ctx, identity


def _error_page(request: Request, ctx: WebContext, identity: Identity, status: int, message: str) -> Response:
    return _render(request, ctx, identity, "error.html", status=status, title="Error", error=message)


def overview(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    return _render(request, ctx, identity, "overview.html", title="Overview", o=ctx.overview(), refresh_s=30)


def series_list(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    state = request.query_params.get("state") or None
    try:
        page = int_param(request, "page", default=1, lo=1, hi=MAX_PAGE)
        rows, total = queries.list_series(ctx.engine, state=state, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    except ValueError as exc:
        return _error_page(request, ctx, identity, 400, str(exc))
    return _render(request, ctx, identity, "series_list.html", title="Series", rows=rows, total=total,
                   page=page, pages=max(1, -(-total // PAGE_SIZE)), state=state or "",
                   counts=queries.series_counts(ctx.engine), states=queries.SERIES_STATES)


def series_page(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    uid = request.path_params["series_uid"]
    try:
        detail = ctx.series_detail(uid, identity)
    except NotFoundError as exc:
        return _error_page(request, ctx, identity, 404, str(exc))
    state = detail.series.state
    allowed = admin.allowed(state, has_sends=bool(detail.series.sends))
    return _render(request, ctx, identity, "series.html", title=f"Series {uid}", d=detail, s=detail.series,
                   allowed=allowed, destination_names=ctx.ops.cfg.destination_names(),
                   show_patient=ctx.auth.patient_data_visible(identity),
                   refresh_s=0 if state in TERMINAL else 5)   # follow work in progress


def destinations(request: Request) -> Response:
    ctx, identity = _reader(request)
    if isinstance(identity, Response):
        return identity
    return _render(request, ctx, identity, "destinations.html", title="Destinations",
                   views=ctx.destination_views(), now=ctx.ops.clock())


def api_docs(request: Request) -> Response:
    ctx = context_of(request)
    return _render(request, ctx, ctx.identify(request), "api.html", title="API", doc=openapi_document())


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as single values (its size is bounded by BodyLimit)."""
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _safe_next(target: str) -> str:
    """Only our own paths: no scheme, no host, no protocol-relative `//`."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _login_page(request: Request, ctx: WebContext, target: str, *, status: int = 200, failed: bool = False,
                tries_left: int = 0, locked_for_s: float = 0.0) -> Response:
    response = _render(request, ctx, ctx.identify(request), "login.html", status=status, title="Log in",
                       next=target, failed=failed, tries_left=tries_left, locked_for_s=round(locked_for_s))
    if locked_for_s > 0:
        response.headers["Retry-After"] = retry_after_header(locked_for_s)
    return response


async def login_form(request: Request) -> Response:
    ctx = context_of(request)
    return _login_page(request, ctx, _safe_next(request.query_params.get("next", "/")),
                       locked_for_s=ctx.guard.locked_for(client_host(request.scope)))


async def login_submit(request: Request) -> Response:
    """Check the token; failures are throttled per address (guard.py): a locked-out address gets 429 unread.

    Async on purpose: between reading the form and recording the outcome nothing awaits, so parallel
    guesses from one address are counted one by one, and no guess holds a thread.
    """
    ctx = context_of(request)
    host = client_host(request.scope)
    if (locked_for := ctx.guard.locked_for(host)) > 0:           # refused before the body is read
        ctx.guard.refused(host, "login", locked_for)
        return _login_page(request, ctx, "/", status=429, locked_for_s=locked_for)
    form = await _form(request)
    target = _safe_next(form.get("next", "/"))
    if not ctx.auth.actions_enabled:
        return _login_page(request, ctx, target, status=403, failed=True)
    if (locked_for := ctx.guard.locked_for(host)) > 0:           # locked while this body was read
        ctx.guard.refused(host, "login", locked_for)
        return _login_page(request, ctx, target, status=429, locked_for_s=locked_for)
    token = form.get("token", "")
    if not ctx.auth.token_valid(token):
        verdict = ctx.guard.failed(host, "login", "a wrong token" if token else "an empty token")
        return _login_page(request, ctx, target, status=429 if verdict.locked_for_s else 401, failed=True,
                           tries_left=ctx.guard.throttle.max_failures - verdict.failures,
                           locked_for_s=verdict.locked_for_s)
    ctx.guard.succeeded(host)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, ctx.auth.issue_session(), max_age=SESSION_MAX_AGE_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    logger.info("web: login from %s", address_key(host))
    return response


async def logout(request: Request) -> Response:
    ctx = context_of(request)
    ctx.auth.revoke(ctx.identify(request))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _acting_form(request: Request, back: str) -> tuple[WebContext, Identity, dict[str, str]] | Response:
    """The caller and the form of an action, or the page (or login redirect) that answers instead."""
    ctx = context_of(request)
    identity = ctx.identify(request)
    if not ctx.auth.actions_enabled:
        return _error_page(request, ctx, identity, 403, "actions are disabled: web.token is empty in the config")
    if not identity.logged_in:
        return RedirectResponse(f"/login?{urlencode({'next': back})}", status_code=303)
    form = await _form(request)
    if not ctx.auth.csrf_valid(identity, form.get(CSRF_FIELD, "")):
        return _error_page(request, ctx, identity, 403, "the form has expired: reload the page and try again")
    return ctx, identity, form


async def action(request: Request) -> Response:
    """A form's POST /series/{uid}/{retry|resend|discard}: login and the session's CSRF value needed."""
    uid, name = request.path_params["series_uid"], request.path_params["action"]
    if name not in ACTIONS:
        ctx = context_of(request)
        return _error_page(request, ctx, ctx.identify(request), 404, f"no action {name!r}")
    acting = await _acting_form(request, f"/series/{quote(uid)}")
    if isinstance(acting, Response):
        return acting
    ctx, identity, form = acting
    if name == "discard" and form.get("confirm") != "yes":
        return _error_page(request, ctx, identity, 400, "discarding needs the confirmation box ticked")
    destination = form.get("destination") or None
    try:
        result = await run_in_threadpool(perform, ctx.ops, name, uid, destination=destination,
                                          who=ctx.who(request, identity))
    except ActionError as exc:
        return _error_page(request, ctx, identity, exc.status, exc.message)
    where = "/series" if name == "discard" else f"/series/{quote(uid)}"
    return RedirectResponse(f"{where}?{urlencode({'msg': f'{name}: {result.message}'})}", status_code=303)


async def check(request: Request) -> Response:
    """A form's POST /destinations/{name}/check: C-ECHO (or folder test), result shown on the page."""
    name = request.path_params["name"]
    acting = await _acting_form(request, "/destinations")
    if isinstance(acting, Response):
        return acting
    ctx, identity, _form_values = acting
    try:
        result = await run_in_threadpool(check_destination, ctx.ops, name, who=ctx.who(request, identity))
    except ActionError as exc:
        return _error_page(request, ctx, identity, exc.status, exc.message)
    message = f"{name}: {result.message} ({result.elapsed_ms:.0f} ms)"
    return RedirectResponse(f"/destinations?{urlencode({'msg': message})}#dest-{quote(name)}", status_code=303)
