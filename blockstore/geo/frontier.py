"""Where one store's copy of a disk's log ends, and the cuts a change of region makes there.

The *frontier* of a copy is the end of its replay: its newest checkpoint plus the contiguous run
of segments after it (the engine's replay stops at the first missing position). The replicator
tracks the target's frontier (geo/replicator.py); a failover cuts the secondary's log there
(`trim_after_frontier`), and a failback cuts the old primary's log at the fork
(`truncate_after`). Keys are parsed only through blockstore/format/keys.py.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Container
from dataclasses import dataclass, field

from blockstore.errors import NotFound
from blockstore.format import keys
from blockstore.store.base import ObjectStore


def run_end(start: int, seqs: Container[int]) -> int:
    """The last position of the run start+1, start+2, ... that `seqs` holds (start if none)."""
    end = start
    while end + 1 in seqs:
        end += 1
    return end


@dataclass(frozen=True)
class LogEnd:
    """Where a copy's log ends."""

    checkpoint: int  # the newest checkpoint's seq (0: none)
    frontier: int  # the end of replay
    segments: dict[int, str]  # seq -> key of every segment


def log_end(object_keys: Collection[str], disk_id: str) -> LogEnd:
    """The frontier of the copy of `disk_id` whose objects are `object_keys`."""
    checkpoint = max(
        (p[1] for k in object_keys if (p := keys.parse_checkpoint_key(k)) and p[0] == disk_id),
        default=0,
    )
    segments = {
        p[1]: k for k in object_keys if (p := keys.parse_segment_key(k)) and p[0] == disk_id
    }
    return LogEnd(checkpoint, run_end(checkpoint, segments), segments)


@dataclass
class TargetView:
    """What the replicator knows of its target's copy (rebuilt from a listing after any error):
    every object with its size, the newest checkpoint and the frontier, which only moves on
    (a copy the replicator saw land stays counted)."""

    objects: dict[str, int] = field(default_factory=dict)  # key -> size
    ckpt_seq: int = 0
    frontier: int = 0

    def recompute(self, disk_id: str) -> None:
        end = log_end(self.objects, disk_id)
        self.ckpt_seq = end.checkpoint
        self.frontier = max(self.frontier, end.frontier)


def trim_after_frontier(store: ObjectStore, disk_id: str) -> int:
    """Delete every segment of `disk_id` on `store` past the end of its replay, and return that
    end. Used on a secondary before it is opened as the writer: copies that landed beyond a gap
    are never applied, but they would hold log positions the new writer needs."""
    end = log_end({i.key for i in store.list(keys.disk_prefix(disk_id))}, disk_id)
    for seq, key in sorted(end.segments.items(), reverse=True):
        if seq > end.frontier:
            store.delete(key)
    return end.frontier


def truncate_after(store: ObjectStore, disk_id: str, fork_seq: int) -> int:
    """Delete what an old primary wrote past the failover point `fork_seq` (its log diverged
    there): snapshot records on later checkpoints, those checkpoints, then the segments.
    Returns the number of objects deleted."""
    n = 0
    objects = [i.key for i in store.list(keys.disk_prefix(disk_id))]
    for key in objects:
        if keys.parse_snapshot_key(key) is not None:
            try:
                snap = json.loads(store.get(key))
            except NotFound:
                continue
            if int(snap.get("checkpoint_seq", 0)) > fork_seq:
                store.delete(key)
                n += 1
    for key in objects:
        ck = keys.parse_checkpoint_key(key)
        if ck is not None and ck[0] == disk_id and ck[1] > fork_seq:
            store.delete(key)
            n += 1
    for key in sorted(objects, reverse=True):
        seg = keys.parse_segment_key(key)
        if seg is not None and seg[0] == disk_id and seg[1] > fork_seq:
            store.delete(key)
            n += 1
    return n
