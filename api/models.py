"""Request bodies of the API: types and bounds, checked before any service code runs.

Strict: a field takes its JSON type only (`"1048576"`, `1048576.0`, `true` for a size; `1`,
`"yes"`, `"true"` for a flag are 422, not guessed at). Enumerations take their JSON string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from blockstore.control.model import (
    GIB,
    MAX_DISK_BYTES,
    Caching,
    Compression,
    DiskKind,
    Redundancy,
)
from blockstore.format import keys

# pydantic matches patterns with Rust's regex engine, where `$` is the end of the text only:
# "name\n" does not match (tests/api/test_api_limits.py checks it in bodies, paths and queries).
NAME_PATTERN = rf"^{keys.NAME}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="1-63 of a-z, 0-9, '-'")]
MAX_GIB = MAX_DISK_BYTES // GIB
# FastAPI validates a body as Python objects, where a strict enum field takes only enum
# instances; these take the enum's string value (and nothing else: no coercion from numbers).
KindField = Annotated[DiskKind, Field(strict=False)]
CachingField = Annotated[Caching, Field(strict=False)]
RedundancyField = Annotated[Redundancy, Field(strict=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sized(Strict):
    """A size given as size_bytes or size_gib (not both)."""

    size_bytes: Annotated[int | None, Field(gt=0, le=MAX_DISK_BYTES)] = None
    size_gib: Annotated[int | None, Field(gt=0, le=MAX_GIB)] = None

    @model_validator(mode="after")
    def one_size(self) -> Sized:
        if self.size_bytes is not None and self.size_gib is not None:
            raise ValueError("give size_bytes or size_gib, not both")
        return self

    def size(self) -> int | None:
        return self.size_bytes if self.size_gib is None else self.size_gib * GIB


# At most 90 days (blockstore/engine/points.py); 0 turns the window off.
RetentionField = Annotated[int | None, Field(ge=0, le=90 * 86400)]


def epoch_seconds(t: datetime | None) -> float | None:
    """Unix seconds of a time a request gave (one without a zone is UTC)."""
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class PointTarget(Strict):
    """A restore point: its log position, or a time (the last point at or before it)."""

    position: Annotated[int | None, Field(ge=1)] = None
    time: Annotated[datetime | None, Field(strict=False)] = None

    @model_validator(mode="after")
    def one_of(self) -> PointTarget:
        if (self.position is None) == (self.time is None):
            raise ValueError("give position or time (one of them)")
        return self


class SourcePoint(PointTarget):
    disk: Name

    def ref(self) -> dict[str, object]:
        """The point as the control plane takes it: {disk, position | time (Unix seconds)}."""
        return {"disk": self.disk, "position": self.position, "time": epoch_seconds(self.time)}


class QosFields(Strict):
    """A disk's performance caps (blockstore/host/qos.py; README "Performance you can
    provision"): absent, unchanged; 0 lifts a cap. MB/s are 10^6 bytes a second."""

    iops_limit: Annotated[int | None, Field(ge=0, le=10_000_000)] = None
    mbps_limit: Annotated[float | None, Field(ge=0, le=100_000)] = None
    burst_iops: Annotated[int | None, Field(ge=0, le=10_000_000)] = None
    burst_mbps: Annotated[float | None, Field(ge=0, le=100_000)] = None
    burst_seconds: Annotated[float | None, Field(gt=0, le=86_400)] = None

    def qos(self) -> dict[str, int | float | None]:
        return {name: getattr(self, name) for name in QosFields.model_fields}


class DiskCreate(Sized, QosFields):
    name: Name
    kind: KindField
    caching: CachingField | None = None
    redundancy: RedundancyField = Redundancy.lrs
    source_snapshot: Annotated[
        str | None,
        Field(
            pattern=rf"^{keys.NAME}/{keys.NAME}$",
            description="'<disk>/<snapshot>' to create the disk from a snapshot",
        ),
    ] = None
    source_point: SourcePoint | None = None  # create the disk from a restore point
    retention_seconds: RetentionField = None
    encrypted: Annotated[
        bool,
        Field(
            description="seal the disk's data under a data key of its own (AES-256-GCM), "
            "wrapped by this host's key-encryption key; a clone of an encrypted disk always is"
        ),
    ] = False
    compression: Annotated[
        Compression | None,
        Field(
            strict=False,
            description="store writes compressed chunk by chunk (zstd level 1 or lz4), before "
            "encryption; default none, or a clone's source's",
        ),
    ] = None

    @model_validator(mode="after")
    def one_source(self) -> DiskCreate:
        if self.source_snapshot is not None and self.source_point is not None:
            raise ValueError("give source_snapshot or source_point, not both")
        return self


class DiskUpdate(Sized, QosFields):
    caching: CachingField | None = None
    retention_seconds: RetentionField = None
    allow_shrink: bool = False
    redundancy: RedundancyField | None = None  # a change runs as an operation (202)


class AttachRequest(Strict):
    vm: Name
    force: bool = False


class MigrationRequest(Strict):
    # The VM the disk is attached to (checked when given): a live migration moves that VM.
    vm: Name | None = None


class DetachRequest(Strict):
    # True pulls the disk out from under a guest that is still connected: its next I/O fails.
    force: bool = False


class ReplicationWait(Strict):
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0


class SnapshotCreate(Strict):
    name: Name


class BackupRequest(Strict):
    target: Name = "default"  # a configured backup target


class RestoreRequest(Strict):
    name: Name  # the new disk
    caching: CachingField | None = None


class GroupCreate(Strict):
    name: Name
    disks: Annotated[list[Name], Field(min_length=1, max_length=64)]


class GroupClone(Strict):
    prefix: Annotated[
        str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$", description="new disks: <prefix>-<member>")
    ]
