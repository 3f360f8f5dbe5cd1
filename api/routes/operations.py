"""`/v1/operations`: long-running work (deletes, seeding, failbacks, snapshot copies)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.routes.common import Context

router = APIRouter(tags=["operations"])


@router.get("/operations")
def list_operations(
    context: Context,
    target: Annotated[
        str | None, Query(max_length=130, description="disk or disk/snapshot")
    ] = None,
    status: Annotated[str | None, Query(description="running, succeeded or failed")] = None,
) -> list[dict[str, Any]]:
    """Operations (deletes, seeding, failbacks, snapshot copies), newest first; finished
    ones are kept for 7 days."""
    return context.service().operations.select(target=target, status=status)


@router.get("/operations/{op_id}")
def get_operation(op_id: Annotated[str, Path(max_length=64)], context: Context) -> dict[str, Any]:
    return context.service().operations.get(op_id)
