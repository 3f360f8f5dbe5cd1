"""The FastAPI application: routes parse and respond; the work is in `blockstore/` services.

`/healthz` and `/metrics` are open (load balancers and Prometheus scrape them); every `/v1`
route requires `Authorization: Bearer <token>`, compared in constant time, and checked before
any of the request's body is read (`api/guard.py`, which also caps bodies at 1 MiB).
`/healthz` answers from a background probe of the store (blockstore/store/health.py): it never waits
for the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import blockstore
from api import errors
from api.guard import UNAUTHORIZED, Guard, token_matches
from api.metrics import DiskCollector, ReplicationCollector, StoreCollector
from api.models import (
    NAME_PATTERN,
    AttachRequest,
    DetachRequest,
    DiskCreate,
    DiskUpdate,
    SnapshotCreate,
)
from blockstore.control.service import ControlService, DiskSpec
from blockstore.errors import Unauthorized, Unavailable
from blockstore.host.config import Settings
from blockstore.store.base import ObjectStore
from blockstore.store.health import StoreProbe

DiskName = Annotated[str, Path(pattern=NAME_PATTERN, description="disk name")]
SnapName = Annotated[str, Path(pattern=NAME_PATTERN, description="snapshot name")]


@dataclass
class AppContext:
    """Everything a request handler may touch; built once by `blockstore serve` or a test."""

    settings: Settings
    store: ObjectStore
    token: str
    control: ControlService | None = None
    health: StoreProbe | None = None  # None: create_app makes one on `store`

    def service(self) -> ControlService:
        if self.control is None:
            raise Unavailable("the control plane is not running on this server")
        return self.control

    def close(self) -> None:
        if self.health is not None:
            self.health.close()


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(
        title="blockstore",
        version=blockstore.__version__,
        description="Durable virtual disks in S3-compatible object storage, served over NBD.",
    )
    errors.install(app)
    app.add_middleware(Guard, token=context.token)  # the token before any body is read
    if context.health is None:  # started at the first /healthz (`blockstore serve` starts it)
        context.health = StoreProbe(context.store)
    probe = context.health
    registry = CollectorRegistry()
    registry.register(StoreCollector(context.store))
    if context.control is not None:
        registry.register(DiskCollector(context.control.disk_stats))
        registry.register(ReplicationCollector(context.control.replication_statuses))

    def require_token(
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        # Guard answered 401 before the body was read; the same check again, next to the
        # routes it protects, so a route under /v1 can never be reached without it.
        if not token_matches(authorization, context.token):
            raise Unauthorized(UNAUTHORIZED)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Whether the object store answered the last background probe (every few seconds),
        how fast, and how long ago (`age_s`). Never waits for the store, but for the first
        probe of a service that has just started (a few seconds at most, off the event loop)."""
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

    @v1.post("/disks", tags=["disks"], status_code=201)
    def create_disk(body: DiskCreate, response: Response) -> dict[str, Any]:
        """Create a disk (the same request again returns it with 200; a different one, 409)."""
        svc = context.service()
        spec = DiskSpec(
            name=body.name,
            size_bytes=body.size(),
            kind=body.kind,
            caching=body.caching,
            redundancy=body.redundancy,
            source_snapshot=body.source_snapshot,
        )
        disk, created = svc.create_disk(spec)
        if not created:
            response.status_code = 200
        return svc.describe(disk)

    @v1.get("/disks", tags=["disks"])
    def list_disks() -> dict[str, Any]:
        svc = context.service()
        return {"disks": [svc.describe(d) for d in svc.list_disks()]}

    @v1.get("/disks/{name}", tags=["disks"])
    def get_disk(name: DiskName) -> dict[str, Any]:
        svc = context.service()
        return svc.describe(svc.get_disk(name))

    @v1.patch("/disks/{name}", tags=["disks"])
    def update_disk(name: DiskName, body: DiskUpdate, response: Response) -> dict[str, Any]:
        """Grow (online, too), shrink with allow_shrink, or change caching (applied when the
        export next starts).
        A change of redundancy (lrs <-> grs) seeds or removes the secondary copy: the answer is
        then 202 with the operation."""
        svc = context.service()
        disk = svc.update_disk(
            name, size_bytes=body.size(), caching=body.caching, allow_shrink=body.allow_shrink
        )
        if body.redundancy is not None:
            op = svc.set_redundancy(name, body.redundancy)
            if op is not None:
                response.status_code = 202
                return op
        return svc.describe(disk)

    @v1.post("/disks/{name}/failover", tags=["geo"])
    def failover(name: DiskName) -> dict[str, Any]:
        """Serve a grs disk from the secondary region (fencing the primary's writer)."""
        svc = context.service()
        return svc.describe(svc.failover(name))

    @v1.post("/disks/{name}/failback", tags=["geo"], status_code=202)
    def failback(name: DiskName) -> dict[str, Any]:
        """Re-seed the primary region from the secondary and serve from it again."""
        return context.service().failback(name)

    @v1.post("/disks/{name}/snapshots/{snapshot}/copy", tags=["geo"], status_code=202)
    def copy_snapshot(name: DiskName, snapshot: SnapName) -> dict[str, Any]:
        """Copy one snapshot to the other region (incremental against earlier copies)."""
        return context.service().copy_snapshot(name, snapshot)

    @v1.delete("/disks/{name}", tags=["disks"], status_code=202)
    def delete_disk(name: DiskName) -> dict[str, Any]:
        """Gone from listings at once; its objects are removed by the returned operation."""
        return context.service().delete_disk(name)

    @v1.post("/disks/{name}/attach", tags=["attachments"])
    def attach(name: DiskName, body: AttachRequest) -> dict[str, Any]:
        return context.service().attach(name, body.vm, force=body.force)

    @v1.post("/disks/{name}/detach", tags=["attachments"])
    def detach(name: DiskName, body: DetachRequest | None = None) -> dict[str, Any]:
        """409 while NBD clients are connected, unless force (the guest's next I/O fails);
        503 when acknowledged writes could not be made durable (the disk stays attached)."""
        svc = context.service()
        return svc.describe(svc.detach(name, force=bool(body and body.force)))

    @v1.post("/disks/{name}/snapshots", tags=["snapshots"], status_code=201)
    def create_snapshot(name: DiskName, body: SnapshotCreate, response: Response) -> dict[str, Any]:
        snap, created = context.service().create_snapshot(name, body.name)
        if not created:
            response.status_code = 200
        return snap

    @v1.get("/disks/{name}/snapshots", tags=["snapshots"])
    def list_snapshots(name: DiskName) -> dict[str, Any]:
        return {"snapshots": context.service().list_snapshots(name)}

    @v1.delete("/disks/{name}/snapshots/{snapshot}", tags=["snapshots"], status_code=204)
    def delete_snapshot(name: DiskName, snapshot: SnapName) -> Response:
        context.service().delete_snapshot(name, snapshot)
        return Response(status_code=204)

    @v1.get("/disks/{name}/snapshots/{snapshot}/changes", tags=["snapshots"])
    def changes(
        name: DiskName,
        snapshot: SnapName,
        since: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    ) -> dict[str, Any]:
        """Ranges whose content differs between snapshot `since` (default: empty disk) and
        `snapshot`: what an incremental backup or copy must read."""
        return context.service().changed_ranges(name, snapshot, since)

    @v1.get("/operations", tags=["operations"])
    def list_operations(
        target: Annotated[
            str | None, Query(max_length=130, description="disk or disk/snapshot")
        ] = None,
        status: Annotated[str | None, Query(description="running, succeeded or failed")] = None,
    ) -> list[dict[str, Any]]:
        """Operations (deletes, seeding, failbacks, snapshot copies), newest first; finished
        ones are kept for 7 days."""
        return context.service().operations.select(target=target, status=status)

    @v1.get("/operations/{op_id}", tags=["operations"])
    def get_operation(op_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        return context.service().operations.get(op_id)

    app.include_router(v1)
    return app
