"""`blockstore disk ...`: create, list, show, resize, delete, attach, detach, migrate live; fail
a grs disk over and back, show or drain its replication; change its redundancy; its QoS caps;
its performance history (`stats`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from blockstore.errors import Conflict
from cli.client import ApiClient
from cli.common import (
    WaitOption,
    api_command,
    call,
    key_values,
    parse_size,
    size_text,
    whole_lines,
)
from cli.operations import follow, start
from cli.points import parse_duration, parse_point
from cli.sparkline import print_history

disk_app = typer.Typer(
    help="Create, list, show, resize, delete, attach and detach disks.", no_args_is_help=True
)

NewSize = Annotated[str, typer.Argument(help="New size: 40G, or bytes")]
AllowShrink = Annotated[bool, typer.Option(help="Allow dropping the tail")]
# QoS caps (README "Performance you can provision"); 0 lifts a cap.
IopsLimit = Annotated[int | None, typer.Option(help="IOPS cap (256 KiB IOs); 0: none")]
MbpsLimit = Annotated[float | None, typer.Option(help="Throughput cap, MB/s; 0: none")]
BurstIops = Annotated[int | None, typer.Option(help="IOPS while burst credits last")]
BurstMbps = Annotated[float | None, typer.Option(help="MB/s while burst credits last")]
BurstSeconds = Annotated[float | None, typer.Option(help="A full credit bucket lasts this long")]


def _qos(**given: float | None) -> dict[str, float]:
    """The QoS fields given on the command line, as the API names them."""
    return {k: v for k, v in given.items() if v is not None}


def _disk_table(disks: list[dict[str, Any]]) -> None:
    t = Table("NAME", "SIZE", "KIND", "CACHING", "REDUNDANCY", "ATTACHED TO", "STORED", "CREATED")
    for d in disks:
        t.add_row(
            d["name"],
            size_text(d["size_bytes"]),
            d["kind"],
            d["caching"],
            d["redundancy"],
            _attached_to(d),
            size_text(d.get("bytes_stored")),
            d["created"],
        )
    Console().print(t)


def _attached_to(disk: dict[str, Any]) -> str:
    att, mig = disk.get("attachment"), disk.get("migration")
    if not att:
        return "-"
    moving = f", migrating to {mig['to_host']}" if mig else ""
    return f"{att['vm']} ({att['host']}{moving})"


@api_command(disk_app, "create")
def disk_create(
    c: ApiClient,
    as_json: bool,
    name: str,
    size: Annotated[str | None, typer.Option(help="Size: 20G, 512M, 1T or bytes")] = None,
    kind: Annotated[str, typer.Option(help="os, data or ephemeral")] = "data",
    caching: Annotated[str | None, typer.Option(help="none, readonly or readwrite")] = None,
    redundancy: Annotated[str, typer.Option(help="lrs or grs")] = "lrs",
    source_snapshot: Annotated[str | None, typer.Option(help="<disk>/<snapshot>")] = None,
    source_point: Annotated[
        str | None, typer.Option(help="A restore point: DISK@POSITION or DISK@TIME (ISO 8601)")
    ] = None,
    retention: Annotated[
        str | None, typer.Option(help="Keep restore points this long: 3600, 30m, 24h, 7d")
    ] = None,
    encrypted: Annotated[
        bool, typer.Option(help="Seal the data under a data key of its own (AES-256-GCM)")
    ] = False,
    compression: Annotated[
        str | None, typer.Option(help="zstd, lz4 or none (default: none, or the source's)")
    ] = None,
    iops_limit: IopsLimit = None,
    mbps_limit: MbpsLimit = None,
    burst_iops: BurstIops = None,
    burst_mbps: BurstMbps = None,
    burst_seconds: BurstSeconds = None,
) -> None:
    """Create a disk (empty, from a snapshot or from a restore point)."""
    body: dict[str, Any] = {"name": name, "kind": kind, "redundancy": redundancy}
    body.update(_qos(iops_limit=iops_limit, mbps_limit=mbps_limit, burst_iops=burst_iops,
                     burst_mbps=burst_mbps, burst_seconds=burst_seconds))  # fmt: skip
    if encrypted:
        body["encrypted"] = True
    if compression:
        body["compression"] = compression
    if size is not None:
        body["size_bytes"] = parse_size(size)
    if caching:
        body["caching"] = caching
    if source_snapshot:
        body["source_snapshot"] = source_snapshot
    if source_point:
        body["source_point"] = parse_point(source_point)
    if retention is not None:
        body["retention_seconds"] = parse_duration(retention)
    call(lambda: c.post("/v1/disks", body), as_json, key_values(f"disk {name}"))


@api_command(disk_app, "list")
def disk_list(c: ApiClient, as_json: bool) -> None:
    """List disks."""
    call(lambda: c.get("/v1/disks")["disks"], as_json, _disk_table)


@api_command(disk_app, "show")
def disk_show(c: ApiClient, as_json: bool, name: str) -> None:
    """Show one disk (its attachment's URI and QEMU/libvirt snippets whole, one per line)."""
    call(lambda: c.get(f"/v1/disks/{name}"), as_json, whole_lines)


@api_command(disk_app, "stats")
def disk_stats(
    c: ApiClient,
    as_json: bool,
    name: str,
    since: Annotated[str, typer.Option(help="How far back: 15m, 1h, 1d (up to 1d)")] = "15m",
) -> None:
    """A disk's performance history kept by the service: IOPS, MB/s, p99 latency, cache hit
    ratio, dirty data, store requests and errors, replication lag, as sparklines."""
    path = f"/v1/disks/{name}/stats"
    call(lambda: c.get(path, params={"since": since}), as_json, print_history)


@api_command(disk_app, "resize")
def disk_resize(
    c: ApiClient,
    as_json: bool,
    name: str,
    size: NewSize,
    allow_shrink: AllowShrink = False,
) -> None:
    """Grow a disk (attached or not); shrink only with --allow-shrink."""
    body = {"size_bytes": parse_size(size), "allow_shrink": allow_shrink}
    call(lambda: c.patch(f"/v1/disks/{name}", body), as_json, key_values(f"disk {name}"))


@api_command(disk_app, "qos")
def disk_qos(
    c: ApiClient,
    as_json: bool,
    name: str,
    iops_limit: IopsLimit = None,
    mbps_limit: MbpsLimit = None,
    burst_iops: BurstIops = None,
    burst_mbps: BurstMbps = None,
    burst_seconds: BurstSeconds = None,
) -> None:
    """Show a disk's QoS caps and what its export measures now; with options, change them
    (a running export applies the change within a second)."""
    body = _qos(iops_limit=iops_limit, mbps_limit=mbps_limit, burst_iops=burst_iops,
                burst_mbps=burst_mbps, burst_seconds=burst_seconds)  # fmt: skip
    path = f"/v1/disks/{name}"
    call(
        lambda: (c.patch(path, body) if body else c.get(path))["qos"],
        as_json,
        key_values(f"disk {name} QoS"),
    )


@api_command(disk_app, "retention")
def disk_retention(
    c: ApiClient,
    as_json: bool,
    name: str,
    window: Annotated[str, typer.Argument(help="3600, 30m, 24h, 7d; 0 turns it off")],
) -> None:
    """Keep every flushed state of a disk restorable for this long (blockstore point ...)."""
    body = {"retention_seconds": parse_duration(window)}
    call(lambda: c.patch(f"/v1/disks/{name}", body), as_json, key_values(f"disk {name}"))


@api_command(disk_app, "delete")
def disk_delete(
    c: ApiClient,
    as_json: bool,
    name: str,
    wait: Annotated[bool, typer.Option(help="Wait for the removal")] = False,
) -> None:
    """Delete a disk (it must be detached); its objects are removed in the background."""
    op = call(lambda: c.delete(f"/v1/disks/{name}"), as_json, key_values("operation"))
    if wait:
        follow(c, op["id"], as_json)


@api_command(disk_app, "attach")
def disk_attach(
    c: ApiClient,
    as_json: bool,
    name: str,
    vm: Annotated[str, typer.Option(help="The VM to attach to")],
    force: Annotated[bool, typer.Option(help="Take it from another VM/host (fences it)")] = False,
) -> None:
    """Attach a disk to a VM on this host and print how to connect to it."""
    call(
        lambda: c.post(f"/v1/disks/{name}/attach", {"vm": vm, "force": force}),
        as_json,
        whole_lines,
    )


@api_command(disk_app, "migrate")
def disk_migrate(
    c: ApiClient,
    as_json: bool,
    name: str,
    vm: Annotated[str | None, typer.Option(help="The VM the disk is attached to")] = None,
    complete: Annotated[
        bool, typer.Option("--complete", help="Switch over now (after QEMU completed)")
    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Call the migration off")] = False,
) -> None:
    """Live migration, run against the DESTINATION host's API: prepare it to take the disk
    over from the host serving it, and print how the destination QEMU connects (its first
    request switches over); --complete switches over now; --cancel (either host) calls it off."""
    if complete and cancel:
        raise typer.BadParameter("--complete and --cancel exclude each other")
    path = f"/v1/disks/{name}/migration"
    if complete:
        call(
            lambda: c.post(f"{path}/complete", {}), as_json, lambda d: whole_lines(d["attachment"])
        )
    elif cancel:
        call(lambda: c.delete(path), as_json, key_values(f"disk {name}"))
    else:
        body = {"vm": vm} if vm else {}
        call(lambda: c.post(path, body), as_json, lambda d: whole_lines(d["migration"]))


@api_command(disk_app, "detach")
def disk_detach(
    c: ApiClient,
    as_json: bool,
    name: str,
    force: Annotated[
        bool,
        typer.Option(help="Detach even while a VM is connected (its next I/O fails)"),
    ] = False,
) -> None:
    """Flush and detach a disk; it keeps its data. Refused while a VM is connected to it."""
    body = {"force": force}
    call(lambda: c.post(f"/v1/disks/{name}/detach", body), as_json, key_values(f"disk {name}"))


@api_command(disk_app, "failover")
def disk_failover(c: ApiClient, as_json: bool, name: str) -> None:
    """Serve a geo-redundant (grs) disk from the secondary region from now on."""
    call(lambda: c.post(f"/v1/disks/{name}/failover"), as_json, key_values(f"disk {name}"))


@api_command(disk_app, "replication")
def disk_replication(
    c: ApiClient,
    as_json: bool,
    name: str,
    *,
    wait: Annotated[
        bool, typer.Option(help="Wait until the secondary holds every write acknowledged so far")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most")] = 60.0,
) -> None:
    """Show a grs disk's replication lag, measured now; --wait drains it before a failover."""
    path = f"/v1/disks/{name}"

    def fetch() -> Any:
        if not wait:
            status = c.get(path)["replication"]
            if status is None:
                raise Conflict(f"disk {name!r} is locally redundant (lrs): nothing is replicated")
            return status
        # the HTTP call outlasts the wait, so the service's answer (200 or 409) is what shows
        body = {"timeout_seconds": timeout}
        return c.request("POST", f"{path}/replication/wait", json=body, timeout=timeout + 30)

    call(fetch, as_json, key_values(f"disk {name}: replication"))


@api_command(disk_app, "failback")
def disk_failback(c: ApiClient, as_json: bool, name: str, *, wait: WaitOption = True) -> None:
    """Re-seed the primary region from the secondary and serve the disk from it again."""
    start(c, lambda: c.post(f"/v1/disks/{name}/failback"), as_json=as_json, wait=wait)


@api_command(disk_app, "redundancy")
def disk_redundancy(
    c: ApiClient,
    as_json: bool,
    name: str,
    redundancy: Annotated[str, typer.Argument(help="lrs or grs")],
    *,
    wait: WaitOption = True,
) -> None:
    """Change a disk to grs (seeds the secondary copy) or lrs (removes it)."""
    res = call(lambda: c.patch(f"/v1/disks/{name}", {"redundancy": redundancy}), False)
    if "status" in res and wait:
        follow(c, res["id"], as_json)
    else:
        call(lambda: res, as_json, key_values(f"disk {name}"))
