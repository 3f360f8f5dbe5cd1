"""The `blockstore` command line: a typer app that talks HTTP to a running service.

An adapter outside the core, like `api/` and `nbd_plugin/`: it starts the service (`serve`,
api/serve.py) and the bench (cli/bench.py) in this process; every other command is a request
to the API through `cli.client.ApiClient`, one module per resource (cli/disks.py,
cli/snapshots.py, cli/operations.py; what they share is in cli/common.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import blockstore
from blockstore.errors import BlockstoreError
from blockstore.host.config import load_settings
from cli.backups import backup_app
from cli.common import HomeOption
from cli.disks import disk_app
from cli.encryption import encryption_app
from cli.groups import group_app
from cli.operations import operation_app
from cli.points import point_app
from cli.snapshots import snapshot_app

app = typer.Typer(
    help="blockstore: durable virtual disks in S3-compatible object storage, served over NBD.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(disk_app, name="disk")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(point_app, name="point")
app.add_typer(group_app, name="group")
app.add_typer(backup_app, name="backup")
app.add_typer(encryption_app, name="encryption")
app.add_typer(operation_app, name="operation")


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
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run the targets whose name contains this (repeatable)"),
    ] = None,
) -> None:
    """Benchmark every caching mode, the ephemeral disk, the floors and nbdkit's S3 peer (fio and
    ioping over NBD): raw JSON, a Markdown report and charts. With --endpoint, credentials come
    from BLOCKSTORE_S3_ACCESS_KEY / _SECRET_KEY; the bench deletes every object it wrote."""
    from cli import bench as runner

    try:
        s3 = runner.store_from_options(endpoint, bucket, region)
        report = runner.run(quick, out, s3, tuple(only or ()))
    except BlockstoreError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"report: {report}")


if __name__ == "__main__":
    app()
