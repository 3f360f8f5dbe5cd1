"""`blockstore disk stats`: a disk's performance history as terminal sparklines.

One line per main series of GET /v1/disks/{name}/stats: a sparkline of at most `WIDTH`
columns (each the mean of the points it stands for; a blank where nothing is known), then the
last known value and the largest, e.g. `write IOPS   ▁▁▂▇█▆▃  last 412  max 980`.
"""

from __future__ import annotations

from typing import Any

import typer

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 60
# (the series' name in the answer, its label, the factor its values are shown with)
LINES = (
    ("read_iops", "read IOPS", 1.0),
    ("write_iops", "write IOPS", 1.0),
    ("read_mbps", "read MB/s", 1.0),
    ("write_mbps", "write MB/s", 1.0),
    ("read_p99_ms", "read p99 ms", 1.0),
    ("write_p99_ms", "write p99 ms", 1.0),
    ("cache_hit_ratio", "cache hit %", 100.0),
    ("dirty_bytes", "dirty MB", 1e-6),
    ("store_requests_per_s", "store req/s", 1.0),
    ("store_errors_per_s", "store err/s", 1.0),
    ("replication_lag_seconds", "repl. lag s", 1.0),
)


def columns(values: list[float | None], width: int = WIDTH) -> list[float | None]:
    """`values` squeezed into at most `width` columns, each the mean of its known values."""
    n = len(values)
    if n <= width:
        return list(values)
    out: list[float | None] = []
    for i in range(width):
        part = [v for v in values[i * n // width : (i + 1) * n // width] if v is not None]
        out.append(sum(part) / len(part) if part else None)
    return out


def sparkline(values: list[float | None], width: int = WIDTH) -> str:
    """One character per column, scaled from 0 to the largest column."""
    cols = columns(values, width)
    top = max((v for v in cols if v is not None), default=0.0)
    if top <= 0:
        return "".join(" " if v is None else BARS[0] for v in cols)
    return "".join(
        " " if v is None else BARS[min(len(BARS) - 1, int(v / top * len(BARS)))] for v in cols
    )


def number(v: float) -> str:
    if v >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def print_history(answer: dict[str, Any]) -> None:
    """The lines of `answer` (a GET /v1/disks/{name}/stats answer)."""
    t, step = answer["t"], answer["step_seconds"]
    typer.echo(
        f"disk {answer['disk']}: last {answer['since_seconds']} s, {len(t)} points {step:g} s apart"
    )
    width = max(len(label) for _, label, _ in LINES)
    for key, label, scale in LINES:
        values = [None if v is None else v * scale for v in answer["series"][key]]
        known = [v for v in values if v is not None]
        if not known:
            typer.echo(f"{label:<{width}}  (no data)")
            continue
        typer.echo(
            f"{label:<{width}}  {sparkline(values)}  last {number(known[-1])}  "
            f"max {number(max(known))}"
        )
