"""The replicator's progress: its counters, and the marker that carries them across restarts and
to other hosts.

The counters (`ReplicationStats`) are what the API and /metrics show next to the lag; the lag
itself is measured against the primary's log when asked for (geo/lag.py), because the last
listing of a pass may predate writes that have already been acknowledged.

The progress marker (`disks/<id>/replication.json` on the target: last sync time, frontier) is
the one object overwritten in place: a hint, never trusted for correctness (the listing is), so
a lost or stale marker only delays a figure. The host that replicates a disk reports its own
counters (`counters`); any other host reads the marker (`marker_counters`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
    last_sync_time: float | None = None
    started: float = 0.0


def counters(stats: ReplicationStats) -> dict[str, Any]:
    """A replicator's counters, as the API shows them (the lag is not among them)."""
    return {
        "last_sync_time": stats.last_sync_time,
        "frontier_seq": stats.frontier_seq,
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


def marker_counters(target: ObjectStore, disk_id: str) -> dict[str, Any]:
    """What another host's replicator says of a disk: when it last proved the copy complete.
    The frontier in its marker is a hint only, so it is not used to measure the lag."""
    last = read_marker(target, disk_id).get("last_sync_time")
    return {"last_sync_time": last, "reported_by": "progress marker"}
