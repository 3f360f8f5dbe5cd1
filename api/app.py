"""The FastAPI application, assembled: error mapping, the guard, the metrics, the routes.

`/healthz` and `/metrics` are open (load balancers and Prometheus scrape them); every `/v1`
route requires `Authorization: Bearer <token>`, compared in constant time, or the web console's
session cookie (api/session.py, api/routes/session.py), checked before any of the request's
body is read (`api/guard.py`, which also caps bodies at 1 MiB). The console's files are served
at `/console/` (api/routes/console.py).
`/healthz` answers from a background probe of the store (blockstore/store/health.py): it never
waits for the store. The routes, one module per resource, are in api/routes/; they parse and
respond, and the work is in `blockstore.control`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry

import blockstore
from api import errors
from api.context import AppContext
from api.guard import Guard
from api.metrics import (
    DiskCollector,
    MigrationCollector,
    QosCollector,
    ReplicationCollector,
    StoreCollector,
)
from api.routes import (
    attachments,
    backups,
    console,
    disks,
    encryption,
    events,
    geo,
    groups,
    health,
    info,
    migration,
    operations,
    points,
    session,
    snapshots,
    stats,
)
from api.routes.common import require_token
from blockstore.store.health import StoreProbe

__all__ = ["AppContext", "create_app"]

V1_ROUTERS = (
    info,
    disks,
    geo,
    attachments,
    migration,
    snapshots,
    points,
    groups,
    backups,
    encryption,
    operations,
    events,
    stats,
)


def metrics_registry(context: AppContext) -> CollectorRegistry:
    """The collectors `/metrics` reads: the store's counters, and with a control plane every
    served disk's I/O and every replicated disk's lag."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(context.store))
    if context.control is not None:
        registry.register(DiskCollector(context.control.attachments.disk_stats))
        registry.register(QosCollector(context.control.attachments.disk_stats))
        registry.register(ReplicationCollector(context.control.geo.replication_statuses))
        registry.register(MigrationCollector(context.control.migrations_here))
    return registry


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(
        title="blockstore",
        version=blockstore.__version__,
        description="Durable virtual disks in S3-compatible object storage, served over NBD.",
    )
    errors.install(app)
    # the token (or a console session) before any body is read
    app.add_middleware(Guard, token=context.token, sessions=context.sessions)
    if context.health is None:  # started at the first /healthz (`blockstore serve` starts it)
        context.health = StoreProbe(context.store)
    app.state.context = context
    app.state.registry = metrics_registry(context)
    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
    for module in V1_ROUTERS:
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(session.router, prefix="/v1")  # signing in needs no token yet
    console.install(app)
    return app
