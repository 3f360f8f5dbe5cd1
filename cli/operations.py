"""`blockstore operation ...`: follow long-running operations (deletes, seeding, failbacks,
snapshot copies); `follow` is also what the other commands' --wait does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cli.client import ApiClient
from cli.common import api_command, call, key_values

operation_app = typer.Typer(help="Follow long-running operations.", no_args_is_help=True)


@api_command(operation_app, "list")
def operation_list(
    c: ApiClient,
    as_json: bool,
    target: Annotated[str | None, typer.Option(help="only this disk (or disk/snapshot)")] = None,
    status: Annotated[str | None, typer.Option(help="running, succeeded or failed")] = None,
) -> None:
    """List operations, newest first."""
    params = {k: v for k, v in (("target", target), ("status", status)) if v is not None}

    def table(ops: list[dict[str, Any]]) -> None:
        t = Table("ID", "KIND", "TARGET", "STATUS", "PROGRESS", "CREATED", "ERROR")
        for op in ops:
            t.add_row(
                op["id"],
                op["kind"],
                op["target"],
                op["status"],
                f"{op['progress']:.0%}",
                op["created"],
                op["error"] or "",
            )
        Console().print(t)

    call(lambda: c.get("/v1/operations", params=params), as_json, table)


@api_command(operation_app, "show")
def operation_show(c: ApiClient, as_json: bool, op_id: str) -> None:
    """Show an operation."""
    call(lambda: c.get(f"/v1/operations/{op_id}"), as_json, key_values(f"operation {op_id}"))


@api_command(operation_app, "wait")
def operation_wait(c: ApiClient, as_json: bool, op_id: str) -> None:
    """Wait for an operation to finish, with a progress bar; exit 1 if it failed."""
    follow(c, op_id, as_json)


def start(c: ApiClient, request: Callable[[], Any], *, as_json: bool, wait: bool) -> None:
    """Start an operation with `request`, then follow it to its end (with `wait`), or print
    it as JSON (with --json)."""
    op = call(request, as_json and not wait)
    if wait:
        follow(c, op["id"], as_json)


def follow(c: ApiClient, op_id: str, as_json: bool) -> None:
    """Wait for an operation to finish, with a progress bar; print it; exit 1 if it failed."""
    op: dict[str, Any] = {}
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task(f"operation {op_id}", total=1.0)
        while True:
            op = call(lambda: c.get(f"/v1/operations/{op_id}"), False)
            progress.update(task, completed=op.get("progress", 0.0))
            if op["status"] != "running":
                break
            time.sleep(0.5)
    call(lambda: op, as_json, key_values(f"operation {op_id}"))
    if op["status"] == "failed":
        raise typer.Exit(1)
