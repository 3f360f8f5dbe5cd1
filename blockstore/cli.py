"""The `blockstore` command line: a thin adapter over the same services the API uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import blockstore
from blockstore.config import load_settings

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
    from blockstore.server import serve as run

    run(load_settings(home, port))


if __name__ == "__main__":
    app()
