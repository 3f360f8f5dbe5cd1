"""`/v1/snapshot-groups`: one crash-consistent snapshot of several disks (consistency groups):
take, list, show, delete, clone the whole group, changed ranges per member."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.models import NAME_PATTERN, GroupClone, GroupCreate
from api.routes.common import Context

router = APIRouter(tags=["snapshot groups"])
GroupName = Annotated[str, Path(pattern=NAME_PATTERN, description="group snapshot name")]


@router.post("/snapshot-groups", status_code=201)
def create_group(body: GroupCreate, response: Response, context: Context) -> dict[str, Any]:
    """Snapshot the disks at one cut: members attached on this host hold their writes for
    the moment it takes (blockstore/control/groups.py). The same request again: 200."""
    group, created = context.service().groups.create(body.name, body.disks)
    if not created:
        response.status_code = 200
    return group


@router.get("/snapshot-groups")
def list_groups(context: Context) -> dict[str, Any]:
    return {"groups": context.service().groups.list_groups()}


@router.get("/snapshot-groups/{name}")
def get_group(name: GroupName, context: Context) -> dict[str, Any]:
    return context.service().groups.get(name)


@router.delete("/snapshot-groups/{name}", status_code=204)
def delete_group(name: GroupName, context: Context) -> Response:
    context.service().groups.delete(name)
    return Response(status_code=204)


@router.post("/snapshot-groups/{name}/clone", status_code=201)
def clone_group(name: GroupName, body: GroupClone, context: Context) -> dict[str, Any]:
    """New disks `<prefix>-<member>`, one from each member: together, the group's cut."""
    svc = context.service()
    disks = svc.groups.clone(name, body.prefix, svc.disks.create)
    return {"disks": [svc.disks.describe(d) for d in disks]}


@router.get("/snapshot-groups/{name}/changes")
def group_changes(
    name: GroupName,
    context: Context,
    since: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> dict[str, Any]:
    """Per member, the ranges that differ between group `since` (default: empty disks) and
    this group."""
    return context.service().groups.changes(name, since)
