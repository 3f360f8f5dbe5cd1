"""`/v1/disks/{name}/restore-points`, `/revert`: restore to any flushed state of a disk.

Points are named by `position` (log position) or `time` (ISO 8601; the last point the store took
at or before it); blockstore/engine/points.py says what a point is and what a disk's retention
window keeps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.models import PointTarget, epoch_seconds
from api.routes.common import Context, DiskName
from blockstore.errors import InvalidArgument

router = APIRouter(tags=["restore points"])

Position = Annotated[int | None, Query(ge=1, description="a restore point's log position")]
Time = Annotated[datetime | None, Query(description="ISO 8601; the last point at or before it")]


@router.get("/disks/{name}/restore-points")
def list_points(
    name: DiskName,
    context: Context,
    start: Annotated[datetime | None, Query(alias="from", description="ISO 8601")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The disk's restore points in [from, to] (the newest `limit` of them listed), with a
    per-minute summary of the bytes written, to find the moment before a burst."""
    return context.service().points.list_points(
        name, epoch_seconds(start), epoch_seconds(end), limit
    )


@router.get("/disks/{name}/restore-points/changes")
def changes(
    name: DiskName,
    context: Context,
    since_position: Position = None,
    since_time: Time = None,
    until_position: Position = None,
    until_time: Time = None,
) -> dict[str, Any]:
    """Ranges whose content differs between two restore points (no `until_*`: the disk now)."""
    if (since_position is None) == (since_time is None):
        raise InvalidArgument("give since_position or since_time (one of them)")
    if until_position is not None and until_time is not None:
        raise InvalidArgument("give until_position or until_time, not both")
    until = None
    if until_position is not None or until_time is not None:
        until = (until_position, epoch_seconds(until_time))
    since = (since_position, epoch_seconds(since_time))
    return context.service().points.changes(name, since, until)


@router.post("/disks/{name}/revert", status_code=202)
def revert(name: DiskName, body: PointTarget, context: Context) -> dict[str, Any]:
    """Revert a detached disk in place to a restore point, as an operation. The answer's
    `undo_position` is the point that undoes it, while it is inside the retention window."""
    return context.service().points.revert(name, body.position, epoch_seconds(body.time))
