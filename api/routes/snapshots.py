"""`/v1/disks/{name}/snapshots`: create, list and delete snapshots; changed ranges."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.models import NAME_PATTERN, SnapshotCreate
from api.routes.common import Context, DiskName, SnapName

router = APIRouter(tags=["snapshots"])


@router.post("/disks/{name}/snapshots", status_code=201)
def create_snapshot(
    name: DiskName, body: SnapshotCreate, response: Response, context: Context
) -> dict[str, Any]:
    """Take a snapshot (an attached disk is flushed first); answered when it exists. It is
    also recorded as an operation (kind `snapshot`, target `disk/snapshot`, its id in the
    answer's `operation`), so the console and `blockstore operation list` show it."""
    svc = context.service()
    svc.disks.get(name)  # an unknown disk is a 404, not a failed operation
    (snap, created), op = svc.operations.run(
        "snapshot", f"{name}/{body.name}", lambda _: svc.snapshots.create(name, body.name)
    )
    if not created:
        response.status_code = 200
    return {**snap, "operation": op["id"]}


@router.get("/disks/{name}/snapshots")
def list_snapshots(name: DiskName, context: Context) -> dict[str, Any]:
    return {"snapshots": context.service().snapshots.list_snapshots(name)}


@router.delete("/disks/{name}/snapshots/{snapshot}", status_code=204)
def delete_snapshot(name: DiskName, snapshot: SnapName, context: Context) -> Response:
    context.service().snapshots.delete(name, snapshot)
    return Response(status_code=204)


@router.get("/disks/{name}/snapshots/{snapshot}/changes")
def changes(
    name: DiskName,
    snapshot: SnapName,
    context: Context,
    since: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> dict[str, Any]:
    """Ranges whose content differs between snapshot `since` (default: empty disk) and
    `snapshot`: what an incremental backup or copy must read."""
    return context.service().snapshots.changed_ranges(name, snapshot, since)
