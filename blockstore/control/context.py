"""What every part of the control plane shares: this host, its exports, the stores of both
regions, the disk records and the lock that orders attachment changes.

Built once by `ControlService` (control/service.py) and handed to each sub-service. The disk
records are a `RecordStore` in the primary region's bucket, or, with a secondary region, a
`MirroredRecords` over both buckets, so that a geo-redundant disk can fail over while the
primary region is completely down (control/records.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from blockstore.clock import Clock
from blockstore.control.model import SECONDARY, Redundancy, now_iso, region_of
from blockstore.control.operations import OperationService
from blockstore.control.records import MirroredRecords, Record, Records, RecordStore
from blockstore.errors import InvalidArgument, NotFound
from blockstore.format import keys
from blockstore.geo.config import ReplicationConfig
from blockstore.store.base import ObjectStore


class Exports(Protocol):
    """What the control plane needs from this host's export supervisor."""

    def serve(self, disk: Record) -> dict[str, Any]: ...

    def stop(self, disk: Record, *, graceful: bool = True) -> None: ...

    def flush(self, disk: Record) -> None: ...

    def resize(self, disk: Record, size_bytes: int) -> None: ...

    def set_qos(self, disk: Record) -> None: ...

    def serving(self, disk: Record) -> bool: ...

    def socket_of(self, disk: Record) -> Path: ...

    def clients(self, disk: Record) -> int: ...

    def journal_records(self, disk: Record) -> int: ...

    def check(self, name: str) -> None: ...

    def watch(self, disk: Record) -> None: ...

    authority: Any  # blockstore.host.supervisor.Authority: the attachments, set at construction

    def stats(self, disk: Record) -> dict[str, Any] | None: ...

    def served_disks(self) -> list[Record]: ...

    def disown(self, name: str) -> None: ...

    def discard_local(self, disk: Record) -> int: ...

    # The destination side of a live migration (control/migration.py).
    def serve_incoming(self, disk: Record) -> dict[str, Any]: ...

    def handover_wanted(self, disk: Record) -> bool: ...

    def hand_over(self, disk: Record, timeout: float) -> dict[str, Any]: ...

    def drop_incoming(self, disk: Record) -> None: ...


class ControlContext:
    """The shared state of one host's control plane over one bucket (and its secondary)."""

    def __init__(
        self,
        store: ObjectStore,
        host_id: str,
        exports: Exports,
        *,
        clock: Clock,
        secondary: ObjectStore | None,
        replication_config: ReplicationConfig,
        primary_hold_seconds: float,
    ) -> None:
        self.store = store  # records, and the data of every disk served from the primary region
        self.secondary = secondary  # the second region, for grs disks
        self.host_id = host_id
        self.exports = exports
        self.clock = clock
        self.replication_config = replication_config
        self.disks: Records = RecordStore(store, keys.CONTROL_DISKS_PREFIX, clock)
        if secondary is not None:
            self.disks = MirroredRecords(
                self.disks,
                RecordStore(secondary, keys.CONTROL_DISKS_PREFIX, clock),
                mirrored=lambda d: d.get("redundancy") == Redundancy.grs,
                in_secondary=lambda d: region_of(d) == SECONDARY,
                hold_seconds=primary_hold_seconds,
            )
        self.operations = OperationService(store, host_id, clock)
        # Held while an attachment changes hands or a disk changes region: one at a time.
        self.attach_lock = threading.Lock()

    def now(self) -> str:
        return now_iso(self.clock)

    # -- where a disk's data lives --------------------------------------------------------

    def data_store(self, disk: Record) -> ObjectStore:
        """The store a disk's volume is read and written in: the primary region, or the
        secondary once the disk failed over."""
        if region_of(disk) == SECONDARY:
            return self.require_secondary()
        return self.store

    def other_store(self, disk: Record) -> ObjectStore:
        """The region a disk's data is copied to (its secondary, or the old primary)."""
        if region_of(disk) == SECONDARY:
            return self.store
        return self.require_secondary()

    def require_secondary(self) -> ObjectStore:
        if self.secondary is None:
            raise InvalidArgument(
                "no secondary region is configured: set BLOCKSTORE_SECONDARY_ENDPOINT, "
                "_ACCESS_KEY and _SECRET_KEY (or a [secondary] table) for geo-redundant disks"
            )
        return self.secondary

    def primary_down(self) -> bool:
        """Whether the primary region's store failed to answer a moment ago."""
        return isinstance(self.disks, MirroredRecords) and self.disks.primary_down()

    # -- the disk records -----------------------------------------------------------------

    def visible(self, record: Record | None, name: str) -> Record:
        """The record of a disk callers may see: NotFound while it is created or deleted."""
        if record is None or record.get("state") in ("deleting", "creating"):
            raise NotFound(f"disk {name!r} does not exist")
        return record

    def get_disk(self, name: str) -> Record:
        keys.validate_disk_id(name)
        return self.visible(self.disks.find(name), name)

    def update(self, name: str, change: Callable[[Record | None], Record]) -> Record:
        """A new version of a disk record (`change` never deletes: see `Records.update`)."""
        result = self.disks.update(name, change)
        assert result is not None
        return result

    def set_fields(self, name: str, **fields: Any) -> Record:
        return self.disks.set_fields(name, fields, missing=f"disk {name!r} does not exist")
