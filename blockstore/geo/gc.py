"""The secondary's garbage collection: mirror the source's deletions onto the target, removing
only what the target's own log does not need.

An object the source no longer has is removed from the target when it is a snapshot record of a
deleted snapshot, a segment at or below the target's newest checkpoint that neither that
checkpoint nor a snapshot's names, or a checkpoint below the newest that no snapshot pins.
Snapshot records go first: once gone, their checkpoints stop pinning. The primary's GC needs no
hook: the target never needs a segment the source's GC may delete, because it can always jump
to the checkpoint that made it garbage (geo/replicator.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection

from blockstore.format import keys
from blockstore.format.checkpoint import decode_checkpoint
from blockstore.geo.frontier import TargetView
from blockstore.geo.progress import ReplicationStats, progress_key
from blockstore.store.base import ObjectStore


def mirror_deletions(
    source: ObjectStore,
    target: ObjectStore,
    disk_id: str,
    view: TargetView,
    stats: ReplicationStats,
) -> None:
    """Remove from `target` what `source` deleted and the target's log does not need; `view`
    is rebuilt from a fresh listing of the target first, and kept up to date."""
    source_keys = {i.key for i in source.list(keys.disk_prefix(disk_id))}
    view.objects = {i.key: i.size for i in target.list(keys.disk_prefix(disk_id))}
    view.recompute(disk_id)
    gone = [k for k in view.objects if k not in source_keys and k != progress_key(disk_id)]
    if not gone:
        return

    def delete(key: str) -> None:
        target.delete(key)
        stats.objects_deleted += 1
        view.objects.pop(key, None)

    for key in gone:
        if key.startswith(keys.snapshot_prefix(disk_id)):
            delete(key)
    pinned = _pinned_checkpoints(target, view.objects)
    needed = _named_segments(target, disk_id, {view.ckpt_seq} | pinned, view.objects)
    for key in gone:
        seg = keys.parse_segment_key(key)
        ck = keys.parse_checkpoint_key(key)
        garbage_seg = seg is not None and seg[1] <= view.ckpt_seq and key not in needed
        garbage_ckpt = ck is not None and ck[1] < view.ckpt_seq and ck[1] not in pinned
        if garbage_seg or garbage_ckpt:
            delete(key)


def _pinned_checkpoints(target: ObjectStore, object_keys: Collection[str]) -> set[int]:
    """The checkpoints the target's snapshot records pin."""
    pinned: set[int] = set()
    for key in object_keys:
        if keys.parse_snapshot_key(key) is not None:
            snap = json.loads(target.get(key))
            pinned.add(int(snap["checkpoint_seq"]))
    return pinned


def _named_segments(
    target: ObjectStore, disk_id: str, checkpoints: set[int], object_keys: Collection[str]
) -> set[str]:
    """The segments that the checkpoints `checkpoints` name, of those the target holds."""
    needed: set[str] = set()
    for seq in checkpoints:
        ck_key = keys.checkpoint_key(disk_id, seq)
        if ck_key in object_keys:
            needed.update(decode_checkpoint(target.get(ck_key), ck_key).segments)
    return needed
