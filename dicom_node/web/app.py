"""The ASGI app: pages, JSON API, health and metrics over one running node's `Operations`.

`build_app(ops)` wires the routes and the middleware; `WebContext` holds what they share (auth and
its throttle, the read engine, the preview queue, templates). Handlers that touch the database or
files are plain functions, which Starlette runs in its thread pool, so the event loop never waits on
them; what must answer whatever that pool is doing (health, the refusal of a locked-out address, an
oversized body) runs on the event loop or on a thread of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node.web import api, health, pages
from dicom_node.web.context import HERE, WebContext
from dicom_node.web.guard import BearerGuard
from dicom_node.web.limits import BodyLimit

if TYPE_CHECKING:
    from dicom_node.operations import Operations

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'"),
]


class SecurityHeaders:
    """Adds the headers above to every response, and `Cache-Control: no-store` to pages and API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(ops: Operations) -> Starlette:
    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/series", pages.series_list, name="series_list"),
        Route("/series/{series_uid}", pages.series_page, name="series_page"),
        Route("/series/{series_uid}/preview/{which}/{view}.png", api.preview, name="preview"),
        Route("/series/{series_uid}/{action}", pages.action, methods=["POST"], name="series_action"),
        Route("/destinations", pages.destinations, name="destinations"),
        Route("/destinations/{name}/check", pages.check, methods=["POST"], name="destination_check"),
        Route("/login", pages.login_form, methods=["GET"], name="login"),
        Route("/login", pages.login_submit, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"], name="logout"),
        Route("/api", pages.api_docs, name="api_docs"),
        Route("/api/openapi.json", api.openapi, name="openapi"),
        Route("/api/overview", api.overview),
        Route("/api/series", api.series_list),
        Route("/api/series/{series_uid}", api.series),
        Route("/api/series/{series_uid}/preview/{which}/{view}.png", api.preview),
        Route("/api/series/{series_uid}/{action}", api.action, methods=["POST"]),
        Route("/api/destinations", api.destinations),
        Route("/api/destinations/{name}/check", api.check, methods=["POST"]),
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Route("/metrics", health.metrics),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    ctx = WebContext(ops)
    app.state.ctx = ctx
    # add_middleware puts each one outside the ones before: SecurityHeaders → BodyLimit → BearerGuard → routes
    app.add_middleware(BearerGuard, guard=ctx.guard, auth=ctx.auth)
    app.add_middleware(BodyLimit, max_bytes=ops.cfg.web.max_body_bytes, on_refused=ops.metrics.web_body_refused.inc)
    app.add_middleware(SecurityHeaders)
    return app
