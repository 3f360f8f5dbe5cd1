"""Restore points of a disk: list them, clone one, revert a detached disk to one, and the
ranges two points differ in; the retention window that keeps them.

Place: the control plane's side of `blockstore/engine/points.py` (which says what a restore
point is and what the window keeps). A point is named by its log `position`, or by a `time`
(the last point the store took at or before it).

- A clone of a point pins it as a snapshot of the source disk named `at-<position>` (the clone
  reads the source's segments, which the snapshot keeps once the point leaves the window);
  cloning the same point again reuses it.
- A revert copies back what differs between now and the point, as ordinary writes, in an
  operation: the state before the revert stays a restore point (`undo_position`), so a revert
  is undone by reverting to that position while it is inside the window. The disk must be
  detached; it cannot be attached while the revert runs (the record's `reverting` field).

Failure behaviour: a point outside the window is NotFound with the oldest one that is left; a
revert of an attached disk is a Conflict. A revert cut short (a crash, an error) leaves the
disk between the two states, still a prefix of writes, and says so: revert again.
"""

from __future__ import annotations

import math
from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import disk_id_of, iso, require_volume
from blockstore.control.operations import Progress
from blockstore.control.records import Record
from blockstore.control.snapshots import SnapshotService, Source
from blockstore.engine import points, volume
from blockstore.engine.points import LogListing, Point
from blockstore.engine.volume import Volume
from blockstore.errors import Conflict
from blockstore.store.base import ObjectStore

MAX_POINTS = 10_000  # points one listing returns at most (the summary covers them all)
_COPY_STEP = 4 << 20  # a revert copies at most this much per write
PointRef = tuple[int | None, float | None]  # (position, time): one of the two


def point_view(pt: Point) -> dict[str, Any]:
    return {"position": pt.position, "time": None if pt.time is None else iso(pt.time),
            "bytes": pt.bytes}  # fmt: skip


class PointService:
    """Restore points of the disks in `context`'s records."""

    def __init__(self, context: ControlContext, snapshots: SnapshotService) -> None:
        self.ctx = context
        self.snapshots = snapshots

    def _disk(self, name: str) -> Record:
        disk = self.ctx.get_disk(name)
        require_volume(disk)
        return disk

    def resolve(self, disk: Record, position: int | None, time: float | None) -> Point:
        return points.resolve(
            self.ctx.data_store(disk), disk_id_of(disk), position=position, time=time
        )

    # -- list -------------------------------------------------------------------------------

    def list_points(
        self, name: str, since: float | None, until: float | None, limit: int = MAX_POINTS
    ) -> dict[str, Any]:
        """The restore points of [since, until], newest last, and a per-minute summary of the
        bytes written in them (a burst of writes shows as a minute that stands out)."""
        disk = self._disk(name)
        listing = LogListing.read(self.ctx.data_store(disk), disk_id_of(disk))
        lo, hi = -math.inf if since is None else since, math.inf if until is None else until
        pts = [pt for pt in listing.points(disk_id_of(disk)) if lo <= (pt.time or 0) <= hi]
        minutes: dict[int, list[int]] = {}
        for pt in pts:
            m = minutes.setdefault(int((pt.time or 0) // 60) * 60, [0, 0])
            m[0] += 1
            m[1] += pt.bytes
        return {
            "disk": name,
            "retention_seconds": disk.get("retention_seconds", 0),
            "oldest": point_view(pts[0]) if pts else None,
            "newest": point_view(pts[-1]) if pts else None,
            "count": len(pts),
            "truncated": len(pts) > limit,
            "points": [point_view(pt) for pt in pts[-limit:]],
            "per_minute": [
                {"minute": iso(t), "points": n, "bytes": b} for t, (n, b) in sorted(minutes.items())
            ],
        }

    # -- clone ------------------------------------------------------------------------------

    def source(self, ref: dict[str, Any]) -> tuple[str, Source, int]:
        """The snapshot a disk created from restore point `ref` ({disk, position | time})
        starts from: `at-<position>` on the source disk, taken now unless it exists. Returns
        ("<disk>/at-<position>", the source, the position)."""
        disk = self._disk(str(ref["disk"]))
        pt = self.resolve(disk, ref.get("position"), ref.get("time"))
        name = f"at-{pt.position}"
        store, disk_id = self.ctx.data_store(disk), disk_id_of(disk)
        if not any(s.name == name for s in volume.list_snapshots(store, disk_id)):
            view = Volume.open_at(store, disk_id, pt.position)
            try:
                view.create_snapshot(name)
            except Conflict:
                pass  # taken by a concurrent clone of the same point: the same state
            finally:
                view.close()
        ref_name = f"{disk['name']}/{name}"
        return ref_name, self.snapshots.source(ref_name), pt.position

    # -- revert -----------------------------------------------------------------------------

    def revert(self, name: str, position: int | None, time: float | None) -> dict[str, Any]:
        """Start reverting detached disk `name` to a restore point; returns the operation, the
        point, and the position that undoes it."""
        disk = self._disk(name)
        if disk.get("attachment"):
            raise Conflict(
                f"disk {name!r} is attached to VM {disk['attachment']['vm']!r}: detach it "
                "before reverting it, or create a new disk from the point (source_point)"
            )
        store, disk_id = self.ctx.data_store(disk), disk_id_of(disk)
        target = self.resolve(disk, position, time)
        undo = LogListing.read(store, disk_id).restorable()[-1]

        def mark(current: Record | None) -> Record:
            current = self.ctx.visible(current, name)
            if current.get("attachment"):
                raise Conflict(f"disk {name!r} was attached meanwhile: detach it first")
            if current.get("reverting"):
                raise Conflict(f"disk {name!r} is being reverted already: wait for it")
            return {**current, "reverting": target.position}

        with self.ctx.attach_lock:
            self.ctx.update(name, mark)

        def work(progress: Progress) -> None:
            try:
                copy_back(store, disk_id, target.position, progress)
            finally:
                self.ctx.update(
                    name, lambda cur: {**self.ctx.visible(cur, name), "reverting": None}
                )

        op = self.ctx.operations.start("revert-disk", name, work)
        return {"operation": op, "point": point_view(target), "undo_position": undo}

    # -- changed ranges ---------------------------------------------------------------------

    def changes(self, name: str, since: PointRef, until: PointRef | None) -> dict[str, Any]:
        """Ranges whose content differs between two points (`until` None: the disk now)."""
        disk = self._disk(name)
        store, disk_id = self.ctx.data_store(disk), disk_id_of(disk)
        a = self.resolve(disk, *since)
        b = None if until is None else self.resolve(disk, *until)
        old = Volume.open_at(store, disk_id, a.position)
        try:
            if b is None:
                new = Volume.open(store, disk_id, writable=False)
            else:
                new = Volume.open_at(store, disk_id, b.position)
            try:
                ranges = new.changed_from(old)
            finally:
                new.close()
        finally:
            old.close()
        return {
            "disk": name,
            "since": point_view(a),
            "until": None if b is None else point_view(b),
            "ranges": [{"offset": s, "length": e - s} for s, e in ranges],
            "changed_bytes": sum(e - s for s, e in ranges),
        }

    # -- retention --------------------------------------------------------------------------

    def set_retention(self, disk: Record, seconds: int) -> None:
        """Write the window where every GC of the disk reads it (engine/points.py)."""
        points.write_retention(self.ctx.data_store(disk), disk_id_of(disk), seconds)


def copy_back(store: ObjectStore, disk_id: str, position: int, progress: Progress) -> None:
    """Make the disk's state equal to the state after `position`: write (or trim) every range
    where they differ, then flush. The writes are ordinary ones: what was there before stays
    a restore point."""
    vol = Volume.open(store, disk_id, writable=True)
    try:
        view = Volume.open_at(store, disk_id, position)
        try:
            if view.size > vol.size:
                vol.resize(view.size)
            ranges = [(s, min(e, view.size)) for s, e in vol.changed_from(view) if s < view.size]
            total = sum(e - s for s, e in ranges) or 1
            done = 0
            for s, e in ranges:
                for off, length, hole in view.extents(s, e - s):
                    for at in range(off, off + length, _COPY_STEP):
                        n = min(_COPY_STEP, off + length - at)
                        if hole:
                            vol.trim(at, n)
                        else:
                            vol.write(at, view.read(at, n))
                        done += n
                        progress(0.95 * done / total)
            if view.size < vol.size:
                vol.resize(view.size, allow_shrink=True)
        finally:
            view.close()
        vol.flush()
    finally:
        vol.close()
