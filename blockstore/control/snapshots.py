"""Snapshots of a disk: create (crash-consistent), list, delete, and the ranges two differ in.

A snapshot is the engine's (blockstore/engine/volume.py): a record that pins a checkpoint of the
disk's log. This module adds what the control plane knows: the disk's name, which region holds
its data, and which disks were cloned from a snapshot (a disk created from one registers itself
under it; such a snapshot's disk cannot be deleted while the clones exist).

Failure behaviour: an unknown snapshot is NotFound; an ephemeral disk has no snapshots
(InvalidArgument). Creating a snapshot that exists returns it (idempotent).
"""

from __future__ import annotations

from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import DiskKind, disk_id_of, iso, require_volume
from blockstore.control.records import Record
from blockstore.engine import volume
from blockstore.engine.volume import SnapshotInfo, Volume
from blockstore.errors import InvalidArgument, NotFound
from blockstore.format import keys

# (the disk id of the snapshot's disk, the snapshot's name, the snapshot as `view` shows it)
Source = tuple[str, str, dict[str, Any]]


class SnapshotService:
    """Snapshots of the disks in `context`'s records."""

    def __init__(self, context: ControlContext) -> None:
        self.ctx = context

    def of(self, disk: Record) -> list[dict[str, Any]]:
        """The snapshots of a disk (none for an ephemeral one), as the API shows them."""
        if disk["kind"] == DiskKind.ephemeral:
            return []
        # Snapshot records alone: no need to open (and replay) the volume to list them.
        infos = volume.list_snapshots(self.ctx.data_store(disk), disk_id_of(disk))
        return [self.view(disk, s) for s in infos]

    def view(self, disk: Record, info: SnapshotInfo) -> dict[str, Any]:
        store = self.ctx.data_store(disk)
        clones = [
            c.key.rsplit("/", 1)[1]
            for c in store.list(keys.clone_ref_prefix(disk_id_of(disk), info.name))
        ]
        names = {disk_id_of(d): n for n, d in self.ctx.disks.items()} if clones else {}
        return {
            "name": info.name,
            "disk": disk["name"],
            "size": info.size,
            "created": iso(info.created),
            "clones": [names.get(c, c) for c in clones],
        }

    def source(self, ref: str) -> Source:
        """The snapshot "<disk>/<snapshot>" a new disk is to be created from."""
        disk_name, sep, snap = ref.partition("/")
        if not sep:
            raise InvalidArgument(
                f"source_snapshot {ref!r} must be '<disk>/<snapshot>', e.g. 'data1/before-upgrade'"
            )
        keys.validate_disk_id(disk_name)
        keys.validate_snapshot_name(snap)
        disk = self.ctx.get_disk(disk_name)
        for info in self.of(disk):
            if info["name"] == snap:
                return disk_id_of(disk), snap, info
        raise NotFound(f"disk {disk_name!r} has no snapshot {snap!r}")

    def _volume_disk(self, name: str, *snapshots: str | None) -> Record:
        """The disk `name`, after checking the snapshot names given (None: not given); an
        ephemeral disk is refused."""
        for snapshot in snapshots:
            if snapshot is not None:
                keys.validate_snapshot_name(snapshot)
        disk = self.ctx.get_disk(name)
        require_volume(disk)
        return disk

    def create(self, name: str, snapshot: str) -> tuple[dict[str, Any], bool]:
        """A crash-consistent snapshot: an attached disk is flushed through its export first.
        Returns (snapshot, created)."""
        disk = self._volume_disk(name, snapshot)
        for existing in self.of(disk):
            if existing["name"] == snapshot:
                return existing, False
        attachment = disk.get("attachment")
        exports = self.ctx.exports
        if attachment and attachment["host"] == self.ctx.host_id and exports.serving(disk):
            exports.flush(disk)
        vol = Volume.open(self.ctx.data_store(disk), disk_id_of(disk), writable=False)
        try:
            info = vol.create_snapshot(snapshot)
        finally:
            vol.close()
        return self.view(disk, info), True

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        return self.of(self._volume_disk(name))

    def delete(self, name: str, snapshot: str) -> None:
        disk = self._volume_disk(name, snapshot)
        try:
            volume.delete_snapshot(self.ctx.data_store(disk), disk_id_of(disk), snapshot)
        except NotFound:
            raise NotFound(f"disk {name!r} has no snapshot {snapshot!r}") from None

    def changed_ranges(self, name: str, snapshot: str, since: str | None) -> dict[str, Any]:
        """Ranges that differ between snapshot `since` (or an empty disk) and `snapshot`."""
        disk = self._volume_disk(name, snapshot, since)
        vol = Volume.open(self.ctx.data_store(disk), disk_id_of(disk), writable=False)
        try:
            present = {s.name for s in vol.list_snapshots()}
            for snap in (snapshot, since):
                if snap is not None and snap not in present:
                    raise NotFound(f"disk {name!r} has no snapshot {snap!r}")
            ranges = vol.changed_ranges(since, snapshot)  # [(start, end)]
        finally:
            vol.close()
        return {
            "disk": name,
            "snapshot": snapshot,
            "since": since,
            "ranges": [{"offset": start, "length": end - start} for start, end in ranges],
            "changed_bytes": sum(end - start for start, end in ranges),
        }
