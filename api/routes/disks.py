"""`/v1/disks`: create, list, show, change (size, caching, redundancy) and delete disks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.models import DiskCreate, DiskUpdate
from api.routes.common import Context, DiskName
from blockstore.control.model import DiskSpec

router = APIRouter(tags=["disks"])


@router.post("/disks", status_code=201)
def create_disk(body: DiskCreate, response: Response, context: Context) -> dict[str, Any]:
    """Create a disk (the same request again returns it with 200; a different one, 409)."""
    svc = context.service()
    spec = DiskSpec(
        name=body.name,
        size_bytes=body.size(),
        kind=body.kind,
        caching=body.caching,
        redundancy=body.redundancy,
        source_snapshot=body.source_snapshot,
        source_point=None if body.source_point is None else body.source_point.ref(),
        retention_seconds=body.retention_seconds,
        encrypted=body.encrypted,
        compression=body.compression,
        qos=body.qos(),
    )
    disk, created = svc.disks.create(spec)
    if not created:
        response.status_code = 200
    return svc.disks.describe(disk)


@router.get("/disks")
def list_disks(context: Context) -> dict[str, Any]:
    svc = context.service()
    return {"disks": [svc.disks.describe(d) for d in svc.disks.list_disks()]}


@router.get("/disks/{name}")
def get_disk(name: DiskName, context: Context) -> dict[str, Any]:
    """One disk: its record, attachment, and (grs) replication status measured now."""
    svc = context.service()
    return svc.disks.describe(svc.disks.get(name))


@router.patch("/disks/{name}")
def update_disk(
    name: DiskName, body: DiskUpdate, response: Response, context: Context
) -> dict[str, Any]:
    """Grow (online, too), shrink with allow_shrink, change caching (applied when the
    export next starts) or the QoS caps (applied to a running export within a second).
    A change of redundancy (lrs <-> grs) seeds or removes the secondary copy: the answer is
    then 202 with the operation."""
    svc = context.service()
    disk = svc.disks.update(
        name,
        size_bytes=body.size(),
        caching=body.caching,
        allow_shrink=body.allow_shrink,
        retention_seconds=body.retention_seconds,
        qos=body.qos(),
    )
    if body.redundancy is not None:
        op = svc.geo.set_redundancy(name, body.redundancy)
        if op is not None:
            response.status_code = 202
            return op
    return svc.disks.describe(disk)


@router.delete("/disks/{name}", status_code=202)
def delete_disk(name: DiskName, context: Context) -> dict[str, Any]:
    """Gone from listings at once; its objects are removed by the returned operation."""
    return context.service().disks.delete(name)
