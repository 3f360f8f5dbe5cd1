"""`blockstore group ...`: one crash-consistent snapshot of several disks (consistency groups):
take, list, delete, clone the whole group, changed ranges per member."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import ApiClient
from cli.common import api_command, call, key_values, size_text

group_app = typer.Typer(
    help="Group snapshots: several disks at one crash-consistent cut.", no_args_is_help=True
)


@api_command(group_app, "create")
def group_create(
    c: ApiClient,
    as_json: bool,
    name: str,
    disks: Annotated[list[str], typer.Argument(help="The member disks")],
) -> None:
    """Snapshot the disks at one cut (attached ones hold their writes for a moment)."""
    body = {"name": name, "disks": disks}
    call(lambda: c.post("/v1/snapshot-groups", body), as_json, key_values(f"group {name}"))


@api_command(group_app, "list")
def group_list(c: ApiClient, as_json: bool) -> None:
    """List group snapshots."""

    def table(groups: list[dict[str, Any]]) -> None:
        t = Table("NAME", "CREATED", "DISKS")
        for g in groups:
            t.add_row(g["name"], g["created"], ", ".join(m["disk"] for m in g["members"]))
        Console().print(t)

    call(lambda: c.get("/v1/snapshot-groups")["groups"], as_json, table)


@api_command(group_app, "delete", json_output=False)
def group_delete(c: ApiClient, as_json: bool, name: str) -> None:
    """Delete a group snapshot (its members' snapshots with it)."""
    call(lambda: c.delete(f"/v1/snapshot-groups/{name}"), False)
    typer.echo(f"deleted group snapshot {name}")


@api_command(group_app, "clone")
def group_clone(
    c: ApiClient,
    as_json: bool,
    name: str,
    prefix: Annotated[str, typer.Option(help="New disks are named <prefix>-<member>")],
) -> None:
    """New disks from every member: together, the group's cut."""

    def table(res: dict[str, Any]) -> None:
        t = Table("NAME", "SIZE", "FROM")
        for d in res["disks"]:
            t.add_row(d["name"], size_text(d["size_bytes"]), d["source_snapshot"])
        Console().print(t)

    call(lambda: c.post(f"/v1/snapshot-groups/{name}/clone", {"prefix": prefix}), as_json, table)


@api_command(group_app, "changes")
def group_changes(
    c: ApiClient,
    as_json: bool,
    name: str,
    since: Annotated[str | None, typer.Option(help="Earlier group [default: empty disks]")] = None,
) -> None:
    """Per member, the bytes that changed between two group snapshots."""
    params = {"since": since} if since else {}

    def table(res: dict[str, Any]) -> None:
        t = Table("DISK", "CHANGED", "RANGES")
        for m in res["members"]:
            t.add_row(m["disk"], size_text(m["changed_bytes"]), str(len(m["ranges"])))
        Console().print(t)

    call(lambda: c.get(f"/v1/snapshot-groups/{name}/changes", params=params), as_json, table)
