"""`blockstore snapshot ...`: create, list and delete snapshots, list the ranges two differ in,
and copy one to the other region."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import ApiClient
from cli.common import WaitOption, api_command, call, key_values, size_text
from cli.operations import start

snapshot_app = typer.Typer(
    help="Create, list and delete snapshots; list changed ranges.", no_args_is_help=True
)
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Earlier snapshot [default: the empty disk]")
]


@api_command(snapshot_app, "copy")
def snapshot_copy(
    c: ApiClient, as_json: bool, disk: str, name: str, *, wait: WaitOption = True
) -> None:
    """Copy a snapshot to the other region (incremental against earlier copies)."""
    copy = f"/v1/disks/{disk}/snapshots/{name}/copy"
    start(c, lambda: c.post(copy), as_json=as_json, wait=wait)


@api_command(snapshot_app, "create")
def snapshot_create(c: ApiClient, as_json: bool, disk: str, name: str) -> None:
    """Snapshot a disk (crash-consistent; an attached disk is flushed first)."""
    call(
        lambda: c.post(f"/v1/disks/{disk}/snapshots", {"name": name}),
        as_json,
        key_values(f"snapshot {disk}/{name}"),
    )


@api_command(snapshot_app, "list")
def snapshot_list(c: ApiClient, as_json: bool, disk: str) -> None:
    """List a disk's snapshots."""

    def table(snaps: list[dict[str, Any]]) -> None:
        t = Table("NAME", "SIZE", "CREATED", "CLONES")
        for s in snaps:
            t.add_row(s["name"], size_text(s["size"]), s["created"], ", ".join(s["clones"]) or "-")
        Console().print(t)

    call(lambda: c.get(f"/v1/disks/{disk}/snapshots")["snapshots"], as_json, table)


@api_command(snapshot_app, "delete", json_output=False)
def snapshot_delete(c: ApiClient, as_json: bool, disk: str, name: str) -> None:
    """Delete a snapshot."""
    call(lambda: c.delete(f"/v1/disks/{disk}/snapshots/{name}"), False)
    typer.echo(f"deleted snapshot {disk}/{name}")


@api_command(snapshot_app, "changes")
def snapshot_changes(
    c: ApiClient, as_json: bool, disk: str, name: str, since: SinceOption = None
) -> None:
    """List the ranges that changed between two snapshots."""
    params = {"since": since} if since else {}

    def table(res: dict[str, Any]) -> None:
        t = Table("OFFSET", "LENGTH", title=f"{size_text(res['changed_bytes'])} changed")
        for r in res["ranges"]:
            t.add_row(str(r["offset"]), str(r["length"]))
        Console().print(t)

    call(lambda: c.get(f"/v1/disks/{disk}/snapshots/{name}/changes", params=params), as_json, table)
