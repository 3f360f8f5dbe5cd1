"""The `blockstore` command line: a thin adapter over the same services the API uses."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import blockstore
from blockstore.errors import BlockstoreError
from blockstore.host.config import load_settings
from cli.client import ApiClient

app = typer.Typer(
    help="blockstore: durable virtual disks in S3-compatible object storage, served over NBD.",
    no_args_is_help=True,
    add_completion=False,
)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Service home directory [default: $BLOCKSTORE_HOME or ./.blockstore]"
    ),
]


@app.command()
def version() -> None:
    """Print the blockstore version."""
    typer.echo(blockstore.__version__)


@app.command()
def serve(
    home: HomeOption = None,
    port: Annotated[int | None, typer.Option("--port", help="API port [default: 8470]")] = None,
) -> None:
    """Run the service: the embedded SeaweedFS (unless an S3 endpoint is configured) and the API.

    Configure an external store with BLOCKSTORE_S3_ENDPOINT, BLOCKSTORE_S3_BUCKET,
    BLOCKSTORE_S3_ACCESS_KEY, BLOCKSTORE_S3_SECRET_KEY, BLOCKSTORE_S3_REGION, or [s3] in
    <home>/config.toml."""
    from api.serve import serve as run

    try:
        run(load_settings(home, port))
    except BlockstoreError as exc:
        # A configuration or store problem at start-up: one line that says what to do.
        typer.secho(f"blockstore serve: error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Short runs, under 4 min")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results dir (default: bench/results/<time>)")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="S3 endpoint (default: an embedded SeaweedFS)")
    ] = None,
    bucket: Annotated[str, typer.Option("--bucket", help="Bucket with --endpoint")] = "bsbench",
    region: Annotated[str, typer.Option("--region", help="Region with --endpoint")] = "us-east-1",
) -> None:
    """Benchmark every caching mode, the ephemeral disk, the floors and nbdkit's S3 peer (fio and
    ioping over NBD): raw JSON, a Markdown report and charts. With --endpoint, credentials come
    from BLOCKSTORE_S3_ACCESS_KEY / _SECRET_KEY; the bench deletes every object it wrote."""
    from cli import bench as runner

    try:
        report = runner.run(quick, out, runner.store_from_options(endpoint, bucket, region))
    except BlockstoreError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"report: {report}")


# -- the API client commands --------------------------------------------------------------------

disk_app = typer.Typer(
    help="Create, list, show, resize, delete, attach and detach disks.", no_args_is_help=True
)
snapshot_app = typer.Typer(
    help="Create, list and delete snapshots; list changed ranges.", no_args_is_help=True
)
operation_app = typer.Typer(help="Follow long-running operations.", no_args_is_help=True)
app.add_typer(disk_app, name="disk")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(operation_app, name="operation")

UrlOption = Annotated[
    str | None, typer.Option("--url", help="API URL [default: $BLOCKSTORE_URL or local service]")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="API token [default: $BLOCKSTORE_API_TOKEN or <home>/api-token]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Earlier snapshot [default: the empty disk]")
]


def _client(url: str | None, token: str | None, home: Path | None) -> ApiClient:
    try:
        client = ApiClient(url=url, token=token, home=home)
    except BlockstoreError as exc:  # no token, a malformed config.toml...
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if client.notice:
        typer.secho(f"note: {client.notice}", fg="yellow", err=True)
    return client


def _run(fn: Callable[[], Any], as_json: bool, table: Callable[[Any], None] | None = None) -> Any:
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


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _disk_table(disks: list[dict[str, Any]]) -> None:
    t = Table("NAME", "SIZE", "KIND", "CACHING", "REDUNDANCY", "ATTACHED TO", "STORED", "CREATED")
    for d in disks:
        att = d.get("attachment")
        t.add_row(
            d["name"],
            _size(d["size_bytes"]),
            d["kind"],
            d["caching"],
            d["redundancy"],
            f"{att['vm']} ({att['host']})" if att else "-",
            _size(d.get("bytes_stored")),
            d["created"],
        )
    Console().print(t)


def _kv(title: str) -> Callable[[dict[str, Any]], None]:
    def show(obj: dict[str, Any]) -> None:
        t = Table(title=title, show_header=False)
        t.add_column(no_wrap=True)
        t.add_column(overflow="fold")  # a long value wraps onto more lines, never cut off
        for k, v in obj.items():
            t.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
        Console().print(t)

    return show


@disk_app.command("create")
def disk_create(
    name: str,
    size: Annotated[str | None, typer.Option(help="Size: 20G, 512M, 1T or bytes")] = None,
    kind: Annotated[str, typer.Option(help="os, data or ephemeral")] = "data",
    caching: Annotated[str | None, typer.Option(help="none, readonly or readwrite")] = None,
    redundancy: Annotated[str, typer.Option(help="lrs or grs")] = "lrs",
    source_snapshot: Annotated[str | None, typer.Option(help="<disk>/<snapshot>")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a disk."""
    body: dict[str, Any] = {"name": name, "kind": kind, "redundancy": redundancy}
    if size is not None:
        body["size_bytes"] = _parse_size(size)
    if caching:
        body["caching"] = caching
    if source_snapshot:
        body["source_snapshot"] = source_snapshot
    c = _client(url, token, home)
    _run(lambda: c.post("/v1/disks", body), as_json, _kv(f"disk {name}"))


@disk_app.command("list")
def disk_list(
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List disks."""
    c = _client(url, token, home)
    _run(lambda: c.get("/v1/disks")["disks"], as_json, _disk_table)


@disk_app.command("show")
def disk_show(
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one disk (its attachment's URI and QEMU/libvirt snippets whole, one per line)."""
    c = _client(url, token, home)
    _run(lambda: c.get(f"/v1/disks/{name}"), as_json, _whole_lines)


@disk_app.command("resize")
def disk_resize(
    name: str,
    size: Annotated[str, typer.Argument(help="New size: 40G, or bytes")],
    allow_shrink: Annotated[bool, typer.Option(help="Allow dropping the tail")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grow a disk (attached or not); shrink only with --allow-shrink."""
    c = _client(url, token, home)
    body = {"size_bytes": _parse_size(size), "allow_shrink": allow_shrink}
    _run(lambda: c.patch(f"/v1/disks/{name}", body), as_json, _kv(f"disk {name}"))


@disk_app.command("delete")
def disk_delete(
    name: str,
    wait: Annotated[bool, typer.Option(help="Wait for the removal")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a disk (it must be detached); its objects are removed in the background."""
    c = _client(url, token, home)
    op = _run(lambda: c.delete(f"/v1/disks/{name}"), as_json, _kv("operation"))
    if wait:
        _wait(c, op["id"], as_json)


@disk_app.command("attach")
def disk_attach(
    name: str,
    vm: Annotated[str, typer.Option(help="The VM to attach to")],
    force: Annotated[bool, typer.Option(help="Take it from another VM/host (fences it)")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Attach a disk to a VM on this host and print how to connect to it."""
    c = _client(url, token, home)
    _run(
        lambda: c.post(f"/v1/disks/{name}/attach", {"vm": vm, "force": force}),
        as_json,
        _whole_lines,
    )


def _whole_lines(obj: dict[str, Any], parent: str = "") -> None:
    """`key: value`, one per line, never wrapped or cut whatever the terminal's width, so a
    URI or a -blockdev argument can be copied as printed; a multi-line value (the libvirt
    XML) follows its key as is; a nested object's keys are `parent.key`."""
    for key, value in obj.items():
        name = f"{parent}{key}"
        if isinstance(value, dict):
            _whole_lines(value, f"{name}.")
        elif isinstance(value, list):
            typer.echo(f"{name}: {json.dumps(value, separators=(',', ':'))}")
        elif isinstance(value, str) and "\n" in value:
            typer.echo(f"{name}:\n{value}")
        else:
            typer.echo(f"{name}: {value}")


@disk_app.command("detach")
def disk_detach(
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    force: Annotated[
        bool,
        typer.Option(help="Detach even while a VM is connected (its next I/O fails)"),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Flush and detach a disk; it keeps its data. Refused while a VM is connected to it."""
    c = _client(url, token, home)
    _run(
        lambda: c.post(f"/v1/disks/{name}/detach", {"force": force}),
        as_json,
        _kv(f"disk {name}"),
    )


@disk_app.command("failover")
def disk_failover(
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve a geo-redundant (grs) disk from the secondary region from now on."""
    c = _client(url, token, home)
    _run(lambda: c.post(f"/v1/disks/{name}/failover"), as_json, _kv(f"disk {name}"))


@disk_app.command("failback")
def disk_failback(
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
    wait: Annotated[bool, typer.Option(help="Wait for the operation to finish")] = True,
) -> None:
    """Re-seed the primary region from the secondary and serve the disk from it again."""
    c = _client(url, token, home)
    op = _run(lambda: c.post(f"/v1/disks/{name}/failback"), as_json and not wait)
    if wait:
        _wait(c, op["id"], as_json)


@disk_app.command("redundancy")
def disk_redundancy(
    name: str,
    redundancy: Annotated[str, typer.Argument(help="lrs or grs")],
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
    wait: Annotated[bool, typer.Option(help="Wait for the operation to finish")] = True,
) -> None:
    """Change a disk to grs (seeds the secondary copy) or lrs (removes it)."""
    c = _client(url, token, home)
    res = _run(lambda: c.patch(f"/v1/disks/{name}", {"redundancy": redundancy}), False)
    if "status" in res and wait:
        _wait(c, res["id"], as_json)
    else:
        _run(lambda: res, as_json, _kv(f"disk {name}"))


@snapshot_app.command("copy")
def snapshot_copy(
    disk: str,
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
    wait: Annotated[bool, typer.Option(help="Wait for the operation to finish")] = True,
) -> None:
    """Copy a snapshot to the other region (incremental against earlier copies)."""
    c = _client(url, token, home)
    op = _run(lambda: c.post(f"/v1/disks/{disk}/snapshots/{name}/copy"), as_json and not wait)
    if wait:
        _wait(c, op["id"], as_json)


@snapshot_app.command("create")
def snapshot_create(
    disk: str,
    name: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Snapshot a disk (crash-consistent; an attached disk is flushed first)."""
    c = _client(url, token, home)
    _run(
        lambda: c.post(f"/v1/disks/{disk}/snapshots", {"name": name}),
        as_json,
        _kv(f"snapshot {disk}/{name}"),
    )


@snapshot_app.command("list")
def snapshot_list(
    disk: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a disk's snapshots."""
    c = _client(url, token, home)

    def table(snaps: list[dict[str, Any]]) -> None:
        t = Table("NAME", "SIZE", "CREATED", "CLONES")
        for s in snaps:
            t.add_row(s["name"], _size(s["size"]), s["created"], ", ".join(s["clones"]) or "-")
        Console().print(t)

    _run(lambda: c.get(f"/v1/disks/{disk}/snapshots")["snapshots"], as_json, table)


@snapshot_app.command("delete")
def snapshot_delete(
    disk: str, name: str, url: UrlOption = None, token: TokenOption = None, home: HomeOption = None
) -> None:
    """Delete a snapshot."""
    c = _client(url, token, home)
    _run(lambda: c.delete(f"/v1/disks/{disk}/snapshots/{name}"), False)
    typer.echo(f"deleted snapshot {disk}/{name}")


@snapshot_app.command("changes")
def snapshot_changes(
    disk: str,
    name: str,
    since: SinceOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the ranges that changed between two snapshots."""
    c = _client(url, token, home)
    params = {"since": since} if since else {}

    def table(res: dict[str, Any]) -> None:
        t = Table("OFFSET", "LENGTH", title=f"{_size(res['changed_bytes'])} changed")
        for r in res["ranges"]:
            t.add_row(str(r["offset"]), str(r["length"]))
        Console().print(t)

    _run(lambda: c.get(f"/v1/disks/{disk}/snapshots/{name}/changes", params=params), as_json, table)


@operation_app.command("list")
def operation_list(
    target: Annotated[str | None, typer.Option(help="only this disk (or disk/snapshot)")] = None,
    status: Annotated[str | None, typer.Option(help="running, succeeded or failed")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List operations, newest first."""
    c = _client(url, token, home)
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

    _run(lambda: c.get("/v1/operations", params=params), as_json, table)


@operation_app.command("show")
def operation_show(
    op_id: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an operation."""
    c = _client(url, token, home)
    _run(lambda: c.get(f"/v1/operations/{op_id}"), as_json, _kv(f"operation {op_id}"))


@operation_app.command("wait")
def operation_wait(
    op_id: str,
    url: UrlOption = None,
    token: TokenOption = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wait for an operation to finish, with a progress bar; exit 1 if it failed."""
    _wait(_client(url, token, home), op_id, as_json)


def _wait(c: ApiClient, op_id: str, as_json: bool) -> None:
    op: dict[str, Any] = {}
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task(f"operation {op_id}", total=1.0)
        while True:
            op = _run(lambda: c.get(f"/v1/operations/{op_id}"), False)
            progress.update(task, completed=op.get("progress", 0.0))
            if op["status"] != "running":
                break
            time.sleep(0.5)
    _run(lambda: op, as_json, _kv(f"operation {op_id}"))
    if op["status"] == "failed":
        raise typer.Exit(1)


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 20G, 512M, 1048576)") from None


if __name__ == "__main__":
    app()
