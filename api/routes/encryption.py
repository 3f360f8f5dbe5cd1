"""`/v1/encryption`: this host's key-encryption key (KEK) and its rotation, which rewraps every
encrypted disk's data keys and rewrites no data (blockstore/control/encryption.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.routes.common import Context

router = APIRouter(tags=["encryption"])


@router.get("/encryption")
def encryption_status(context: Context) -> dict[str, Any]:
    """The KEK provider, its current and known KEKs, and the encrypted disks."""
    return context.service().encryption.status()


@router.post("/encryption/rotate")
def rotate_kek(context: Context) -> dict[str, Any]:
    """Make a new KEK current (local key files; with BLOCKSTORE_KEK, the one the operator set)
    and rewrap every encrypted disk's data keys under it; per disk, the keys rewrapped or the
    error. Run again after a failure: rewrapping is idempotent."""
    return context.service().encryption.rotate()
