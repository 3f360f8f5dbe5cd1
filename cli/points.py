"""`blockstore point ...`: a disk's restore points (every flushed state inside its retention
window): list them with a per-minute summary, the ranges two differ in, revert a detached disk
to one. `blockstore disk create --source-point` makes a new disk from one."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.client import ApiClient
from cli.common import WaitOption, api_command, call, size_text
from cli.operations import follow

point_app = typer.Typer(
    help="Restore points: list, changed ranges, revert a disk to one.", no_args_is_help=True
)
PositionOption = Annotated[int | None, typer.Option(help="The point's log position")]
TimeOption = Annotated[
    str | None, typer.Option(help="A time (ISO 8601, UTC): the last point at or before it")
]


def point_body(position: int | None, time: str | None) -> dict[str, Any]:
    """{position} or {time}: exactly one (the API says which is missing, too)."""
    if (position is None) == (time is None):
        raise typer.BadParameter("give --position or --time (one of them)")
    return {"position": position} if position is not None else {"time": time}


def parse_point(text: str) -> dict[str, Any]:
    """`DISK@POSITION` or `DISK@TIME` (ISO 8601) as a source_point."""
    disk, sep, at = text.partition("@")
    if not sep or not disk or not at:
        raise typer.BadParameter(f"{text!r}: give DISK@POSITION or DISK@TIME (ISO 8601)")
    return {"disk": disk, **({"position": int(at)} if at.isdigit() else {"time": at})}


def parse_duration(text: str) -> int:
    """Seconds of `90`, `90s`, `30m`, `12h`, `7d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], 1)
    try:
        return int(float(t.rstrip("smhd")) * scale)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 3600, 30m, 24h, 7d)") from None


@api_command(point_app, "list")
def point_list(
    c: ApiClient,
    as_json: bool,
    disk: str,
    since: TimeOption = None,
    until: TimeOption = None,
    points: Annotated[bool, typer.Option(help="List every point, not the summary")] = False,
) -> None:
    """A disk's restore points: per minute, how many and how many bytes were written."""
    params = {k: v for k, v in (("from", since), ("to", until)) if v}

    def table(res: dict[str, Any]) -> None:
        title = f"{res['count']} restore points of {disk}, window {res['retention_seconds']} s"
        if points:
            t = Table("POSITION", "TIME", "BYTES", title=title)
            for p in res["points"]:
                t.add_row(str(p["position"]), p["time"], size_text(p["bytes"]))
        else:
            t = Table("MINUTE", "POINTS", "WRITTEN", title=title)
            for m in res["per_minute"]:
                t.add_row(m["minute"], str(m["points"]), size_text(m["bytes"]))
        Console().print(t)

    call(lambda: c.get(f"/v1/disks/{disk}/restore-points", params=params), as_json, table)


@api_command(point_app, "changes")
def point_changes(
    c: ApiClient,
    as_json: bool,
    disk: str,
    since_position: PositionOption = None,
    since_time: TimeOption = None,
    until_position: PositionOption = None,
    until_time: TimeOption = None,
) -> None:
    """The ranges that differ between two restore points (no --until-*: the disk now)."""
    given = {"since_position": since_position, "since_time": since_time,
             "until_position": until_position, "until_time": until_time}  # fmt: skip
    params = {k: v for k, v in given.items() if v is not None}

    def table(res: dict[str, Any]) -> None:
        t = Table("OFFSET", "LENGTH", title=f"{size_text(res['changed_bytes'])} changed")
        for r in res["ranges"]:
            t.add_row(str(r["offset"]), str(r["length"]))
        Console().print(t)

    path = f"/v1/disks/{disk}/restore-points/changes"
    call(lambda: c.get(path, params=params), as_json, table)


@api_command(point_app, "revert")
def point_revert(
    c: ApiClient,
    as_json: bool,
    disk: str,
    position: PositionOption = None,
    time: TimeOption = None,
    *,
    wait: WaitOption = True,
) -> None:
    """Revert a detached disk in place to a restore point (undo: revert to the printed
    undo position while it is inside the window)."""
    body = point_body(position, time)
    res = call(lambda: c.post(f"/v1/disks/{disk}/revert", body), False)
    if not as_json:
        pt = res["point"]
        undo = f"blockstore point revert {disk} --position {res['undo_position']}"
        typer.echo(f"reverting {disk} to position {pt['position']} ({pt['time']}); undo: {undo}")
    if wait:
        follow(c, res["operation"]["id"], as_json)
    elif as_json:
        call(lambda: res, True)
