"""Snapshots and the clone protocol: records that pin a checkpoint, and what differs between two.

A snapshot is an immutable record (`snap/<name>.json`, created if absent) naming a checkpoint
the volume wrote for it; the checkpoint and every segment it names are kept by GC while the
record exists. A clone is a new volume whose first state is that checkpoint's map: it
registers a clone reference under the snapshot before it is created, and a snapshot with clone
references cannot be deleted. The race between the two is settled by order alone: a clone
registers first and then looks for the snapshot's tombstone; a delete writes the tombstone
first and then looks for clones, so of the two racing, at least one sees the other.

A crash while taking a snapshot leaves at most a checkpoint and no record (GC retires the
checkpoint); while deleting one, at most a tombstone, which only blocks clones until the
delete is run again.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable

from blockstore.engine.checkpoints import Checkpointer
from blockstore.engine.meta import (
    SnapshotInfo,
    exists,
    listing,
    read_checkpoint,
    read_json,
    read_snapshot,
    snapshot_info,
)
from blockstore.engine.state import Context, VolumeState
from blockstore.errors import Conflict, NotFound, PreconditionFailed
from blockstore.format import keys
from blockstore.format.checkpoint import Checkpoint
from blockstore.format.segment import LogRecord
from blockstore.store.base import ObjectStore

# Extents with a location identity: byte x of [start, end) lives at (segment key, base + x).
_Located = list[tuple[int, int, tuple[str, int]]]


def list_snapshots(store: ObjectStore, disk_id: str) -> list[SnapshotInfo]:
    """Every snapshot of `disk_id`, by name."""
    out = []
    for key, _size in listing(store, keys.snapshot_prefix(disk_id)):
        if keys.parse_snapshot_key(key) is None:
            continue
        try:
            out.append(snapshot_info(read_json(store, key), key))
        except NotFound:
            continue  # deleted between the listing and the read
    return sorted(out, key=lambda s: s.name)


def delete_snapshot(store: ObjectStore, disk_id: str, name: str) -> None:
    """Delete a snapshot record; Conflict while a clone depends on it. GC later reclaims what
    only it held."""
    key = keys.snapshot_key(disk_id, name)
    if not exists(store, key):
        raise NotFound(f"disk {disk_id!r} has no snapshot {name!r}")
    tomb = keys.snapshot_deleting_key(disk_id, name)
    # Tombstone first, then look for clones (the module docstring says why).
    store.put(tomb, b"")
    clones = [k for k, _s in listing(store, keys.clone_ref_prefix(disk_id, name))]
    if clones:
        store.delete(tomb)
        names = ", ".join(sorted(k.rsplit("/", 1)[-1] for k in clones))
        raise Conflict(f"snapshot {disk_id}/{name} is the source of clone(s) {names}")
    store.delete(key)
    store.delete(tomb)


def register_clone(store: ObjectStore, src: str, name: str, clone_id: str) -> str:
    """Register `clone_id` as a clone of snapshot `src`/`name`, then check that the snapshot
    still stands and is not being deleted (Conflict, registration withdrawn). Returns the
    registration's key."""
    registration = keys.clone_ref_key(src, name, clone_id)
    store.put(registration, clone_id.encode())
    if exists(store, keys.snapshot_deleting_key(src, name)) or not exists(
        store, keys.snapshot_key(src, name)
    ):
        store.delete(registration)
        raise Conflict(f"snapshot {src}/{name} is being deleted")
    return registration


class Snapshots:
    """Taking snapshots of one open volume, and comparing them."""

    def __init__(
        self,
        ctx: Context,
        flush: Callable[[], None],
        checkpointer: Checkpointer,
        gc_lock: threading.Lock,
    ) -> None:
        self.ctx = ctx
        self.flush = flush
        self.checkpointer = checkpointer
        self.gc_lock = gc_lock

    def create(self, name: str) -> SnapshotInfo:
        """Flush, checkpoint, and record an immutable snapshot pinning that checkpoint."""
        disk_id = self.ctx.state.disk_id
        keys.validate_snapshot_name(name)
        key = keys.snapshot_key(disk_id, name)
        if exists(self.ctx.store, key):
            raise Conflict(f"disk {disk_id!r} already has a snapshot {name!r}")
        with self.gc_lock:  # our own GC must not retire the checkpoint before it is pinned
            self.flush()
            seq, _refs = self.checkpointer.write()
            size = self.ctx.state.last_ckpt_size
            info = SnapshotInfo(name, disk_id, size, self.ctx.clock.time(), seq)
            body = json.dumps(
                {
                    "format": 1,
                    "name": name,
                    "disk_id": disk_id,
                    "size": info.size,
                    "created": info.created,
                    "checkpoint_seq": seq,
                    "checkpoint_key": keys.checkpoint_key(disk_id, seq),
                }
            ).encode()
            try:
                self.ctx.store.put(key, body, if_none_match=True)
            except PreconditionFailed:
                raise Conflict(f"disk {disk_id!r} already has a snapshot {name!r}") from None
        return info

    def changed_ranges(self, since: str | None, until: str | None) -> list[tuple[int, int]]:
        """Ranges whose content may differ between snapshot `since` (None: the empty disk)
        and snapshot `until` (None: now), merged and sorted."""
        a: _Located = []
        if since is not None:
            ck = self._checkpoint_of(since)
            a = _located(ck.starts, ck.ends, ck.vals)
        if until is None:
            self.flush()
            st = self.ctx.state
            with st.lock:
                starts, ends, vals = st.durable.copy().lists()
                limit = st.durable_size
            b = _located(starts, ends, vals)
        else:
            ck = self._checkpoint_of(until)
            b = _located(ck.starts, ck.ends, ck.vals)
            limit = ck.size
        return _diff(a, b, limit)

    def _checkpoint_of(self, name: str) -> Checkpoint:
        disk_id = self.ctx.state.disk_id
        info = read_snapshot(self.ctx.store, disk_id, name)
        return read_checkpoint(self.ctx.store, keys.checkpoint_key(disk_id, info.checkpoint_seq))


def changed_between(a: VolumeState | None, b: VolumeState) -> list[tuple[int, int]]:
    """Ranges of [0, b's size) whose content may differ between the durable state of `a`
    (None: an empty disk) and of `b`: where their maps do not name the same stored bytes."""
    maps: list[_Located] = []
    for st in (a, b):
        if st is not None:
            with st.lock:
                starts, ends, vals = st.durable.copy().lists()
                limit = st.durable_size
            maps.append(_located(starts, ends, vals))
    return _diff(maps[0] if a is not None else [], maps[-1], limit)


def _located(starts: list[int], ends: list[int], vals: list[tuple[LogRecord, int]]) -> _Located:
    return [
        (s, e, (rec.seg_key, rec.data_off + delta - s))
        for s, e, (rec, delta) in zip(starts, ends, vals, strict=True)
    ]


def _diff(a: _Located, b: _Located, limit: int) -> list[tuple[int, int]]:
    """Ranges of [0, limit) where map a and map b do not point at the same stored bytes."""
    points = {0, limit}
    for s, e, _ in a:
        points.update((min(s, limit), min(e, limit)))
    for s, e, _ in b:
        points.update((min(s, limit), min(e, limit)))
    cuts = sorted(points)
    out: list[tuple[int, int]] = []
    ia = ib = 0
    for p, q in itertools.pairwise(cuts):
        while ia < len(a) and a[ia][1] <= p:
            ia += 1
        while ib < len(b) and b[ib][1] <= p:
            ib += 1
        va = a[ia][2] if ia < len(a) and a[ia][0] <= p else None
        vb = b[ib][2] if ib < len(b) and b[ib][0] <= p else None
        if va != vb:
            if out and out[-1][1] == p:
                out[-1] = (out[-1][0], q)
            else:
                out.append((p, q))
    return out
