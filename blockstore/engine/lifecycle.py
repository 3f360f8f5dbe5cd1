"""Creating and destroying a volume's objects (no open handle needed).

`create_volume` writes the volume record last, with If-None-Match, so of two creators exactly
one succeeds and a crash before it leaves at most a clone registration (which only blocks the
source snapshot's delete until the disk is destroyed). `destroy_volume` deletes every object
and the volume record last, so an interrupted destroy is simply run again.

An encrypted disk (`encrypt`, and always a clone of an encrypted disk) gets a data key of its
own before its record names it (blockstore/crypto/); destroying it deletes its keys first
(crypto-shred): once they are gone, whatever a crash leaves of its data is ciphertext nobody
can open.
"""

from __future__ import annotations

import json
from typing import Any

from blockstore.clock import Clock
from blockstore.crypto.disk import encryption_record, key_owners, provider
from blockstore.crypto.keyring import create_key, discard_key, import_key, load_keys
from blockstore.engine.config import check_size
from blockstore.engine.meta import listing, read_json, read_snapshot
from blockstore.engine.snapshots import register_clone
from blockstore.errors import (
    Conflict,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)
from blockstore.format import keys
from blockstore.format.codec import codec_id
from blockstore.store.base import ObjectStore


def create_volume(
    store: ObjectStore,
    disk_id: str,
    size: int,
    clock: Clock,
    source: tuple[str, str] | None,
    encrypt: bool = False,
    compression: str = "none",
) -> None:
    """Create an empty volume, or a clone of snapshot `source = (src_disk_id, name)` (size 0
    means the snapshot's size; a larger size grows the clone); Conflict if the disk exists or
    has leftover objects."""
    keys.validate_disk_id(disk_id)
    codec = codec_id(compression)  # a bad name stops the create before anything is made
    meta: dict[str, Any] = {"format": 1, "disk_id": disk_id, "created": clock.time()}
    if listing(store, keys.disk_prefix(disk_id)):
        raise Conflict(f"disk {disk_id!r} already exists (or has objects left from a destroy)")
    registration: str | None = None
    if source is None:
        meta["size"] = check_size("size", size)
        meta["source"] = None
    else:
        src, name = keys.validate_disk_id(source[0]), keys.validate_snapshot_name(source[1])
        snap = read_snapshot(store, src, name)
        if size == 0:
            size = snap.size
        check_size("size", size)
        if size < snap.size:
            raise InvalidArgument(
                f"size {size} is smaller than snapshot {src}/{name} ({snap.size} bytes)"
            )
        registration = register_clone(store, src, name, disk_id)
        meta["size"] = size
        meta["source"] = {
            "disk_id": src,
            "snapshot": name,
            "checkpoint_seq": snap.checkpoint_seq,
            "checkpoint_key": keys.checkpoint_key(src, snap.checkpoint_seq),
        }
    if codec:
        meta["compression"] = compression  # absent: none, as in every older record
    key = _make_keys(store, disk_id, meta, encrypt)
    try:
        store.put(keys.volume_key(disk_id), json.dumps(meta).encode(), if_none_match=True)
    except PreconditionFailed:
        if registration is not None:
            store.delete(registration)
        if key is not None:  # ours alone: the winner's has another id (the inherited ones
            discard_key(store, disk_id, key)  # are the winner's too, the same secrets)
        raise Conflict(f"disk {disk_id!r} already exists") from None


def _make_keys(store: ObjectStore, disk_id: str, meta: dict[str, Any], encrypt: bool) -> str | None:
    """For an encrypted disk (asked for, or a clone of an encrypted source): its own data key,
    and its source's keys rewrapped under it (it reads the source's records with them); the
    record's `encryption` field. Returns its own key's id, None for a plain disk."""
    source = meta["source"]
    inherited = key_owners(read_json(store, keys.volume_key(source["disk_id"]))) if source else {}
    if not (encrypt or inherited):
        return None
    kek = provider()
    key = create_key(store, kek, disk_id)
    if inherited:
        secrets = load_keys(store, kek, source["disk_id"])
        for kid in inherited:
            import_key(store, kek, disk_id, kid, secrets[kid])
    meta["encryption"] = encryption_record(key, disk_id, inherited)
    return key


def create_restored_volume(
    store: ObjectStore,
    disk_id: str,
    size: int,
    clock: Clock,
    checkpoint_key: str,
    seq: int,
    encryption: dict[str, Any] | None = None,
) -> None:
    """Create a volume that starts from a checkpoint of its own prefix (a backup restored into
    it, blockstore/control/backups.py): a clone whose source is that checkpoint, with no
    snapshot to register under. Conflict if the volume record exists."""
    keys.validate_disk_id(disk_id)
    if not checkpoint_key.startswith(keys.disk_prefix(disk_id)):
        raise InvalidArgument(f"checkpoint {checkpoint_key} is not under disk {disk_id!r}")
    meta = {
        "format": 1,
        "disk_id": disk_id,
        "created": clock.time(),
        "size": check_size("size", size),
        "source": {
            "disk_id": disk_id,
            "snapshot": None,
            "checkpoint_seq": seq,
            "checkpoint_key": checkpoint_key,
        },
    }
    if encryption is not None:  # an encrypted disk's: its keys are stored already
        meta["encryption"] = encryption
    try:
        store.put(keys.volume_key(disk_id), json.dumps(meta).encode(), if_none_match=True)
    except PreconditionFailed:
        raise Conflict(f"disk {disk_id!r} already exists") from None


def destroy_volume(store: ObjectStore, disk_id: str) -> None:
    """Delete every object of the volume; Conflict while a clone depends on one of its
    snapshots. The volume record goes last, so an interrupted destroy can be re-run."""
    objects = listing(store, keys.disk_prefix(disk_id))
    if not objects:
        raise NotFound(f"disk {disk_id!r} does not exist")
    for key, _size in objects:
        ref = keys.parse_clone_ref_key(key)
        if ref is not None:
            raise Conflict(
                f"disk {disk_id!r} cannot be destroyed: clone {ref[1]!r} depends on "
                f"its snapshot {ref[0]!r}"
            )
    meta_key = keys.volume_key(disk_id)
    try:
        meta = read_json(store, meta_key)
    except (NotFound, IntegrityError):
        meta = {}
    source = meta.get("source")
    if source and source.get("snapshot"):  # a restored disk's source is its own copy
        store.delete(keys.clone_ref_key(source["disk_id"], source["snapshot"], disk_id))
    delete_all(store, disk_id, [key for key, _size in objects])


def delete_all(store: ObjectStore, disk_id: str, objects: list[str]) -> None:
    """Delete `objects` of a disk, its data keys first (crypto-shred: a delete cut short
    leaves ciphertext nobody can open) and its volume record last: a delete cut short by a
    crash leaves the record, so the disk is still found, and the delete finished, later."""
    meta_key = keys.volume_key(disk_id)
    key_prefix = keys.data_key_prefix(disk_id)
    for key in sorted(objects, key=lambda k: not k.startswith(key_prefix)):
        if key != meta_key:
            store.delete(key)
    store.delete(meta_key)
