"""How far behind a disk's copy is: the replicator's counters, its lag against the RPO target,
and the progress marker that carries the lag across restarts and to other hosts.

Lag (the RPO): a pass that starts at time t and ends with the target's frontier at the end of
the source's contiguous log as listed at t proves that every write acknowledged before t is on
the target, so t becomes the *last sync time* (as Azure reports it). Lag in seconds is now minus
that; lag in bytes is the size of the source segments listed but not yet copied.

The progress marker (`disks/<id>/replication.json` on the target: last sync time, frontier) is
the one object overwritten in place: a hint, never trusted for correctness (the listing is), so
a lost or stale marker only delays the lag figure. The host that replicates a disk reports its
own counters; any other host reads the marker (`status_from_marker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from blockstore.clock import Clock
from blockstore.errors import NotFound
from blockstore.format import keys
from blockstore.store.base import ObjectStore

progress_key = keys.replication_progress_key


@dataclass
class ReplicationStats:
    """Counters of one disk's replicator; read by the API and /metrics, never re-counted."""

    passes: int = 0
    objects_copied: int = 0
    bytes_copied: int = 0
    objects_skipped: int = 0  # already on the target (create-if-absent said so)
    objects_replaced: int = 0  # an older writer's object at that key, replaced (failback)
    objects_deleted: int = 0
    errors: int = 0
    last_error: str | None = None
    frontier_seq: int = 0  # end of the target's replay
    source_seq: int = 0  # end of the source's contiguous log at the last listing
    lag_bytes: int = 0
    last_sync_time: float | None = None
    started: float = 0.0


def replicator_status(stats: ReplicationStats, rpo_target: float, now: float) -> dict[str, Any]:
    """What the API shows of a disk this host replicates: lag in seconds and bytes, against
    the RPO target."""
    since = stats.last_sync_time if stats.last_sync_time is not None else stats.started
    lag = max(0.0, now - since)
    return {
        "state": "synced" if stats.last_sync_time is not None else "seeding",
        "last_sync_time": stats.last_sync_time,
        "lag_seconds": round(lag, 3),
        "lag_bytes": stats.lag_bytes,
        "rpo_target_seconds": rpo_target,
        "rpo_exceeded": lag > rpo_target,
        "frontier_seq": stats.frontier_seq,
        "source_seq": stats.source_seq,
        "objects_copied": stats.objects_copied,
        "bytes_copied": stats.bytes_copied,
        "objects_deleted": stats.objects_deleted,
        "errors": stats.errors,
        "last_error": stats.last_error,
    }


def read_marker(target: ObjectStore, disk_id: str) -> dict[str, Any]:
    """The progress marker of `disk_id` on `target`; empty when there is none (or it is torn)."""
    try:
        marker = json.loads(target.get(progress_key(disk_id)))
    except (NotFound, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def write_marker(target: ObjectStore, disk_id: str, stats: ReplicationStats, now: float) -> None:
    body = {
        "disk_id": disk_id,
        "frontier_seq": stats.frontier_seq,
        "last_sync_time": stats.last_sync_time,
        "written": now,
    }
    target.put(progress_key(disk_id), json.dumps(body).encode())


def status_from_marker(
    target: ObjectStore, disk_id: str, rpo_target: float, clock: Clock
) -> dict[str, Any]:
    """What the API shows of a disk another host replicates (or none yet): from the marker."""
    last = read_marker(target, disk_id).get("last_sync_time")
    lag = clock.time() - float(last) if last is not None else None
    return {
        "state": "synced" if last is not None else "seeding",
        "last_sync_time": last,
        "lag_seconds": round(lag, 3) if lag is not None else None,
        "lag_bytes": None,
        "rpo_target_seconds": rpo_target,
        "rpo_exceeded": lag is None or lag > rpo_target,
        "reported_by": "progress marker",
    }
