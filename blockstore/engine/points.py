"""Restore points: every log position the store holds is a state the disk can go back to.

Place: beside `replay.py` (which rebuilds the newest state) and `snapshots.py` (which pins a
checkpoint); the control plane (blockstore/control/points.py) builds clones, reverts and
changed ranges on it, and GC (`gc.py`) asks `retention_base` what the retention window needs.

A disk's log is one immutable segment per position, so the state at position p is the newest
checkpoint at or before p plus the segments after it up to p, judged by the one log rule
(blockstore/engine/fence.py): exactly what an open would see had the log ended at p, as a crash
at that instant would leave the disk. Every segment is therefore a restore point, for as long
as its objects stay in the store. GC normally deletes a segment once a newer checkpoint makes
it unnecessary; a disk's *retention window* (`retention_seconds`, in
`disks/<id>/protection.json`) makes GC keep what every point of the window needs: the newest
checkpoint at or before the window's start (the *base*), every checkpoint and segment after it,
and the segments the base names. Points older than the base age out as GC frees them.

Times are the store's: a point's time is its segment's Last-Modified (whole seconds on S3),
the moment the store took the write. A time picks the last point stored at or before it.

A position p is *restorable* while a base exists for it (a checkpoint at or before p, or the
start of the disk's log, position 1) and every position from that base up to p is still in the
store. A position that is not gives `NotFound` with the oldest one that is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from blockstore.crypto.disk import DiskKeys
from blockstore.engine.config import VolumeStats
from blockstore.engine.replay import base_state, replay_listed
from blockstore.engine.state import LogState
from blockstore.errors import IntegrityError, InvalidArgument, NotFound
from blockstore.format import keys
from blockstore.format.segment import fence_sizes
from blockstore.store.base import ObjectInfo, ObjectStore

MAX_RETENTION_SECONDS = 90 * 86400  # a window longer than this is refused (InvalidArgument)


@dataclass(frozen=True)
class Point:
    """One restore point: the state after log position `position`."""

    position: int
    # When the store took the segment (its clock, whole seconds on S3); None for a position
    # that only a checkpoint still describes.
    time: float | None
    bytes: int  # the segment's size: what the disk's writes since the previous point cost


@dataclass(frozen=True)
class LogListing:
    """One LIST of a disk's segments and checkpoints, by position."""

    segments: dict[int, ObjectInfo]
    checkpoints: list[int]  # ascending

    @classmethod
    def read(cls, store: ObjectStore, disk_id: str) -> LogListing:
        segs: dict[int, ObjectInfo] = {}
        for o in store.list(keys.segment_prefix(disk_id)):
            p = keys.parse_segment_key(o.key)
            if p is not None:
                segs[p[1]] = o
        ckpts = []
        for o in store.list(keys.checkpoint_prefix(disk_id)):
            c = keys.parse_checkpoint_key(o.key)
            if c is not None:
                ckpts.append(c[1])
        return cls(segs, sorted(ckpts))

    def restorable(self) -> list[int]:
        """Every restorable position (module docstring), ascending: checkpointed ones, and
        listed ones with an unbroken run of listed positions back to a base."""
        ck = set(self.checkpoints)
        out: list[int] = []
        prev, prev_ok = 0, True  # position 0: the start of the log, always a base
        for p in sorted(ck | self.segments.keys()):
            ok = p in ck or (prev_ok and p == prev + 1 and p in self.segments)
            if ok:
                out.append(p)
            prev, prev_ok = p, ok
        return out

    def points(self, disk_id: str) -> list[Point]:
        """The restorable positions that hold writes (not fences, not torn objects), with the
        store's time of each, ascending."""
        fences = fence_sizes(disk_id)
        out = []
        for p in self.restorable():
            o = self.segments.get(p)
            if o is not None and o.size and o.size not in fences and o.modified is not None:
                out.append(Point(p, o.modified, o.size))
        return out


def resolve(
    store: ObjectStore, disk_id: str, *, position: int | None = None, time: float | None = None
) -> Point:
    """The restore point at `position` (any restorable one, fences too: the state there is
    the one before it), or the last point that holds writes stored at or before `time`."""
    if (position is None) == (time is None):
        raise InvalidArgument("give a restore point's position or its time, not both")
    listing = LogListing.read(store, disk_id)
    points = listing.points(disk_id)
    oldest = "the disk has no restorable point (no writes since its last checkpoint)"
    if points:
        first = points[0]
        when = f"time {first.time or 0:.0f}"
        oldest = f"the oldest restorable point is position {first.position} ({when})"
    if position is not None:
        if position not in listing.restorable():
            raise NotFound(
                f"disk {disk_id!r}: position {position} is not a restore point; {oldest}"
            )
        seg = listing.segments.get(position)
        return Point(position, seg.modified if seg else None, seg.size if seg else 0)
    assert time is not None
    before = [pt for pt in points if pt.time is not None and pt.time <= time]
    if not before:
        raise NotFound(f"disk {disk_id!r}: no restore point at or before time {time:.0f}; {oldest}")
    return before[-1]


def load_state_at(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    meta: dict[str, Any],
    header_read: int,
    position: int,
    dkeys: DiskKeys,
) -> LogState:
    """The state after `position`: the newest checkpoint at or before it (or the start of the
    log) and the segments after that up to `position`. NotFound unless restorable."""
    listing = LogListing.read(store, disk_id)
    if position not in listing.restorable():
        raise NotFound(f"disk {disk_id!r}: position {position} is not restorable any more")
    bases = [c for c in listing.checkpoints if c <= position]
    state = base_state(store, disk_id, meta, bases[-1] if bases else None, dkeys)
    state = replay_listed(store, stats, disk_id, state, header_read, dkeys, upto=position)
    if state.seq != position:  # a segment went away between the listing and the replay
        raise NotFound(f"disk {disk_id!r}: position {position} is not restorable any more")
    return state


# -- the retention window ------------------------------------------------------------------


def read_retention(store: ObjectStore, disk_id: str) -> int:
    """The disk's retention window in seconds (0: none), from `disks/<id>/protection.json`."""
    try:
        body = json.loads(store.get(keys.protection_key(disk_id)))
    except NotFound:
        return 0
    except ValueError as exc:
        raise IntegrityError(f"disk {disk_id!r}: protection.json does not parse: {exc}") from None
    return int(body.get("retention_seconds", 0))


def write_retention(store: ObjectStore, disk_id: str, seconds: int) -> None:
    """Set the disk's retention window; GC applies it at its next pass, wherever it runs."""
    if not 0 <= seconds <= MAX_RETENTION_SECONDS:
        raise InvalidArgument(
            f"retention_seconds {seconds} is outside 0..{MAX_RETENTION_SECONDS} (90 days)"
        )
    store.put(keys.protection_key(disk_id), json.dumps({"retention_seconds": seconds}).encode())


def retention_base(listing: LogListing, now: float, seconds: int) -> int:
    """The base of the window [now - seconds, now]: the newest checkpoint at or before the last
    point stored before the window opened. GC keeps every checkpoint at or after it, every
    segment after it and those it names; -1: keep everything (no such checkpoint yet)."""
    start = now - seconds
    before = [
        p for p, o in listing.segments.items() if o.modified is not None and o.modified <= start
    ]
    if not before:
        return -1
    last = max(before)
    bases = [c for c in listing.checkpoints if c <= last]
    return bases[-1] if bases else -1
