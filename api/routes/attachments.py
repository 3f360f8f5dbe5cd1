"""`/v1/disks/{name}/attach` and `/detach`: who serves a disk, to which VM."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.models import AttachRequest, DetachRequest
from api.routes.common import Context, DiskName

router = APIRouter(tags=["attachments"])


@router.post("/disks/{name}/attach")
def attach(name: DiskName, body: AttachRequest, context: Context) -> dict[str, Any]:
    return context.service().attachments.attach(name, body.vm, force=body.force)


@router.post("/disks/{name}/detach")
def detach(name: DiskName, context: Context, body: DetachRequest | None = None) -> dict[str, Any]:
    """409 while NBD clients are connected, unless force (the guest's next I/O fails);
    503 when acknowledged writes could not be made durable (the disk stays attached)."""
    svc = context.service()
    return svc.disks.describe(svc.attachments.detach(name, force=bool(body and body.force)))
