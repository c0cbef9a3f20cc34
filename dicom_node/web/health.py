"""Health and metrics: /healthz, /readyz, /metrics (no login for the first two: load balancers poll them).

/healthz and /readyz never wait for the web server's shared thread pool, so a pool full of slow
requests cannot make a healthy node look dead. /healthz answers on the event loop. /readyz runs the
readiness checks (they touch the database and the disk) on a thread of its own
(`status.ReadinessProbe`): concurrent calls share one run, and a run that takes longer than
`status.READY_TIMEOUT_S` answers 503 saying so (the run goes on, and the next call waits for it
instead of starting another).
"""

from __future__ import annotations

import dataclasses

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_node.web.context import context_of


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    checks = await context_of(request).readiness.checks()
    ready = all(c.ok for c in checks)
    body = {"ready": ready, "checks": [dataclasses.asdict(c) for c in checks],
            "reasons": [c.detail for c in checks if not c.ok]}
    return JSONResponse(body, status_code=200 if ready else 503)


def metrics(request: Request) -> Response:
    ctx = context_of(request)
    identity = ctx.identify(request)
    if not ctx.auth.can_read(identity):
        return JSONResponse({"error": "login required (web.public_read is false): send a bearer token"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(ctx.ops.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
