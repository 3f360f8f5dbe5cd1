"""What every API command of the CLI shares: the connection options, the client, printing.

`api_command` registers a command with the options that say where the API is (`--url`,
`--token`, `--home`) and `--json`, after its own; the command gets a connected `ApiClient`
and whether to print JSON. An API error is printed as its message (the server's own words),
and the command exits 1.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from blockstore.errors import BlockstoreError
from cli.client import ApiClient

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Service home directory [default: $BLOCKSTORE_HOME or ./.blockstore]"
    ),
]
UrlOption = Annotated[
    str | None, typer.Option("--url", help="API URL [default: $BLOCKSTORE_URL or local service]")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="API token [default: $BLOCKSTORE_API_TOKEN or <home>/api-token]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
WaitOption = Annotated[bool, typer.Option(help="Wait for the operation to finish")]

ApiCommand = Callable[..., None]  # (client, as_json, *its own parameters)


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def api_command(
    group: typer.Typer, name: str, *, json_output: bool = True
) -> Callable[[ApiCommand], ApiCommand]:
    """Register `command(client, as_json, ...)` as `name` in `group`, with --url, --token,
    --home and (with `json_output`) --json after its own parameters (before its keyword-only
    ones, which its help lists last)."""

    def register(command: ApiCommand) -> ApiCommand:
        own = list(inspect.signature(command, eval_str=True).parameters.values())[2:]
        first = [p for p in own if p.kind != inspect.Parameter.KEYWORD_ONLY]
        last = [p for p in own if p.kind == inspect.Parameter.KEYWORD_ONLY]
        common = [
            _option("url", UrlOption, None),
            _option("token", TokenOption, None),
            _option("home", HomeOption, None),
        ]
        if json_output:
            common.append(_option("as_json", JsonOption, False))

        def run(*, url: str | None, token: str | None, home: Path | None, **kw: Any) -> None:
            as_json = kw.pop("as_json", False)
            command(connect(url, token, home), as_json, **kw)

        params = first + common + last
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__doc__ = command.__name__, command.__doc__
        group.command(name)(run)
        return command

    return register


def connect(url: str | None, token: str | None, home: Path | None) -> ApiClient:
    try:
        client = ApiClient(url=url, token=token, home=home)
    except BlockstoreError as exc:  # no token, a malformed config.toml...
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if client.notice:
        typer.secho(f"note: {client.notice}", fg="yellow", err=True)
    return client


def call(fn: Callable[[], Any], as_json: bool, table: Callable[[Any], None] | None = None) -> Any:
    """Call the API; print the result; turn an API error into its message and exit 1."""
    try:
        result = fn()
    except BlockstoreError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif table is not None:
        table(result)
    return result


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 20G, 512M, 1048576)") from None


def key_values(title: str) -> Callable[[dict[str, Any]], None]:
    """A two-column table of an object's fields."""

    def show(obj: dict[str, Any]) -> None:
        t = Table(title=title, show_header=False)
        t.add_column(no_wrap=True)
        t.add_column(overflow="fold")  # a long value wraps onto more lines, never cut off
        for k, v in obj.items():
            t.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
        Console().print(t)

    return show


def whole_lines(obj: dict[str, Any], parent: str = "") -> None:
    """`key: value`, one per line, never wrapped or cut whatever the terminal's width, so a
    URI or a -blockdev argument can be copied as printed; a multi-line value (the libvirt
    XML) follows its key as is; a nested object's keys are `parent.key`."""
    for key, value in obj.items():
        name = f"{parent}{key}"
        if isinstance(value, dict):
            whole_lines(value, f"{name}.")
        elif isinstance(value, list):
            typer.echo(f"{name}: {json.dumps(value, separators=(',', ':'))}")
        elif isinstance(value, str) and "\n" in value:
            typer.echo(f"{name}:\n{value}")
        else:
            typer.echo(f"{name}: {value}")
