"""Backups: copies of a snapshot in another S3-compatible store (a *backup target*), incremental
and verified, restorable into the primary as a new disk even after the source disk is gone.

A target is a store configured like the secondary region (`[backups.<name>]` in config.toml,
or `BLOCKSTORE_BACKUP_*` for one named `default`). Its layout, under its prefix:

    objects/<key>                 a copy of the primary's object <key> (segment or checkpoint)
    manifests/<backup-id>.json    written last: the backup is complete once it exists

A backup of snapshot S copies S's checkpoint and every segment its map names (a clone's
include its source's). Objects are immutable and their keys unique, so one copy serves every
backup that needs it: an object a complete backup of the same target recorded, listed there
with the size and ETag recorded, is not copied again (*incremental*). Every object copied is
verified first (blockstore/store/repair.py: a segment's header and every chunk, a checkpoint's
checksum) and recorded with its size, xxh3 and the target's ETag. An object the target lists
under a recorded key with another size or ETag is damaged or replaced: the backup stops there
with an `IntegrityError` and writes no manifest, so it is never listed.

An encrypted disk's backup also copies its wrapped data keys (its own and those it reads its
source's records with) and records which disk each key sealed for: the copies in the target are
ciphertext, and the keys open only with a KEK of the restoring host. A restore unwraps them,
stores them rewrapped under the new disk, gives the new disk a key of its own, and
authenticates the rewritten checkpoint under the original's key.

A restore copies each object back into the primary under the new disk
(`disks/<id>/restored/<key>`), checking size, xxh3 and format again; rewrites the checkpoint's
segment keys to those copies; and creates the disk as a clone of that checkpoint
(`create_restored_volume`). The new disk's GC never touches `restored/` (it compacts and
deletes only its own log), and deleting the disk deletes it.

Failure: an unreachable or full target fails the operation with the store's error after the
store stack's retries; whatever was copied stays (the next backup reuses nothing without a
manifest, and copies it again), and no manifest means never listed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

import xxhash

from blockstore.control.context import ControlContext
from blockstore.control.model import (
    DEFAULT_CACHING,
    DISK_ID_FIELD,
    Caching,
    DiskKind,
    disk_id_of,
    require_volume,
)
from blockstore.control.operations import Progress
from blockstore.control.records import Record
from blockstore.crypto.disk import encryption_record, key_owners, provider
from blockstore.crypto.keyring import create_key, import_key, unwrap_object
from blockstore.crypto.seal import Sealer
from blockstore.engine.lifecycle import create_restored_volume, delete_all
from blockstore.engine.meta import read_checkpoint, read_meta, read_snapshot
from blockstore.errors import BlockstoreError, Conflict, IntegrityError, NotFound
from blockstore.format import keys
from blockstore.format.checkpoint import decode_checkpoint, encode_checkpoint
from blockstore.format.segment import LogRecord
from blockstore.store.base import ObjectStore
from blockstore.store.repair import verify_object


class BackupService:
    """Backups of the disks in `context`'s records to the configured targets."""

    def __init__(self, context: ControlContext, targets: dict[str, ObjectStore]) -> None:
        self.ctx = context
        self.targets = targets

    def target(self, name: str) -> ObjectStore:
        if name not in self.targets:
            known = ", ".join(sorted(self.targets)) or "none is configured"
            raise NotFound(
                f"backup target {name!r} does not exist ({known}; configure [backups.{name}] "
                "in config.toml or BLOCKSTORE_BACKUP_ENDPOINT/_BUCKET/_ACCESS_KEY/_SECRET_KEY)"
            )
        return self.targets[name]

    # -- back up ----------------------------------------------------------------------------

    def start_backup(self, name: str, snapshot: str, target: str) -> Record:
        """Start copying snapshot `snapshot` of disk `name` to `target`; the operation."""
        disk = self.ctx.get_disk(name)
        require_volume(disk)
        keys.validate_snapshot_name(snapshot)
        dest = self.target(target)
        store, disk_id = self.ctx.data_store(disk), disk_id_of(disk)
        info = read_snapshot(store, disk_id, snapshot)  # NotFound now, not in the operation
        owners = key_owners(read_meta(store, disk_id))  # an encrypted disk's keys
        # At most 58 characters: the manifest's key takes a name (keys.backup_manifest_key).
        backup_id = f"{name[:24]}-{snapshot[:24]}-{secrets.token_hex(4)}"
        head = {"id": backup_id, "target": target, "disk": name, DISK_ID_FIELD: disk_id,
                "kind": disk["kind"], "snapshot": snapshot, "size": info.size,
                "checkpoint": keys.checkpoint_key(disk_id, info.checkpoint_seq),
                "key_owners": owners}  # fmt: skip

        def work(progress: Progress) -> None:
            self._copy(store, dest, head, progress)

        return self.ctx.operations.start("backup", f"{name}/{snapshot}", work)

    def _copy(
        self, store: ObjectStore, dest: ObjectStore, head: dict[str, Any], progress: Progress
    ) -> None:
        ckpt = read_checkpoint(store, head["checkpoint"])
        wanted = [head["checkpoint"], *sorted(ckpt.segments)]
        if head["key_owners"]:  # wrapped: they open only with a KEK of a restoring host
            wanted += [o.key for o in store.list(keys.data_key_prefix(head[DISK_ID_FIELD]))]
        recorded = self._recorded(dest)
        listed = {o.key: o for o in dest.list(keys.BACKUP_OBJECTS_PREFIX)}
        objects: dict[str, dict[str, Any]] = {}
        copied = copied_bytes = 0
        for i, key in enumerate(wanted):
            there, known = listed.get(keys.backup_object_key(key)), recorded.get(key)
            if known is not None and there is not None:
                if (there.size, there.etag) != (known["size"], known["etag"]):
                    raise IntegrityError(
                        f"backup target holds a damaged or replaced copy of {key} "
                        f"({there.size} bytes, ETag {there.etag}; a complete backup recorded "
                        f"{known['size']} bytes, ETag {known['etag']}): backup stopped"
                    )
                objects[key] = known
                continue
            blob = store.get(key)
            verify_object(blob, original_key(key))
            etag = dest.put(keys.backup_object_key(key), blob)
            objects[key] = {"size": len(blob), "xxh3": xxhash.xxh3_64_hexdigest(blob),
                            "etag": etag}  # fmt: skip
            copied, copied_bytes = copied + 1, copied_bytes + len(blob)
            progress(0.95 * (i + 1) / len(wanted))
        manifest = {**head, "created": self.ctx.now(), "objects": objects,
                    "copied_objects": copied, "copied_bytes": copied_bytes}  # fmt: skip
        dest.put(keys.backup_manifest_key(head["id"]), json.dumps(manifest).encode())

    def _recorded(self, dest: ObjectStore) -> dict[str, dict[str, Any]]:
        """Every object some complete backup in `dest` recorded: key -> size, xxh3, etag."""
        out: dict[str, dict[str, Any]] = {}
        for m in self._manifests(dest):
            out.update(m["objects"])
        return out

    def _manifests(self, dest: ObjectStore) -> list[dict[str, Any]]:
        out = []
        for o in dest.list(keys.BACKUP_MANIFESTS_PREFIX):
            try:
                out.append(json.loads(dest.get(o.key)))
            except NotFound:
                continue  # deleted between the listing and the read
        return out

    # -- list -------------------------------------------------------------------------------

    def list_backups(self, target: str | None = None) -> dict[str, Any]:
        """Complete backups (those with a manifest), newest first, without their object lists;
        of every target, the ones that did not answer named under `unreachable` (asked for
        one target, its error is the answer)."""
        names = [target] if target is not None else sorted(self.targets)
        out, unreachable = [], {}
        for name in names:
            try:
                manifests = self._manifests(self.target(name))
            except BlockstoreError as exc:
                if target is not None:
                    raise
                unreachable[name] = str(exc)
                continue
            for m in manifests:
                objects = m.pop("objects")
                out.append({**m, "target": name, "objects": len(objects),
                            "bytes": sum(o["size"] for o in objects.values())})  # fmt: skip
        out.sort(key=lambda m: m["created"], reverse=True)
        return {"backups": out, "unreachable": unreachable}

    def get(self, target: str, backup_id: str) -> dict[str, Any]:
        dest = self.target(target)
        try:
            body: dict[str, Any] = json.loads(dest.get(keys.backup_manifest_key(backup_id)))
        except NotFound:
            raise NotFound(
                f"backup target {target!r} has no complete backup {backup_id!r}"
            ) from None
        return body

    # -- restore ----------------------------------------------------------------------------

    def start_restore(
        self, target: str, backup_id: str, name: str, caching: Caching | None
    ) -> Record:
        """Create disk `name` from a backup: its record now (state `creating`), its data in an
        operation; the operation."""
        keys.validate_disk_id(name)
        manifest = self.get(target, backup_id)
        kind = DiskKind(manifest.get("kind", DiskKind.data))
        record: Record = {
            "name": name,
            DISK_ID_FIELD: "v" + secrets.token_hex(8),
            "size_bytes": manifest["size"],
            "kind": kind.value,
            "caching": (caching or DEFAULT_CACHING.get(kind, Caching.none)).value,
            "redundancy": "lrs",
            "source_snapshot": None,
            "source_backup": {"target": target, "id": backup_id},
            "state": "creating",
            "created": self.ctx.now(),
            "home_host": None,
            "attachment": None,
        }
        if manifest.get("key_owners"):
            record["encrypted"] = True  # a backup of an encrypted disk restores encrypted
        if self.ctx.disks.find(name) is not None:
            raise Conflict(f"disk {name!r} exists: restore into a new name")
        self.ctx.disks.create(name, record)
        dest = self.target(target)

        def work(progress: Progress) -> None:
            try:
                self._restore(dest, manifest, record, progress)
            except BaseException:
                self._discard(record)  # the name is free again; nothing half-made is left
                raise
            self.ctx.set_fields(name, state="ready")

        return self.ctx.operations.start("restore-backup", name, work)

    def _discard(self, disk: Record) -> None:
        """Remove what a failed restore made: its objects, then its `creating` record."""
        disk_id = disk_id_of(disk)
        made = [o.key for o in self.ctx.store.list(keys.disk_prefix(disk_id))]
        delete_all(self.ctx.store, disk_id, made)
        self.ctx.disks.delete(disk["name"])

    def _restore(
        self, dest: ObjectStore, manifest: dict[str, Any], disk: Record, progress: Progress
    ) -> None:
        disk_id, store = disk_id_of(disk), self.ctx.store
        objects: dict[str, dict[str, Any]] = manifest["objects"]
        wrapped: list[bytes] = []
        for i, (key, want) in enumerate(sorted(objects.items())):
            blob = dest.get(keys.backup_object_key(key))
            if len(blob) != want["size"] or xxhash.xxh3_64_hexdigest(blob) != want["xxh3"]:
                raise IntegrityError(
                    f"backup {manifest['id']}: the target's copy of {key} is damaged "
                    "(size or checksum differ from the manifest); nothing was restored from it"
                )
            verify_object(blob, original_key(key))
            if keys.parse_data_key_key(key) is not None:
                wrapped.append(blob)
            elif key != manifest["checkpoint"]:
                store.put(keys.restored_key(disk_id, key), blob)
            progress(0.9 * (i + 1) / len(objects))
        ck = decode_checkpoint(dest.get(keys.backup_object_key(manifest["checkpoint"])),
                               manifest["checkpoint"])  # fmt: skip
        moved = {k: keys.restored_key(disk_id, k) for k in ck.segments}
        vals = [(replace_key(rec, moved), delta) for rec, delta in ck.vals]
        sizes = {moved[k]: v for k, v in ck.segments.items()}
        sealer, encryption = self._restore_keys(manifest, disk_id, wrapped, ck.disk_id)
        blob = encode_checkpoint(
            ck.disk_id, ck.seq, ck.epoch, ck.size, ck.starts, ck.ends, vals, sizes, ck.fences,
            sealer,
        )  # fmt: skip
        ckey = keys.restored_key(disk_id, manifest["checkpoint"])
        store.put(ckey, blob)
        with contextlib.suppress(Conflict):  # made by an earlier attempt of this restore
            size, clock = disk["size_bytes"], self.ctx.clock
            create_restored_volume(store, disk_id, size, clock, ckey, ck.seq, encryption)

    def _restore_keys(
        self, manifest: dict[str, Any], disk_id: str, wrapped: list[bytes], ck_owner: str
    ) -> tuple[Sealer | None, dict[str, Any] | None]:
        """For a backup of an encrypted disk: its keys rewrapped under the new disk, a key of
        the new disk's own; the sealer of the original's key (which authenticates the
        checkpoint) and the new record's `encryption`. (None, None) for a plain disk."""
        owners: dict[str, str] = manifest.get("key_owners") or {}
        if not owners:
            return None, None
        kek = provider()
        secrets = dict(unwrap_object(kek, manifest[DISK_ID_FIELD], b) for b in wrapped)
        if owners.keys() - secrets.keys():
            raise IntegrityError(f"backup {manifest['id']}: data keys missing from the backup")
        for kid in owners:
            import_key(self.ctx.store, kek, disk_id, kid, secrets[kid])
        own = create_key(self.ctx.store, kek, disk_id)
        (kid,) = [k for k, d in owners.items() if d == ck_owner]
        return Sealer(ck_owner, kid, secrets[kid]), encryption_record(own, disk_id, owners)


def original_key(key: str) -> str:
    """The key a (perhaps restored, even twice) object had in the disk that wrote it, which
    says what it is (segment or checkpoint) and so how `verify_object` checks it."""
    return key.rsplit("/restored/", 1)[-1]


def replace_key(rec: LogRecord, moved: dict[str, str]) -> LogRecord:
    """Checkpoint record `rec`, naming its segment's restored copy."""
    return LogRecord(rec.kind, rec.offset, rec.length, seg_key=moved[rec.seg_key],
                     data_off=rec.data_off, chunk=rec.chunk, sums=rec.sums,
                     seal=rec.seal)  # fmt: skip
