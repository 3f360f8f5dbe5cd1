"""How far a grs disk's secondary is behind what its primary has acknowledged.

The one measurement behind every replication status: `GET /v1/disks/{name}`, `/metrics`, the
CLI, on any host that serves the API for the bucket, and the drain before a planned failover.

Why it reads both stores rather than the replicator's counters: a flush or a FUA write returns
only once its segment is in the primary store (DESIGN.md, durability contract), so a listing of
the primary's log made at time t holds every write acknowledged before t. The replicator's last
listing may be older than a flush that has already returned, and a status built on it said
"synced, no lag" while the flushed segments had not been copied (issue #23). So:

- *pending* are the primary's segments after a known-good frontier F of the secondary that the
  secondary does not hold with the same ETag (objects are immutable and copied byte for byte,
  so equal ETags mean the same bytes). F is the larger of what the caller knows for sure (the
  replicator's own frontier, or the one in its progress marker) and the secondary's newest
  checkpoint, which is copied only after every segment it covers.
- ``lag_bytes`` is their size; ``lag_seconds`` the age of the oldest of them, by the time the
  primary store wrote it (0 when nothing is pending). A segment that landed but whose write was
  not acknowledged yet counts too: the figure may be high by one batch, never low.
- "synced" means nothing is pending: the secondary held, when the listings were made, every
  segment acknowledged before the status was asked for.

Cost: four LISTs (the checkpoints and the logs after F of both stores), each short while the
copy keeps up. Failure: a store error propagates (`Unavailable` after the stack's retry deadline);
callers report the status as unknown rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockstore.format import keys
from blockstore.store.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Lag:
    """One measurement of a secondary against its primary."""

    frontier_seq: int  # the secondary holds every segment up to here (a known-good frontier)
    source_seq: int  # newest segment in the primary's log after that frontier (else the frontier)
    pending_segments: int
    pending_bytes: int
    oldest_pending: float | None  # when the primary store wrote the oldest pending segment

    def seconds(self, now: float) -> float:
        """Age of the oldest unreplicated acknowledged write; 0 when nothing is pending."""
        if not self.pending_segments or self.oldest_pending is None:
            return 0.0
        return max(0.0, now - self.oldest_pending)


def _segments_after(store: ObjectStore, disk_id: str, seq: int) -> dict[int, ObjectInfo]:
    start_after = keys.segment_key(disk_id, seq) if seq else None
    out = {}
    for info in store.list(keys.segment_prefix(disk_id), start_after):
        parsed = keys.parse_segment_key(info.key)
        if parsed is not None and parsed[0] == disk_id:
            out[parsed[1]] = info
    return out


def _newest_checkpoint(store: ObjectStore, disk_id: str) -> ObjectInfo | None:
    mine = [i for i in store.list(keys.checkpoint_prefix(disk_id)) if _seq(i)]
    return max(mine, key=_seq, default=None)


def _seq(info: ObjectInfo | None) -> int:
    """The seq of a checkpoint's key (0: none, or not a checkpoint)."""
    parsed = keys.parse_checkpoint_key(info.key) if info is not None else None
    return parsed[1] if parsed else 0


def measure(source: ObjectStore, target: ObjectStore, disk_id: str, known: int = 0) -> Lag:
    """Measure now. `known`: a frontier the caller knows the target holds (0: none)."""
    frontier = max(known, _seq(_newest_checkpoint(target, disk_id)))
    # The source first: what it lists is what has to be on the target; a segment that lands
    # on the source after this listing was acknowledged after the measurement began.
    wanted = _segments_after(source, disk_id, frontier)
    source_ckpt = _newest_checkpoint(source, disk_id)
    held = _segments_after(target, disk_id, frontier) if wanted or source_ckpt else {}
    pending = {
        seq: info for seq, info in wanted.items() if seq not in held or held[seq].etag != info.etag
    }
    # The source's GC may have removed segments after the frontier that its newest checkpoint
    # covers: then that checkpoint is the only copy of their data, and it is pending too.
    run = frontier
    while run + 1 in wanted:
        run += 1
    if source_ckpt is not None and _seq(source_ckpt) > run:
        pending[_seq(source_ckpt)] = source_ckpt
    stamps = [i.modified for i in pending.values() if i.modified is not None]
    done = frontier
    while done + 1 in wanted and done + 1 not in pending:
        done += 1
    return Lag(
        frontier_seq=done,
        source_seq=max([*wanted, _seq(source_ckpt), frontier]),
        pending_segments=len(pending),
        pending_bytes=sum(i.size for i in pending.values()),
        oldest_pending=min(stamps) if stamps else None,
    )


def status_fields(
    lag: Lag, now: float, last_sync_time: float | None, rpo_target_seconds: float
) -> dict[str, Any]:
    """The lag part of a replication status, as the API and /metrics show it."""
    seconds = lag.seconds(now)
    if not lag.pending_segments:
        state = "synced"
    else:
        state = "lagging" if last_sync_time is not None else "seeding"
    return {
        "state": state,
        "lag_seconds": round(seconds, 3),
        "lag_bytes": lag.pending_bytes,
        "pending_segments": lag.pending_segments,
        "rpo_target_seconds": rpo_target_seconds,
        "rpo_exceeded": seconds > rpo_target_seconds,
        "frontier_seq": lag.frontier_seq,
        "source_seq": lag.source_seq,
    }
