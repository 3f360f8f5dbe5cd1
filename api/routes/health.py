"""`/healthz` and `/metrics`: open to load balancers and Prometheus (no token)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import blockstore
from api.routes.common import Context

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(context: Context) -> JSONResponse:
    """Whether the object store answered the last background probe (every few seconds),
    how fast, and how long ago (`age_s`). Never waits for the store, but for the first
    probe of a service that has just started (a few seconds at most, off the event loop)."""
    probe = context.health
    assert probe is not None  # create_app makes one
    probe.start()
    if not probe.probed:
        await asyncio.to_thread(probe.wait_first)
    h = probe.health()
    body = {
        "status": "ok" if h.reachable else "degraded",
        "store": {
            "reachable": h.reachable,
            "embedded": context.settings.embedded,
            "latency_ms": h.latency_ms,
            "error": h.error,
            "age_s": h.age_seconds,
        },
        "version": blockstore.__version__,
    }
    return JSONResponse(body, status_code=200 if h.reachable else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
