"""The FastAPI application: routes parse and respond; the work is in `blockstore/` services.

`/healthz` and `/metrics` are open (load balancers and Prometheus scrape them); every `/v1`
route requires `Authorization: Bearer <token>`, compared in constant time.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

import blockstore
from api import errors
from blockstore.config import Settings
from blockstore.errors import BlockstoreError, Unauthorized
from blockstore.objectstore import ObjectStore


@dataclass
class AppContext:
    """Everything a request handler may touch; built once by `blockstore serve` or a test."""

    settings: Settings
    store: ObjectStore
    token: str

    def close(self) -> None:
        pass


class StoreCollector:
    """Exposes the object store's own counters (StoreStats) to Prometheus; nobody re-counts."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def collect(self) -> Any:
        stats = self.store.stats.snapshot()
        requests = CounterMetricFamily(
            "blockstore_store_requests", "Object store requests by operation", labels=["op"]
        )
        for op in ("gets", "puts", "deletes", "lists", "heads"):
            requests.add_metric([op.rstrip("s")], float(stats[op]))  # type: ignore[arg-type]
        yield requests
        errors_ = CounterMetricFamily(
            "blockstore_store_errors", "Object store errors by kind", labels=["kind"]
        )
        for kind, count in dict(stats["errors"]).items():  # type: ignore[call-overload]
            errors_.add_metric([kind], float(count))
        yield errors_
        for name in ("bytes_fetched", "bytes_uploaded", "retries", "precondition_failed"):
            yield CounterMetricFamily(
                f"blockstore_store_{name}",
                f"Object store {name.replace('_', ' ')}",
                value=float(stats[name]),  # type: ignore[arg-type]
            )


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(
        title="blockstore",
        version=blockstore.__version__,
        description="Durable virtual disks in S3-compatible object storage, served over NBD.",
    )
    errors.install(app)
    registry = CollectorRegistry()
    registry.register(StoreCollector(context.store))

    def require_token(
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), context.token.encode()
        ):
            raise Unauthorized(
                "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                "(the token is in <home>/api-token or $BLOCKSTORE_API_TOKEN)"
            )

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """Whether the object store answers, and how fast."""
        started = time.monotonic()
        try:
            for _ in context.store.list("health-probe/"):
                break
            reachable, problem = True, None
        except BlockstoreError as exc:
            reachable, problem = False, str(exc)
        body = {
            "status": "ok" if reachable else "degraded",
            "store": {
                "reachable": reachable,
                "embedded": context.settings.embedded,
                "latency_ms": round((time.monotonic() - started) * 1000, 2),
                "error": problem,
            },
            "version": blockstore.__version__,
        }
        return JSONResponse(body, status_code=200 if reachable else 503)

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @v1.get("/info", tags=["service"])
    def info() -> dict[str, object]:
        """Version and where the disks are stored (never the credentials)."""
        s3 = context.settings.s3
        return {
            "version": blockstore.__version__,
            "store": {
                "endpoint": s3.endpoint if s3 else None,
                "bucket": s3.bucket if s3 else None,
                "embedded": context.settings.embedded,
            },
        }

    app.include_router(v1)
    return app
