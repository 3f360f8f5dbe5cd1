"""`/v1/disks/{name}/migration`: move a disk in use to this host with its running VM.

Called on the destination host's API (start, complete); a cancel works on either host. The
protocol, and what each failure leaves, is blockstore/control/migration.py's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.models import MigrationRequest
from api.routes.common import Context, DiskName

router = APIRouter(tags=["migration"])


@router.post("/disks/{name}/migration")
def start(name: DiskName, context: Context, body: MigrationRequest | None = None) -> dict[str, Any]:
    """Prepare this host to take the disk over from the host serving it: an incoming export
    that QEMU's destination (`-incoming`) connects to, holding its I/O until the switchover.
    409 if the disk is not attached elsewhere or is migrating already."""
    svc = context.service()
    return svc.disks.describe(svc.migrations.start(name, body.vm if body else None))


@router.post("/disks/{name}/migration/complete")
def complete(name: DiskName, context: Context) -> dict[str, Any]:
    """Switch over now (the destination's first request does it too): this host becomes the
    writer, the source is fenced. 409 when no migration to this host is under way."""
    svc = context.service()
    return svc.disks.describe(svc.migrations.complete(name))


@router.delete("/disks/{name}/migration")
def cancel(name: DiskName, context: Context) -> dict[str, Any]:
    """Call the migration off before its switchover: the source serves on. 409 when none is
    under way (or it has switched over already)."""
    svc = context.service()
    return svc.disks.describe(svc.migrations.cancel(name))
