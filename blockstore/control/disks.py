"""Disks: create (empty or from a snapshot), show, list, resize, change caching, delete.

A disk is a record (control/model.py says what it holds) and, unless it is ephemeral, a volume
in the store of the region serving it (blockstore/engine/volume.py). An ephemeral disk lives on
one host's local disk (its `home_host`) and has no volume.

Create is idempotent: the same request again returns the disk; a different one for the name is a
Conflict. The record is created first, in state `creating`, then the volume, then the record
says `ready`: a create cut short by a crash is finished by the next identical request. Delete
hides the disk at once (state `deleting`) and removes its objects in an operation; a delete cut
short is started again when the service next starts (control/service.py, `resume`).

Sizes: a multiple of 512 bytes from 1 MiB to 64 TiB (control/model.py, `validate_size`). Growing
works attached or not; shrinking drops the data at the end, and is refused unless asked for
and while the disk is attached.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from blockstore.control import qos as disk_qos
from blockstore.control.context import ControlContext
from blockstore.control.encryption import disk_encryption
from blockstore.control.geo import GeoService
from blockstore.control.model import (
    DEFAULT_CACHING,
    DISK_ID_FIELD,
    Caching,
    Compression,
    DiskKind,
    DiskSpec,
    Redundancy,
    disk_id_of,
    region_of,
    validate_size,
)
from blockstore.control.operations import Progress, Work
from blockstore.control.points import PointService
from blockstore.control.records import Record
from blockstore.control.snapshots import SnapshotService, Source
from blockstore.engine.volume import Volume
from blockstore.errors import Conflict, InvalidArgument, NotFound
from blockstore.format import keys


class DiskService:
    """Create, show, change and delete the disks in `context`'s records."""

    def __init__(
        self,
        context: ControlContext,
        snapshots: SnapshotService,
        geo: GeoService,
        points: PointService,
    ) -> None:
        self.ctx = context
        self.snapshots = snapshots
        self.geo = geo
        self.points = points

    # -- create ---------------------------------------------------------------------------

    def create(self, spec: DiskSpec) -> tuple[Record, bool]:
        """Create a disk; returns (disk, created). The same request again returns the existing
        disk with created=False; a different one for an existing name is a Conflict."""
        keys.validate_disk_id(spec.name)
        wanted, source = self._wanted(spec)
        existing = self.ctx.disks.find(spec.name)
        if existing is not None:
            disk = self._same_or_conflict(existing, wanted)
            if disk["state"] == "creating":  # a create cut short by a crash: finish it
                return self._finish_create(disk, source), True
            return disk, False
        record: Record = {
            "name": spec.name,
            DISK_ID_FIELD: "v" + secrets.token_hex(8),  # new for every disk
            **wanted,
            "state": "creating",
            "created": self.ctx.now(),
            "home_host": self.ctx.host_id if spec.kind == DiskKind.ephemeral else None,
            "attachment": None,
        }
        try:
            self.ctx.disks.create(spec.name, record)
        except Conflict:
            return self._same_or_conflict(self.ctx.disks.get(spec.name), wanted), False
        return self._finish_create(record, source), True

    def _wanted(self, spec: DiskSpec) -> tuple[Record, Source | None]:
        """The record fields a create asks for, checked and with defaults filled in, and the
        snapshot it starts from."""
        caching = spec.caching
        if spec.kind == DiskKind.ephemeral:
            if caching not in (None, Caching.none):
                raise InvalidArgument("ephemeral disks live on the host's local disk: no caching")
            if spec.redundancy != Redundancy.lrs:
                raise InvalidArgument("ephemeral disks live on one host: redundancy must be lrs")
            if spec.source_snapshot or spec.source_point:
                raise InvalidArgument("ephemeral disks cannot be created from a snapshot")
            if spec.retention_seconds:
                raise InvalidArgument("ephemeral disks keep no restore points: no retention")
            if spec.encrypted or spec.compression not in (None, Compression.none):
                raise InvalidArgument(
                    "ephemeral disks never reach the object store: no encryption or compression"
                )
            caching = Caching.none
        caching = caching or DEFAULT_CACHING.get(spec.kind, Caching.none)
        if spec.redundancy == Redundancy.grs:
            self.ctx.require_secondary()
        source_ref, point = spec.source_snapshot, None
        source: Source | None
        if spec.source_point is not None:
            # Pinned as snapshot at-<position> of the source disk (control/points.py).
            source_ref, source, position = self.points.source(spec.source_point)
            point = {"disk": spec.source_point["disk"], "position": position}
        else:
            source = self.snapshots.source(source_ref) if source_ref else None
        size = spec.size_bytes
        if size is None:
            if source is None:
                raise InvalidArgument("give size_bytes or size_gib (or a source_snapshot)")
            size = int(source[2]["size"])
        validate_size(size)
        if source is not None and size < int(source[2]["size"]):
            raise InvalidArgument(
                f"size_bytes {size} is smaller than snapshot {source_ref} "
                f"({source[2]['size']} bytes)"
            )
        wanted: Record = {
            "size_bytes": size,
            "kind": spec.kind.value,
            "caching": caching.value,
            "redundancy": spec.redundancy.value,
            "source_snapshot": source_ref,
        }
        # Only when asked for: records made before these fields existed still compare equal.
        if spec.retention_seconds:
            wanted["retention_seconds"] = spec.retention_seconds
        if point is not None:
            wanted["source_point"] = point
        wanted.update(self._at_rest(spec, source_ref))
        wanted.update(disk_qos.wanted(spec.kind, spec.qos or {}))
        return wanted, source

    def _at_rest(self, spec: DiskSpec, source_ref: str | None) -> Record:
        """The record's `encrypted` and `compression`, only when they apply (so records
        made before these fields existed still compare equal). A clone of an encrypted disk
        is encrypted too (a key of its own; it reads its source's records with the source's
        key) and, unless told otherwise, compresses as its source does."""
        source = self.ctx.get_disk(source_ref.partition("/")[0]) if source_ref else {}
        out: Record = {}
        if spec.encrypted or source.get("encrypted"):
            out["encrypted"] = True
        compression = str(spec.compression or source.get("compression") or "none")
        if compression != Compression.none:
            out["compression"] = Compression(compression).value
        return out

    def _finish_create(self, disk: Record, source: Source | None) -> Record:
        """Create the volume of a disk whose record says `creating`, then mark it ready."""
        if disk["kind"] != DiskKind.ephemeral:
            src = (source[0], source[1]) if source else None
            with contextlib.suppress(Conflict):  # made before a crash: keep it
                Volume.create(
                    self.ctx.store, disk_id_of(disk), disk["size_bytes"], source=src,
                    encrypt=bool(disk.get("encrypted")),
                    compression=disk.get("compression", "none"),
                )  # fmt: skip
            if source is not None and disk["size_bytes"] > int(source[2]["size"]):
                vol = Volume.open(self.ctx.data_store(disk), disk_id_of(disk), writable=True)
                try:
                    if vol.size < disk["size_bytes"]:
                        vol.resize(disk["size_bytes"])
                finally:
                    vol.close()
            if disk.get("retention_seconds"):
                self.points.set_retention(disk, disk["retention_seconds"])
        return self.ctx.set_fields(disk["name"], state="ready")

    def _same_or_conflict(self, existing: Record, wanted: Record) -> Record:
        if existing.get("state") == "deleting":
            raise Conflict(f"disk {existing['name']!r} is being deleted; try again shortly")
        different = [k for k, v in wanted.items() if existing.get(k) != v]
        if different:
            raise Conflict(
                f"disk {existing['name']!r} exists with different "
                + ", ".join(f"{k} ({existing.get(k)!r}, not {wanted[k]!r})" for k in different)
            )
        return existing

    # -- read -----------------------------------------------------------------------------

    def get(self, name: str) -> Record:
        return self.ctx.get_disk(name)

    def list_disks(self) -> list[Record]:
        return [r for _, r in self.ctx.disks.items() if r.get("state") == "ready"]

    def describe(self, disk: Record) -> dict[str, Any]:
        """The disk as the API shows it: the record plus bytes stored and live export stats."""
        out = {k: v for k, v in disk.items() if k != "home_host"}
        out["qos"] = disk_qos.describe(self.ctx, disk)
        if disk["kind"] == DiskKind.ephemeral:
            out["bytes_stored"] = None
            out["host"] = disk.get("home_host")
        else:
            store = self.ctx.data_store(disk)
            out.setdefault("retention_seconds", 0)
            out["encrypted"] = bool(disk.get("encrypted"))
            out.setdefault("compression", "none")
            out["encryption"] = disk_encryption(self.ctx, disk)
            out["bytes_stored"] = sum(
                o.size for o in store.list(keys.disk_prefix(disk_id_of(disk)))
            )
            out["primary"] = region_of(disk)
            out["replication"] = self.geo.replication_status(disk)
        return out

    # -- change ---------------------------------------------------------------------------

    def update(
        self,
        name: str,
        *,
        size_bytes: int | None = None,
        caching: Caching | None = None,
        allow_shrink: bool = False,
        retention_seconds: int | None = None,
        qos: dict[str, Any] | None = None,
    ) -> Record:
        """Change what is given; `qos`: the caps given (0 lifts one), applied to a running
        export within a second (control/qos.py)."""
        disk = self.ctx.get_disk(name)
        disk = disk_qos.change(self.ctx, disk, qos or {})
        if retention_seconds is not None and retention_seconds != disk.get("retention_seconds", 0):
            if disk["kind"] == DiskKind.ephemeral:
                raise InvalidArgument("ephemeral disks keep no restore points: no retention")
            # The store first: GC reads the window there (a record saying more than GC keeps
            # would promise points that are gone).
            self.points.set_retention(disk, retention_seconds)
            disk = self.ctx.set_fields(name, retention_seconds=retention_seconds)
        if caching is not None and disk["kind"] == DiskKind.ephemeral and caching != "none":
            raise InvalidArgument("ephemeral disks have no host caching")
        if size_bytes is not None and size_bytes != disk["size_bytes"]:
            validate_size(size_bytes)
            shrinking = size_bytes < disk["size_bytes"]
            if shrinking and not allow_shrink:
                raise Conflict(
                    f"size_bytes {size_bytes} is smaller than the disk ({disk['size_bytes']}): "
                    "shrinking drops the data at the end; send allow_shrink: true to do it"
                )
            if shrinking and disk.get("attachment"):
                raise Conflict(f"disk {name!r} is attached: detach it before shrinking it")
            self._resize(disk, size_bytes)
            disk = self.ctx.set_fields(name, size_bytes=size_bytes)
        if caching is not None and caching != disk["caching"]:
            # Applies when the export next starts (attach, restart): the running one keeps its mode.
            disk = self.ctx.set_fields(name, caching=caching.value)
        return disk

    def _resize(self, disk: Record, size_bytes: int) -> None:
        attachment = disk.get("attachment")
        if disk["kind"] == DiskKind.ephemeral:
            if attachment and attachment["host"] == self.ctx.host_id:
                self.ctx.exports.resize(disk, size_bytes)
            return
        if disk.get("migration"):
            raise Conflict(
                f"disk {disk['name']!r} is migrating live to host "
                f"{disk['migration']['to_host']}: resize it once the migration has ended"
            )
        if attachment:
            if attachment["host"] != self.ctx.host_id:
                raise Conflict(
                    f"disk {disk['name']!r} is attached on host {attachment['host']}: "
                    "resize it through that host's API"
                )
            self.ctx.exports.resize(disk, size_bytes)
            return
        vol = Volume.open(self.ctx.data_store(disk), disk_id_of(disk), writable=True)
        try:
            vol.resize(size_bytes, allow_shrink=size_bytes < disk["size_bytes"])
        finally:
            vol.close()

    # -- delete ---------------------------------------------------------------------------

    def delete(self, name: str) -> Record:
        """Hide the disk at once and remove its objects in a long-running operation."""
        disk = self.ctx.get_disk(name)
        if disk.get("attachment"):
            raise Conflict(
                f"disk {name!r} is attached to VM {disk['attachment']['vm']!r}: "
                "detach it first (POST /v1/disks/{name}/detach)"
            )
        if disk["kind"] != DiskKind.ephemeral:
            for snap in self.snapshots.of(disk):
                clones = snap.get("clones") or []
                if clones:
                    raise Conflict(
                        f"disk {name!r} has snapshot {snap['name']!r} that disks "
                        f"{', '.join(clones)} were created from: delete those first"
                    )

        def change(current: Record | None) -> Record:
            current = self.ctx.visible(current, name)
            if current.get("attachment"):
                raise Conflict(f"disk {name!r} was attached meanwhile: detach it first")
            return {**current, "state": "deleting"}

        disk = self.ctx.update(name, change)
        return self.ctx.operations.start("delete-disk", name, self.destroyer(disk))

    def destroyer(self, disk: Record) -> Work:
        """The work of an operation that removes a `deleting` disk's data, then its record."""
        return lambda progress: self._destroy(disk, progress)

    def _destroy(self, disk: Record, progress: Progress) -> None:
        if disk["kind"] == DiskKind.ephemeral:
            self.ctx.exports.discard_local(disk)
        else:
            self.geo.drop_copies(disk)
            with contextlib.suppress(NotFound):  # gone already in an earlier attempt
                Volume.destroy(self.ctx.data_store(disk), disk_id_of(disk))
        progress(0.9)

        def change(current: Record | None) -> Record | None:
            if current is not None and current.get(DISK_ID_FIELD) != disk_id_of(disk):
                return current  # the name was reused meanwhile; leave the new disk alone
            return None

        self.ctx.disks.update(disk["name"], change)
