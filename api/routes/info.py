"""`/v1/info`: the service's version and where it keeps the disks."""

from __future__ import annotations

from fastapi import APIRouter

import blockstore
from api.routes.common import Context

router = APIRouter(tags=["service"])


@router.get("/info")
def info(context: Context) -> dict[str, object]:
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
