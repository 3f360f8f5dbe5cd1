"""The volume's small objects: the volume record, snapshot records, writer-epoch claims, and
the reads every engine component makes of them (listings, existence, JSON, checkpoints).

Key names come from blockstore/format/keys.py; this module only reads and parses. A record that
is not what it should be raises `IntegrityError`; a missing one `NotFound` with the disk's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from blockstore.errors import IntegrityError, NotFound
from blockstore.format import keys
from blockstore.format.checkpoint import Checkpoint, decode_checkpoint
from blockstore.store.base import ObjectStore


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    disk_id: str
    size: int
    created: float  # unix time
    checkpoint_seq: int


def listing(
    store: ObjectStore, prefix: str, start_after: str | None = None
) -> list[tuple[str, int]]:
    """(key, size) of every object under `prefix`, read to the end at once."""
    return [(o.key, o.size) for o in store.list(prefix, start_after)]


def exists(store: ObjectStore, key: str) -> bool:
    try:
        store.head(key)
    except NotFound:
        return False
    return True


def read_json(store: ObjectStore, key: str) -> dict[str, Any]:
    """A JSON object stored at `key`; `IntegrityError` when it is anything else."""
    raw = store.get(key)
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"{key}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise IntegrityError(f"{key}: expected a JSON object")
    return obj


def read_meta(store: ObjectStore, disk_id: str) -> dict[str, Any]:
    """The volume record (volume.json)."""
    try:
        return read_json(store, keys.volume_key(disk_id))
    except NotFound:
        raise NotFound(f"disk {disk_id!r} does not exist") from None


def read_checkpoint(store: ObjectStore, key: str) -> Checkpoint:
    return decode_checkpoint(store.get(key), key)


def snapshot_info(obj: dict[str, Any], key: str) -> SnapshotInfo:
    """A snapshot record's fields, checked."""
    try:
        return SnapshotInfo(
            name=str(obj["name"]),
            disk_id=str(obj["disk_id"]),
            size=int(obj["size"]),
            created=float(obj["created"]),
            checkpoint_seq=int(obj["checkpoint_seq"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{key}: malformed snapshot record ({exc})") from exc


def read_snapshot(store: ObjectStore, disk_id: str, name: str) -> SnapshotInfo:
    key = keys.snapshot_key(disk_id, name)
    try:
        obj = read_json(store, key)
    except NotFound:
        raise NotFound(f"disk {disk_id!r} has no snapshot {name!r}") from None
    return snapshot_info(obj, key)


def top_epoch(store: ObjectStore, disk_id: str) -> int:
    """The highest writer epoch claimed on the disk (0: none): the control plane issues the
    next one above both this and the last it recorded."""
    top = 0
    for key, _size in listing(store, keys.epoch_prefix(disk_id)):
        e = keys.parse_epoch_key(key)
        if e is not None:
            top = max(top, e)
    return top


def newer_epoch(store: ObjectStore, disk_id: str, epoch: int) -> int | None:
    """The newest writer epoch claimed after `epoch`, or None: one LIST. A newer claim means
    the control plane authorised another writer, whose fence will stop this one."""
    start = keys.epoch_key(disk_id, epoch)
    newer = [
        e
        for key, _size in listing(store, keys.epoch_prefix(disk_id), start)
        if (e := keys.parse_epoch_key(key)) is not None and e > epoch
    ]
    return max(newer, default=None)
