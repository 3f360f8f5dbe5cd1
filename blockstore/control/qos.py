"""A disk's QoS caps in the control plane (issue #21; the limits and their semantics:
blockstore/host/qos.py): checked at create and on a change, kept in the disk record as `qos`,
handed to the running export (the supervisor writes the export's QoS file; the plugin applies
it within a second: nbd_plugin/throttle.py), and shown with what the export measures.

Ephemeral disks have no caps: nbdkit's file plugin serves them, not ours. A change of a disk
attached on another host is refused (409), as a resize is: only that host's export can take it.
"""

from __future__ import annotations

from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import DiskKind
from blockstore.control.records import Record
from blockstore.errors import Conflict, InvalidArgument
from blockstore.host.qos import QosLimits

# What the API shows of the export's limiter (host/qos.py `Limiter.counters`), besides limits.
LIVE_FIELDS = ("throttled_seconds", "throttled_requests", "iops_now", "iops_credits",
               "iops_credit_cap", "mbps_now", "mbps_credits", "mbps_credit_cap")  # fmt: skip


def wanted(kind: str, given: dict[str, Any]) -> Record:
    """The record fields a create's QoS settings make (none when the disk is not capped, so
    records made before QoS existed still compare equal)."""
    limits = QosLimits().changed(**given)
    if not limits.capped:
        if any(given.values()):
            raise InvalidArgument("burst settings need iops_limit or mbps_limit")
        return {}
    if kind == DiskKind.ephemeral:
        raise InvalidArgument("ephemeral disks are served from the host's local disk: no QoS caps")
    return {"qos": limits.to_dict()}


def change(ctx: ControlContext, disk: Record, given: dict[str, Any]) -> Record:
    """Apply a PATCH's QoS settings (the ones given; 0 lifts a cap) to the record and to the
    export serving the disk here."""
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return disk
    current = QosLimits.from_dict(disk.get("qos"))
    new = current.changed(**given)
    if new == current:
        return disk
    if disk["kind"] == DiskKind.ephemeral:
        raise InvalidArgument("ephemeral disks are served from the host's local disk: no QoS caps")
    attachment = disk.get("attachment")
    if attachment and attachment["host"] != ctx.host_id:
        raise Conflict(
            f"disk {disk['name']!r} is attached on host {attachment['host']}: change its QoS "
            "through that host's API"
        )
    disk = ctx.set_fields(disk["name"], qos=new.to_dict() if new.capped else None)
    if attachment:
        ctx.exports.set_qos(disk)
    return disk


def describe(ctx: ControlContext, disk: Record) -> dict[str, Any]:
    """`qos` as GET shows it: the limits (zeros: no cap) and, while the disk is attached here,
    what its export's limiter says now (`live`)."""
    out: dict[str, Any] = QosLimits.from_dict(disk.get("qos")).to_dict()
    live = None
    if disk.get("attachment") and disk["attachment"]["host"] == ctx.host_id:
        stats = (ctx.exports.stats(disk) or {}).get("qos")
        if stats:
            live = {k: stats[k] for k in LIVE_FIELDS if k in stats}
    out["live"] = live
    return out
