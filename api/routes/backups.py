"""`/v1/backups` and `…/snapshots/{snapshot}/backup`: copies of snapshots in other S3-compatible
stores (backup targets), incremental and verified, and disks restored from them
(blockstore/control/backups.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.models import NAME_PATTERN, BackupRequest, RestoreRequest
from api.routes.common import Context, DiskName, SnapName

router = APIRouter(tags=["backups"])
Target = Annotated[str, Path(pattern=NAME_PATTERN, description="backup target")]
BackupId = Annotated[str, Path(pattern=NAME_PATTERN, description="backup id")]


@router.post("/disks/{name}/snapshots/{snapshot}/backup", status_code=202)
def backup(
    name: DiskName, snapshot: SnapName, body: BackupRequest, context: Context
) -> dict[str, Any]:
    """Copy the snapshot to a backup target, as an operation: only the objects the target's
    complete backups do not hold yet."""
    return context.service().backups.start_backup(name, snapshot, body.target)


@router.get("/backups")
def list_backups(
    context: Context, target: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None
) -> dict[str, Any]:
    """Complete backups in every target (or one), newest first; targets that did not answer
    under `unreachable`."""
    return context.service().backups.list_backups(target)


@router.get("/backups/{target}/{backup_id}")
def get_backup(target: Target, backup_id: BackupId, context: Context) -> dict[str, Any]:
    return context.service().backups.get(target, backup_id)


@router.post("/backups/{target}/{backup_id}/restore", status_code=202)
def restore(
    target: Target, backup_id: BackupId, body: RestoreRequest, context: Context
) -> dict[str, Any]:
    """A new disk from a backup (the source disk may be gone), as an operation."""
    op = context.service().backups.start_restore(target, backup_id, body.name, body.caching)
    return {"operation": op, "disk": body.name}
