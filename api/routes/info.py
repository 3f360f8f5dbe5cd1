"""`/v1/info`: the service's version, this host's id and where it keeps the disks."""

from __future__ import annotations

from fastapi import APIRouter

import blockstore
from api.routes.common import Context

router = APIRouter(tags=["service"])


@router.get("/info")
def info(context: Context) -> dict[str, object]:
    """Version, this host's id (what attachments and migrations name) and where the disks
    are stored (never the credentials)."""
    s3 = context.settings.s3
    control = context.control
    return {
        "version": blockstore.__version__,
        "host": control.context.host_id if control is not None else None,
        "store": {
            "endpoint": s3.endpoint if s3 else None,
            "bucket": s3.bucket if s3 else None,
            "embedded": context.settings.embedded,
        },
    }
