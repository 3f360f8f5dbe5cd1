"""`blockstore encryption ...`: this host's key-encryption key (KEK) and its rotation, which
rewraps every encrypted disk's data keys and rewrites no data."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import ApiClient
from cli.common import api_command, call, key_values

encryption_app = typer.Typer(
    help="Encryption at rest: the key-encryption key and its rotation.", no_args_is_help=True
)


@api_command(encryption_app, "status")
def encryption_status(c: ApiClient, as_json: bool) -> None:
    """The KEK provider (local key files or BLOCKSTORE_KEK), its KEKs, the encrypted disks."""
    call(lambda: c.get("/v1/encryption"), as_json, key_values("encryption"))


@api_command(encryption_app, "rotate")
def encryption_rotate(c: ApiClient, as_json: bool) -> None:
    """Make a new KEK current and rewrap every encrypted disk's data keys under it."""

    def table(result: dict[str, Any]) -> None:
        t = Table(
            "DISK", "KEYS REWRAPPED", "ERROR", title=f"now wrapped by {result['current_kek']}"
        )
        for d in result["disks"]:
            t.add_row(d["disk"], str(d.get("keys_rewrapped", "-")), d.get("error", ""))
        Console().print(t)

    call(lambda: c.post("/v1/encryption/rotate", {}), as_json, table)
