"""What a disk record holds, and the rules on it that every part of the control plane applies.

A disk record is a JSON object kept in `control/disks/<name>/` (control/records.py). Its field
names are part of the stored format and of the API's answers, and do not change: among them
`volume_id`, the engine's *disk id* of the disk's data (new for every disk, so a name can be
reused while a deleted disk's objects are still being removed; `disk_id_of` reads it), and
`primary`, the region serving the data (absent: the primary region; `region_of` reads it).

Sizes: a multiple of the engine's sector, at least MIN_DISK_BYTES, at most the engine's
MAX_SIZE (blockstore/engine/volume.py owns the limit; the API's bounds are these constants).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from blockstore.clock import Clock
from blockstore.control.records import PRIMARY, SECONDARY, Record
from blockstore.engine import volume
from blockstore.errors import InvalidArgument

__all__ = ["PRIMARY", "SECONDARY"]

DISK_ID_FIELD = "volume_id"  # the record field holding the engine's disk id (stored as named)
MIB = 1 << 20
GIB = 1 << 30
MIN_DISK_BYTES = MIB
MAX_DISK_BYTES = volume.MAX_SIZE  # 64 TiB


class DiskKind(StrEnum):
    os = "os"
    data = "data"
    ephemeral = "ephemeral"


class Caching(StrEnum):
    none = "none"
    readonly = "readonly"
    readwrite = "readwrite"


class Redundancy(StrEnum):
    lrs = "lrs"
    grs = "grs"


class Compression(StrEnum):  # blockstore/format/codec.py
    none = "none"
    zstd = "zstd"
    lz4 = "lz4"


DEFAULT_CACHING = {DiskKind.os: Caching.readwrite, DiskKind.data: Caching.none}


@dataclass(frozen=True)
class DiskSpec:
    """What a caller asks for when creating a disk (already type-checked by the adapter)."""

    name: str
    size_bytes: int | None
    kind: DiskKind
    caching: Caching | None = None
    redundancy: Redundancy = Redundancy.lrs
    source_snapshot: str | None = None  # "<disk>/<snapshot>"
    source_point: dict[str, Any] | None = None  # {disk, position | time}: a restore point
    retention_seconds: int | None = None  # restore points kept this long (0: none)
    encrypted: bool = False  # sealed under a data key of its own (blockstore/crypto/)
    compression: Compression | None = None  # None: a clone's source's, else none
    qos: dict[str, Any] | None = None  # QoS caps given (blockstore/host/qos.py `QosLimits`)


def now_iso(clock: Clock) -> str:
    return iso(clock.time())


def iso(t: float) -> str:
    """Unix seconds as the API shows times (ISO 8601, UTC, whole seconds)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def validate_size(size_bytes: int) -> int:
    if size_bytes % volume.SECTOR:
        raise InvalidArgument(f"size_bytes {size_bytes} is not a multiple of 512")
    if size_bytes < MIN_DISK_BYTES:
        raise InvalidArgument(f"size_bytes {size_bytes} is below the minimum of 1 MiB")
    if size_bytes > MAX_DISK_BYTES:
        raise InvalidArgument(f"size_bytes {size_bytes} is above the maximum of 64 TiB")
    return size_bytes


def disk_id_of(disk: Record) -> str:
    """The engine's disk id of a disk's data (the record's `volume_id` field)."""
    disk_id: str = disk[DISK_ID_FIELD]
    return disk_id


def region_of(disk: Record) -> str:
    """The region whose store holds the disk's data now: PRIMARY, or SECONDARY once it failed
    over."""
    region: str = disk.get("primary", PRIMARY)
    return region


def require_volume(disk: Record) -> None:
    """InvalidArgument for an ephemeral disk: it lives on one host's local disk, not in the
    store, so it has no snapshots and no second region."""
    if disk["kind"] == DiskKind.ephemeral:
        raise InvalidArgument(
            f"disk {disk['name']!r} is ephemeral (host-local): it has no snapshots"
        )
