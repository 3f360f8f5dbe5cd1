"""`blockstore bench`: run the bench suite (bench/suite.py) with a progress bar, then write the
report (bench/report.py) next to the raw JSON.

Place: the CLI's `bench` command calls `run()`; the suite and the report live in `bench/` in the
repository (they need fio, ioping, nbdfuse and nbdkit, which the product itself does not).
Failure behaviour: Ctrl-C or SIGTERM stop the run through the suite's clean-up (every process,
mount and object it made); the raw JSON written so far stays, marked incomplete.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from blockstore.errors import InvalidArgument
from blockstore.store.s3 import S3Config

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("nbdkit", "fio", "ioping", "nbdfuse", "fusermount3")


def store_from_options(endpoint: str | None, bucket: str, region: str) -> S3Config | None:
    """The configured store (credentials from BLOCKSTORE_S3_ACCESS_KEY / _SECRET_KEY), or None
    for the embedded SeaweedFS the bench starts itself."""
    if not endpoint:
        return None
    access = os.environ.get("BLOCKSTORE_S3_ACCESS_KEY")
    secret = os.environ.get("BLOCKSTORE_S3_SECRET_KEY")
    if not access or not secret:
        raise InvalidArgument(
            "--endpoint needs BLOCKSTORE_S3_ACCESS_KEY and BLOCKSTORE_S3_SECRET_KEY set"
        )
    return S3Config(
        endpoint=endpoint, bucket=bucket, access_key=access, secret_key=secret, region=region
    )


def run(quick: bool, out: Path | None, s3: S3Config | None, only: tuple[str, ...] = ()) -> Path:
    """Run the suite (the targets whose name contains one of `only`, or all); returns the
    report's path."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise InvalidArgument(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench import report, suite

    out = out or REPO / "bench" / "results" / time.strftime("%Y-%m-%d-%H%M%S")
    cfg = replace(suite.SuiteConfig.make(out, quick, s3), only=only)
    steps = suite.plan(cfg.targets(), cfg.variant_rounds)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("starting", total=len(steps))
        started = [False]

        def step(name: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=name[:70])

        with suite.sigterm_as_interrupt():
            suite.run_suite(cfg, step)
        bar.update(task, completed=len(steps), description="report")
        return report.write_report(out)
