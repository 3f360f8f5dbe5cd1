"""`blockstore backup ...`: copy a snapshot to a backup target (another S3-compatible store),
list complete backups, restore one as a new disk."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import ApiClient
from cli.common import WaitOption, api_command, call, size_text
from cli.operations import follow, start

backup_app = typer.Typer(
    help="Back up snapshots to other S3 stores; restore them as new disks.", no_args_is_help=True
)
TargetOption = Annotated[str, typer.Option(help="A configured backup target")]


@api_command(backup_app, "create")
def backup_create(
    c: ApiClient,
    as_json: bool,
    disk: str,
    snapshot: str,
    target: TargetOption = "default",
    *,
    wait: WaitOption = True,
) -> None:
    """Copy a snapshot to a backup target (only what the target does not hold yet)."""
    path = f"/v1/disks/{disk}/snapshots/{snapshot}/backup"
    start(c, lambda: c.post(path, {"target": target}), as_json=as_json, wait=wait)


@api_command(backup_app, "list")
def backup_list(
    c: ApiClient,
    as_json: bool,
    target: Annotated[str | None, typer.Option(help="One target [default: all]")] = None,
) -> None:
    """Complete backups, newest first."""
    params = {"target": target} if target else {}

    def table(res: dict[str, Any]) -> None:
        t = Table("TARGET", "ID", "DISK", "SNAPSHOT", "CREATED", "SIZE", "COPIED")
        for b in res["backups"]:
            t.add_row(b["target"], b["id"], b["disk"], b["snapshot"], b["created"],
                      size_text(b["size"]), size_text(b["copied_bytes"]))  # fmt: skip
        Console().print(t)
        for name, error in res["unreachable"].items():
            typer.echo(f"target {name} did not answer: {error}", err=True)

    call(lambda: c.get("/v1/backups", params=params), as_json, table)


@api_command(backup_app, "restore")
def backup_restore(
    c: ApiClient,
    as_json: bool,
    target: str,
    backup_id: str,
    name: Annotated[str, typer.Argument(help="The new disk")],
    caching: Annotated[str | None, typer.Option(help="none, readonly or readwrite")] = None,
    *,
    wait: WaitOption = True,
) -> None:
    """Create a new disk from a backup (its source disk may be gone)."""
    body = {"name": name, **({"caching": caching} if caching else {})}
    res = call(lambda: c.post(f"/v1/backups/{target}/{backup_id}/restore", body), False)
    if wait:
        follow(c, res["operation"]["id"], as_json)
    else:
        call(lambda: res, as_json)
