"""Geo-redundancy: fail a grs disk over to the secondary region and back; copy a snapshot there.

A change of redundancy itself is a PATCH of the disk (api/routes/disks.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.models import ReplicationWait
from api.routes.common import Context, DiskName, SnapName

router = APIRouter(tags=["geo"])


@router.post("/disks/{name}/failover")
def failover(name: DiskName, context: Context) -> dict[str, Any]:
    """Serve a grs disk from the secondary region (fencing the primary's writer)."""
    svc = context.service()
    return svc.disks.describe(svc.geo.failover(name))


@router.post("/disks/{name}/replication/wait")
def wait_replicated(
    name: DiskName, context: Context, body: ReplicationWait | None = None
) -> dict[str, Any]:
    """Return once the secondary holds every write the primary had acknowledged when the call
    began (drain before a planned failover): 200 with the replication status, 409 when the
    timeout passes first, 503 when the primary does not answer."""
    timeout = (body or ReplicationWait()).timeout_seconds
    return context.service().geo.wait_replicated(name, timeout)


@router.post("/disks/{name}/failback", status_code=202)
def failback(name: DiskName, context: Context) -> dict[str, Any]:
    """Re-seed the primary region from the secondary and serve from it again."""
    return context.service().geo.failback(name)


@router.post("/disks/{name}/snapshots/{snapshot}/copy", status_code=202)
def copy_snapshot(name: DiskName, snapshot: SnapName, context: Context) -> dict[str, Any]:
    """Copy one snapshot to the other region (incremental against earlier copies)."""
    return context.service().geo.copy_snapshot(name, snapshot)
