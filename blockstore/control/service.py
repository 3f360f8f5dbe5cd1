"""The control plane: disks, attachments, snapshots, resize, delete and long-running operations.

Place: the API (`api/`) and the CLI are thin adapters over `ControlService`; it imports no web
framework. It talks to the bucket through `RecordStore` (disk and operation records, each a
series of immutable versions created with If-None-Match) and `Volume` (the disk data), and to
this host's nbdkit processes through `ExportSupervisor` (blockstore/host/supervisor.py).

Records live in the bucket and nowhere else, so any number of `blockstore serve` processes
(hosts) over one bucket see the same disks, and a restarted host finds what it had attached and
serves it again. A disk's data lives under a volume id that is new for every disk, so a name
can be reused while the objects of a deleted disk of that name are still being removed.

Ownership: a disk record carries `writer_epoch`, the last writer epoch issued for it, and its
attachment carries the epoch its export runs with. Every start of an export (attach, a restart
after a crash, the service resuming) first creates a new record version that issues the next
epoch, conditionally on who holds the disk; record versions are created with If-None-Match, so of
a force-attach on one host and a restart on another exactly one wins, and the epochs the volume
sees are ordered as the record versions are. A host that lost the disk can never fence its new
owner (docs/format.md, "Ownership").

Failure behaviour: a request that cannot be met raises from the `blockstore.errors` hierarchy
with a message that says what to do (NotFound, Conflict, InvalidArgument); store outages raise
Unavailable. A crash part-way leaves records that say what was under way: a disk in state
`deleting` is deleted again at the next start, an attachment of this host is served again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import string
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.control.records import MirroredRecords, Record, Records, RecordStore
from blockstore.engine import volume
from blockstore.engine.volume import Volume
from blockstore.errors import BlockstoreError, Conflict, InvalidArgument, NotFound, Unavailable
from blockstore.format import keys
from blockstore.geo.lag import measure as measure_lag
from blockstore.geo.lag import status_fields as lag_fields
from blockstore.geo.replication import (
    DiskReplicator,
    ReplicationConfig,
    ReplicationService,
    delete_copy,
    progress_key,
    trim_after_frontier,
    truncate_after,
)
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30
MIN_DISK_BYTES = MIB
MAX_DISK_BYTES = 64 << 40


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


DEFAULT_CACHING = {DiskKind.os: Caching.readwrite, DiskKind.data: Caching.none}


def now_iso(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.time(), UTC).isoformat(timespec="seconds")


def validate_size(size_bytes: int) -> int:
    if size_bytes % 512:
        raise InvalidArgument(f"size_bytes {size_bytes} is not a multiple of 512")
    if size_bytes < MIN_DISK_BYTES:
        raise InvalidArgument(f"size_bytes {size_bytes} is below the minimum of 1 MiB")
    if size_bytes > MAX_DISK_BYTES:
        raise InvalidArgument(f"size_bytes {size_bytes} is above the maximum of 64 TiB")
    return size_bytes


@dataclass(frozen=True)
class DiskSpec:
    """What a caller asks for when creating a disk (already type-checked by the adapter)."""

    name: str
    size_bytes: int | None
    kind: DiskKind
    caching: Caching | None = None
    redundancy: Redundancy = Redundancy.lrs
    source_snapshot: str | None = None  # "<disk>/<snapshot>"


class Exports(Protocol):
    """What the control plane needs from this host's export supervisor."""

    def serve(self, disk: Record) -> dict[str, Any]: ...

    def stop(self, disk: Record, *, graceful: bool = True) -> None: ...

    def flush(self, disk: Record) -> None: ...

    def resize(self, disk: Record, size_bytes: int) -> None: ...

    def serving(self, disk: Record) -> bool: ...

    def clients(self, disk: Record) -> int: ...

    def journal_records(self, disk: Record) -> int: ...

    def check(self, name: str) -> None: ...

    def watch(self, disk: Record) -> None: ...

    authority: Any  # blockstore.host.supervisor.Authority: this service, set at construction

    def stats(self, disk: Record) -> dict[str, Any] | None: ...

    def served_disks(self) -> list[Record]: ...

    def discard_local(self, disk: Record) -> int: ...


OPERATION_STATUSES = ("running", "succeeded", "failed")
OPERATION_RETENTION_SECONDS = 7 * 86400.0  # finished operations are kept this long


class OperationService:
    """Long-running work (delete, seeding) run in threads and recorded in the bucket.

    An operation runs in the service that started it; if that service stops before it
    finishes, its next start marks it failed (`interrupted`) so nobody waits on it forever.
    Finished operations are kept for OPERATION_RETENTION_SECONDS."""

    def __init__(self, store: ObjectStore, host_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.records = RecordStore(store, keys.CONTROL_OPERATIONS_PREFIX)
        self.host_id = host_id
        self.clock = clock
        self._threads: list[threading.Thread] = []

    def start(
        self, kind: str, target: str, work: Callable[[Callable[[float], None]], None]
    ) -> Record:
        op_id = "op-" + secrets.token_hex(8)
        record = {
            "id": op_id,
            "kind": kind,
            "target": target,
            "status": "running",
            "progress": 0.0,
            "error": None,
            "host": self.host_id,
            "created": now_iso(self.clock),
            "finished": None,
        }
        self.records.create(op_id, record)
        thread = threading.Thread(
            target=self._run, args=(op_id, work), name=f"{kind}-{target}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return record

    def _set(self, op_id: str, **fields: Any) -> None:
        def change(current: Record | None) -> Record:
            if current is None:
                raise NotFound(f"operation {op_id} vanished")
            return {**current, **fields}

        self.records.update(op_id, change)

    def _run(self, op_id: str, work: Callable[[Callable[[float], None]], None]) -> None:
        last = [0.0]

        def progress(fraction: float) -> None:
            # Record progress in steps of 5% so a big delete does not write a version per object.
            if fraction - last[0] >= 0.05:
                last[0] = fraction
                self._set(op_id, progress=round(min(fraction, 1.0), 3))

        try:
            work(progress)
        except BlockstoreError as exc:
            self._set(op_id, status="failed", error=str(exc), finished=now_iso(self.clock))
        except Exception as exc:  # a bug: record it rather than lose it in a thread
            traceback.print_exc()
            self._set(
                op_id, status="failed", error=f"internal error: {exc}", finished=now_iso(self.clock)
            )
        else:
            self._set(op_id, status="succeeded", progress=1.0, finished=now_iso(self.clock))

    def get(self, op_id: str) -> Record:
        if not op_id.startswith("op-") or not keys.DISK_ID_RE.match(op_id):
            raise NotFound(f"operation {op_id!r} does not exist")
        try:
            return self.records.get(op_id)
        except NotFound:
            raise NotFound(f"operation {op_id!r} does not exist") from None

    def select(self, *, target: str | None = None, status: str | None = None) -> list[Record]:
        """Operations, newest first, optionally of one target (a disk, or 'disk/snapshot')
        and in one status."""
        if status is not None and status not in OPERATION_STATUSES:
            raise InvalidArgument(
                f"status {status!r} is not one of {', '.join(OPERATION_STATUSES)}"
            )
        ops = [
            op
            for _, op in self.records.items()
            if (target is None or op["target"] == target)
            and (status is None or op["status"] == status)
        ]
        return sorted(ops, key=lambda op: op["created"], reverse=True)

    def tidy(self) -> list[str]:
        """At start-up: mark this host's unfinished operations failed (their thread died with
        the previous process) and remove finished ones past the retention time. Returns the
        ids of the interrupted ones."""
        interrupted = []
        horizon = self.clock.time() - OPERATION_RETENTION_SECONDS
        for op_id, op in self.records.items():
            if op["status"] == "running" and op["host"] == self.host_id:
                self._set(
                    op_id,
                    status="failed",
                    error="interrupted: the service stopped before the operation finished; "
                    "start it again",
                    finished=now_iso(self.clock),
                )
                interrupted.append(op_id)
            elif op["finished"] and datetime.fromisoformat(op["finished"]).timestamp() < horizon:
                self.records.purge(op_id)
        return interrupted

    def wait_all(self, timeout: float = 60.0) -> None:
        for thread in self._threads:
            thread.join(timeout)


class ControlService:
    """Disks and what can be done to them, for one host over one bucket."""

    def __init__(
        self,
        store: ObjectStore,
        host_id: str,
        exports: Exports,
        *,
        clock: Clock = SYSTEM_CLOCK,
        secondary: ObjectStore | None = None,
        replication_config: ReplicationConfig | None = None,
        primary_hold_seconds: float = 30.0,
    ) -> None:
        self.store = store  # records, and the data of every disk whose primary is "primary"
        self.secondary = secondary  # the second region, for grs disks
        self.host_id = host_id
        self.exports = exports
        self.clock = clock
        self.replication_config = replication_config or ReplicationConfig()
        self.replication: ReplicationService | None = None
        self.disks: Records = RecordStore(store, keys.CONTROL_DISKS_PREFIX, clock)
        self._unfenced: list[str] = []  # disks that failed over while the primary was down
        if secondary is not None:
            self.replication = ReplicationService(
                store,
                secondary,
                self.replicated_disks,
                config=self.replication_config,
                clock=clock,
                after_pass=self.fence_old_primaries,
            )
            # A grs disk's record is mirrored to the secondary, so that it can fail over while
            # the primary region is completely down (control/records.py, MirroredRecords).
            self.disks = MirroredRecords(
                self.disks,
                RecordStore(secondary, keys.CONTROL_DISKS_PREFIX, clock),
                mirrored=lambda d: d.get("redundancy") == Redundancy.grs,
                in_secondary=lambda d: d.get("primary", "primary") == "secondary",
                hold_seconds=primary_hold_seconds,
            )
        self.operations = OperationService(store, host_id, clock)
        self._attach_lock = threading.Lock()
        exports.authority = self

    # -- where a disk's data lives --------------------------------------------------------

    def data_store(self, disk: Record) -> ObjectStore:
        """The store a disk's volume is read and written in: the primary region, or the
        secondary once the disk failed over."""
        if disk.get("primary", "primary") == "secondary":
            return self._require_secondary()
        return self.store

    def _other_store(self, disk: Record) -> ObjectStore:
        if disk.get("primary", "primary") == "secondary":
            return self.store
        return self._require_secondary()

    def _require_secondary(self) -> ObjectStore:
        if self.secondary is None:
            raise InvalidArgument(
                "no secondary region is configured: set BLOCKSTORE_SECONDARY_ENDPOINT, "
                "_ACCESS_KEY and _SECRET_KEY (or a [secondary] table) for geo-redundant disks"
            )
        return self.secondary

    # -- disks ---------------------------------------------------------------------------

    def create_disk(self, spec: DiskSpec) -> tuple[Record, bool]:
        """Create a disk; returns (disk, created). The same request again returns the existing
        disk with created=False; a different one for an existing name is a Conflict."""
        keys.validate_disk_id(spec.name)
        caching = spec.caching
        if spec.kind == DiskKind.ephemeral:
            if caching not in (None, Caching.none):
                raise InvalidArgument("ephemeral disks live on the host's local disk: no caching")
            if spec.redundancy != Redundancy.lrs:
                raise InvalidArgument("ephemeral disks live on one host: redundancy must be lrs")
            if spec.source_snapshot:
                raise InvalidArgument("ephemeral disks cannot be created from a snapshot")
            caching = Caching.none
        caching = caching or DEFAULT_CACHING.get(spec.kind, Caching.none)
        if spec.redundancy == Redundancy.grs:
            self._require_secondary()
        source = self._source(spec.source_snapshot) if spec.source_snapshot else None
        size = spec.size_bytes
        if size is None:
            if source is None:
                raise InvalidArgument("give size_bytes or size_gib (or a source_snapshot)")
            size = int(source[2]["size"])
        validate_size(size)
        if source is not None and size < int(source[2]["size"]):
            raise InvalidArgument(
                f"size_bytes {size} is smaller than snapshot {spec.source_snapshot} "
                f"({source[2]['size']} bytes)"
            )
        wanted = {
            "size_bytes": size,
            "kind": spec.kind.value,
            "caching": caching.value,
            "redundancy": spec.redundancy.value,
            "source_snapshot": spec.source_snapshot,
        }
        existing = self.disks.find(spec.name)
        if existing is not None:
            disk = self._same_or_conflict(existing, wanted)
            if disk["state"] == "creating":  # a create cut short by a crash: finish it
                return self._finish_create(disk, source), True
            return disk, False
        volume_id = "v" + secrets.token_hex(8)
        record: Record = {
            "name": spec.name,
            "volume_id": volume_id,
            **wanted,
            "state": "creating",
            "created": now_iso(self.clock),
            "home_host": self.host_id if spec.kind == DiskKind.ephemeral else None,
            "attachment": None,
        }
        try:
            self.disks.create(spec.name, record)
        except Conflict:
            return self._same_or_conflict(self.disks.get(spec.name), wanted), False
        return self._finish_create(record, source), True

    def _finish_create(
        self, disk: Record, source: tuple[str, str, dict[str, Any]] | None
    ) -> Record:
        """Create the volume of a disk whose record says `creating`, then mark it ready."""
        if disk["kind"] != DiskKind.ephemeral:
            src = (source[0], source[1]) if source else None
            with contextlib.suppress(Conflict):  # made before a crash: keep it
                Volume.create(self.store, disk["volume_id"], disk["size_bytes"], source=src)
            if source is not None and disk["size_bytes"] > int(source[2]["size"]):
                vol = Volume.open(self.data_store(disk), disk["volume_id"], writable=True)
                try:
                    if vol.size < disk["size_bytes"]:
                        vol.resize(disk["size_bytes"])
                finally:
                    vol.close()
        return self._set_fields(disk["name"], state="ready")

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

    def _source(self, ref: str) -> tuple[str, str, dict[str, Any]]:
        """(volume id, snapshot name, snapshot info) of "<disk>/<snapshot>"."""
        disk_name, sep, snap = ref.partition("/")
        if not sep:
            raise InvalidArgument(
                f"source_snapshot {ref!r} must be '<disk>/<snapshot>', e.g. 'data1/before-upgrade'"
            )
        keys.validate_disk_id(disk_name)
        keys.validate_snapshot_name(snap)
        disk = self.get_disk(disk_name)
        for info in self._snapshots(disk):
            if info["name"] == snap:
                return disk["volume_id"], snap, info
        raise NotFound(f"disk {disk_name!r} has no snapshot {snap!r}")

    def _set_fields(self, name: str, **fields: Any) -> Record:
        def change(current: Record | None) -> Record:
            if current is None:
                raise NotFound(f"disk {name!r} does not exist")
            return {**current, **fields}

        result = self.disks.update(name, change)
        assert result is not None
        return result

    def _visible(self, record: Record | None, name: str) -> Record:
        if record is None or record.get("state") in ("deleting", "creating"):
            raise NotFound(f"disk {name!r} does not exist")
        return record

    def get_disk(self, name: str) -> Record:
        keys.validate_disk_id(name)
        return self._visible(self.disks.find(name), name)

    def describe(self, disk: Record) -> dict[str, Any]:
        """The disk as the API shows it: the record plus bytes stored and live export stats."""
        out = {k: v for k, v in disk.items() if k != "home_host"}
        if disk["kind"] == DiskKind.ephemeral:
            out["bytes_stored"] = None
            out["host"] = disk.get("home_host")
        else:
            vid = disk["volume_id"]
            store = self.data_store(disk)
            out["bytes_stored"] = sum(o.size for o in store.list(keys.disk_prefix(vid)))
            out["primary"] = disk.get("primary", "primary")
            out["replication"] = self.replication_status(disk)
        return out

    def list_disks(self) -> list[Record]:
        return [r for _, r in self.disks.items() if r.get("state") == "ready"]

    def update_disk(
        self,
        name: str,
        *,
        size_bytes: int | None = None,
        caching: Caching | None = None,
        allow_shrink: bool = False,
    ) -> Record:
        disk = self.get_disk(name)
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
            disk = self._set_fields(name, size_bytes=size_bytes)
        if caching is not None and caching != disk["caching"]:
            # Applies when the export next starts (attach, restart): the running one keeps its mode.
            disk = self._set_fields(name, caching=caching.value)
        return disk

    def _resize(self, disk: Record, size_bytes: int) -> None:
        if disk["kind"] == DiskKind.ephemeral:
            if disk.get("attachment") and disk["attachment"]["host"] == self.host_id:
                self.exports.resize(disk, size_bytes)
            return
        attachment = disk.get("attachment")
        if attachment:
            if attachment["host"] != self.host_id:
                raise Conflict(
                    f"disk {disk['name']!r} is attached on host {attachment['host']}: "
                    "resize it through that host's API"
                )
            self.exports.resize(disk, size_bytes)
            return
        vol = Volume.open(self.data_store(disk), disk["volume_id"], writable=True)
        try:
            vol.resize(size_bytes, allow_shrink=size_bytes < disk["size_bytes"])
        finally:
            vol.close()

    def delete_disk(self, name: str) -> Record:
        """Hide the disk at once and remove its objects in a long-running operation."""
        disk = self.get_disk(name)
        if disk.get("attachment"):
            raise Conflict(
                f"disk {name!r} is attached to VM {disk['attachment']['vm']!r}: "
                "detach it first (POST /v1/disks/{name}/detach)"
            )
        if disk["kind"] != DiskKind.ephemeral:
            for snap in self._snapshots(disk):
                clones = snap.get("clones") or []
                if clones:
                    raise Conflict(
                        f"disk {name!r} has snapshot {snap['name']!r} that disks "
                        f"{', '.join(clones)} were created from: delete those first"
                    )

        def change(current: Record | None) -> Record:
            current = self._visible(current, name)
            if current.get("attachment"):
                raise Conflict(f"disk {name!r} was attached meanwhile: detach it first")
            return {**current, "state": "deleting"}

        disk = self.disks.update(name, change) or disk
        return self.operations.start("delete-disk", name, self._destroyer(disk))

    def _destroyer(self, disk: Record) -> Callable[[Callable[[float], None]], None]:
        return lambda progress: self._destroy(disk, progress)

    def _destroy(self, disk: Record, progress: Callable[[float], None]) -> None:
        if disk["kind"] == DiskKind.ephemeral:
            self.exports.discard_local(disk)
        else:
            if self.replication is not None:
                self.replication.pause(disk["volume_id"])
                self.replication.forget(disk["volume_id"])
            if self.secondary is not None and disk.get("redundancy") == Redundancy.grs:
                delete_copy(self._other_store(disk), disk["volume_id"])
            with contextlib.suppress(NotFound):  # gone already in an earlier attempt
                Volume.destroy(self.data_store(disk), disk["volume_id"])
        progress(0.9)

        def change(current: Record | None) -> Record | None:
            if current is not None and current.get("volume_id") != disk["volume_id"]:
                return current  # the name was reused meanwhile; leave the new disk alone
            return None

        self.disks.update(disk["name"], change)

    # -- attachments ---------------------------------------------------------------------

    def _issue_epoch(self, name: str, holds: Callable[[Record], Record], new: Record) -> Record:
        """Create the record version that makes `new` the attachment, with the next writer
        epoch, if `holds(current)` accepts the current record (it raises to refuse). The epoch
        is above the last one issued and above every epoch claimed in the disk's log (a
        detached-disk open claims one without the record), so the export's claim of it is
        the newest; ordering by record version orders the epochs."""
        disk = self.get_disk(name)
        top = 0
        if disk["kind"] != DiskKind.ephemeral:
            top = volume.top_epoch(self.data_store(disk), disk["volume_id"])

        def change(rec: Record | None) -> Record:
            rec = holds(self._visible(rec, name))
            epoch = max(int(rec.get("writer_epoch") or 0), top) + 1
            return {**rec, "writer_epoch": epoch, "attachment": {**new, "epoch": epoch}}

        result = self.disks.update(name, change)
        assert result is not None
        return result

    def attach(self, name: str, vm: str, *, force: bool = False) -> Record:
        """Attach the disk to `vm` on this host and serve it; returns the attachment.

        With `force`, a disk attached elsewhere is taken over: the record names this host with
        a new writer epoch, and the export's open fences the old writer (its next commit fails;
        its export then fails every request and is stopped by its host). If serving fails, the
        record's attachment is put back as it was."""
        keys.validate_disk_id(vm)
        with self._attach_lock:
            disk = self.get_disk(name)
            current = disk.get("attachment")
            if current and current["vm"] == vm and current["host"] == self.host_id:
                return dict(self._ensure_served(name)["attachment"])
            if current and not force:
                raise Conflict(
                    f"disk {name!r} is attached to VM {current['vm']!r} on host "
                    f"{current['host']}: detach it there first, or attach with force: true "
                    "(which fences the old writer)"
                )
            if current and current["host"] == self.host_id:
                self.exports.stop(disk)  # another VM of this host: its writes go first
            attachment = {
                "vm": vm,
                "host": self.host_id,
                "attached_at": now_iso(self.clock),
                "target": self._free_target(name, vm, disk["kind"]),
            }

            def unchanged(rec: Record) -> Record:
                if rec.get("attachment") != current:
                    raise Conflict(f"disk {name!r} was attached elsewhere meanwhile; try again")
                return rec

            disk = self._issue_epoch(name, unchanged, attachment)
            try:
                return self._serve(disk)["attachment"]
            except BlockstoreError:
                self._put_back(name, disk["attachment"]["epoch"], current)
                raise

    def _free_target(self, name: str, vm: str, kind: str) -> str:
        """The libvirt target device for a new attachment to `vm`: `vda` for an OS disk when
        free, else the first of vdb, vdc, ... that no other disk attached to the VM has. It is
        kept in the attachment, so it stays the same for the attachment's life."""
        taken = {
            (d.get("attachment") or {}).get("target")
            for n, d in self.disks.items()
            if n != name and (d.get("attachment") or {}).get("vm") == vm
        }
        letters = string.ascii_lowercase
        candidates = itertools.chain(
            ["vda"] if kind == DiskKind.os else [],
            (f"vd{c}" for c in letters[1:]),
            (f"vd{a}{b}" for a in letters for b in letters),  # as Linux names them after vdz
        )
        return next(t for t in candidates if t not in taken)

    def _put_back(self, name: str, epoch: int, previous: Record | None) -> None:
        """Undo a failed attach: the attachment it made goes, the one before comes back (the
        issued epoch stays used). Nothing changes if someone attached meanwhile."""

        def change(rec: Record | None) -> Record:
            rec = self._visible(rec, name)
            if (rec.get("attachment") or {}).get("epoch") != epoch:
                return rec
            return {**rec, "attachment": previous}

        # An export that did start serves no VM yet (the attach did not return): it goes.
        self.exports.stop({"name": name}, graceful=False)
        with contextlib.suppress(BlockstoreError):
            self.disks.update(name, change)

    def renew_attachment(self, disk: Record) -> Record | None:
        """Before an export of `disk` starts again (it died, it was fenced, the service
        restarted): a new writer epoch for this host's attachment, if the record still names
        this host and the epoch that export had; None when another holder (or none) has the
        disk now, and the export must not come back."""
        name, old = disk["name"], disk.get("attachment") or {}

        class _NotHeld(Exception):
            pass

        def still_ours(rec: Record) -> Record:
            att = rec.get("attachment")
            if not att or att["host"] != self.host_id or att.get("epoch") != old.get("epoch"):
                raise _NotHeld
            return rec

        try:
            current = self.get_disk(name)
            att = current.get("attachment")
            if not att or att["host"] != self.host_id:
                return None
            # The same attachment, with a new epoch; the pid goes until the export runs again.
            fresh = {k: v for k, v in att.items() if k not in ("epoch", "pid")}
            return self._issue_epoch(name, still_ours, fresh)
        except (_NotHeld, NotFound):
            return None

    def _serve(self, disk: Record) -> Record:
        """Start (or restart) this host's export of an attached disk with the epoch its record
        issued; that epoch's open fences any older writer of the disk, wherever it runs."""
        return self.record_served(disk, self.exports.serve(disk))

    def record_served(self, disk: Record, details: dict[str, Any]) -> Record:
        """Note in the record how the export of `disk` (with the epoch its attachment has) is
        reached, and the caching mode it runs in; Conflict if the attachment changed since."""
        epoch = disk["attachment"].get("epoch")

        def change(rec: Record | None) -> Record:
            rec = self._visible(rec, disk["name"])
            att = rec.get("attachment") or {}
            if att.get("host") != self.host_id or att.get("epoch") != epoch:
                raise Conflict(f"disk {disk['name']!r} was attached elsewhere meanwhile")
            return {**rec, "attachment": {**att, **details, "caching": disk["caching"]}}

        result = self.disks.update(disk["name"], change)
        assert result is not None
        return result

    def _ensure_served(self, name: str) -> Record:
        """The record of a disk attached here, once its export runs (started again with a new
        epoch if it had died or been fenced, and this host still holds the disk)."""
        for _ in range(3):
            self.exports.check(name)  # waits for, or does, the watcher's restart
            disk = self.get_disk(name)
            if self.exports.serving(disk):
                return disk
            attachment = disk.get("attachment")
            if not attachment or attachment["host"] != self.host_id:
                break
            renewed = self.renew_attachment(disk)
            if renewed is not None:
                return self._serve(renewed)
        raise Conflict(f"disk {name!r} was attached elsewhere meanwhile")

    def _serve_again(self, disk: Record) -> Record:
        """Serve an attached disk from where its record now says its data is (after a failover
        or failback), with a new epoch of that store."""
        renewed = self.renew_attachment(disk)
        if renewed is None:
            raise Conflict(f"disk {disk['name']!r} was attached elsewhere meanwhile")
        return self._serve(renewed)

    def detach(self, name: str, *, force: bool = False) -> Record:
        """Make everything acknowledged durable, stop the export, release the writer.

        Refused (Conflict) while NBD clients are connected, unless `force`, which pulls the
        disk out from under a running guest (its next I/O fails). Whatever mode the export
        runs in, it is flushed through NBD before it stops (an export that died is started
        again first, and replays its journal); the detach succeeds only when no acknowledged
        write is left in this host's journal. Otherwise it fails and the disk stays attached
        here, journal kept, to be detached again once the store answers."""
        with self._attach_lock:
            disk = self.get_disk(name)
            attachment = disk.get("attachment")
            if not attachment:
                return disk
            if attachment["host"] != self.host_id:
                raise Conflict(
                    f"disk {name!r} is attached on host {attachment['host']}: detach it there, "
                    "or attach it here with force: true"
                )
            clients = self.exports.clients(disk)
            if clients and not force:
                raise Conflict(
                    f"disk {name!r} is in use: {clients} NBD client(s) connected (VM "
                    f"{attachment['vm']!r}). Shut the VM down or unplug the disk in the guest "
                    "first; detach with force: true pulls it out from under the running guest, "
                    "whose next I/O fails"
                )
            if disk["kind"] != DiskKind.ephemeral:
                disk = self._ensure_served(name)
                self.exports.flush(disk)
            self.exports.stop(disk)
            if disk["kind"] != DiskKind.ephemeral:
                left = self.exports.journal_records(disk)
                if left:
                    raise Unavailable(
                        f"disk {name!r}: {left} acknowledged writes are still only in this "
                        "host's write journal (the store did not take them): the disk stays "
                        "attached here; detach again once the store answers"
                    )

            def change(rec: Record | None) -> Record:
                rec = self._visible(rec, name)
                if (rec.get("attachment") or {}).get("host") != self.host_id:
                    raise Conflict(f"disk {name!r} was attached elsewhere meanwhile")
                return {**rec, "attachment": None}

            result = self.disks.update(name, change)
            assert result is not None
            return result

    def resume(self) -> list[str]:
        """At start-up: serve again every disk this host had attached (each with a newly
        issued epoch; a disk another host took meanwhile is left alone), finish deletes (in a
        new operation; the interrupted one is marked failed)."""
        for op_id in self.operations.tidy():
            log.warning("operation %s was interrupted by a restart", op_id)
        served = []
        for name, disk in self.disks.items():
            if disk.get("state") == "deleting":
                self.operations.start("delete-disk", name, self._destroyer(disk))
                continue
            attachment = disk.get("attachment")
            if disk.get("state") == "ready" and attachment and attachment["host"] == self.host_id:
                renewed: Record | None = disk
                try:
                    renewed = self.renew_attachment(disk)
                    if renewed is not None:
                        self._serve(renewed)
                        served.append(name)
                except BlockstoreError as exc:
                    log.error("disk %s is attached here, not served yet: %s", name, exc)
                    if renewed is not None:
                        self.exports.watch(renewed)  # the watcher tries again
        return served

    def disk_stats(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, counters) of every disk this host serves, for /metrics."""
        out = []
        for disk in self.exports.served_disks():
            stats = self.exports.stats(disk)
            if stats is not None:
                out.append((disk["name"], stats))
        return out

    # -- snapshots -----------------------------------------------------------------------

    def _require_volume(self, disk: Record) -> None:
        if disk["kind"] == DiskKind.ephemeral:
            raise InvalidArgument(
                f"disk {disk['name']!r} is ephemeral (host-local): it has no snapshots"
            )

    def _snapshots(self, disk: Record) -> list[dict[str, Any]]:
        if disk["kind"] == DiskKind.ephemeral:
            return []
        # Snapshot records alone: no need to open (and replay) the volume to list them.
        infos = volume.list_snapshots(self.data_store(disk), disk["volume_id"])
        return [self._snapshot_view(disk, s) for s in infos]

    def _snapshot_view(self, disk: Record, info: Any) -> dict[str, Any]:
        clones = [
            c.key.rsplit("/", 1)[1]
            for c in self.data_store(disk).list(keys.clone_ref_prefix(disk["volume_id"], info.name))
        ]
        names = {d["volume_id"]: n for n, d in self.disks.items()} if clones else {}
        return {
            "name": info.name,
            "disk": disk["name"],
            "size": info.size,
            "created": datetime.fromtimestamp(info.created, UTC).isoformat(timespec="seconds"),
            "clones": [names.get(c, c) for c in clones],
        }

    def create_snapshot(self, name: str, snapshot: str) -> tuple[dict[str, Any], bool]:
        """A crash-consistent snapshot: an attached disk is flushed through its export first."""
        keys.validate_snapshot_name(snapshot)
        disk = self.get_disk(name)
        self._require_volume(disk)
        for existing in self._snapshots(disk):
            if existing["name"] == snapshot:
                return existing, False
        attachment = disk.get("attachment")
        if attachment and attachment["host"] == self.host_id and self.exports.serving(disk):
            self.exports.flush(disk)
        vol = Volume.open(self.data_store(disk), disk["volume_id"], writable=False)
        try:
            info = vol.create_snapshot(snapshot)
        finally:
            vol.close()
        return self._snapshot_view(disk, info), True

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        disk = self.get_disk(name)
        self._require_volume(disk)
        return self._snapshots(disk)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        keys.validate_snapshot_name(snapshot)
        disk = self.get_disk(name)
        self._require_volume(disk)
        try:
            volume.delete_snapshot(self.data_store(disk), disk["volume_id"], snapshot)
        except NotFound:
            raise NotFound(f"disk {name!r} has no snapshot {snapshot!r}") from None

    def changed_ranges(self, name: str, snapshot: str, since: str | None) -> dict[str, Any]:
        """Ranges that differ between snapshot `since` (or an empty disk) and `snapshot`."""
        keys.validate_snapshot_name(snapshot)
        if since is not None:
            keys.validate_snapshot_name(since)
        disk = self.get_disk(name)
        self._require_volume(disk)
        vol = Volume.open(self.data_store(disk), disk["volume_id"], writable=False)
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

    # -- geo-redundancy ------------------------------------------------------------------

    def replicated_disks(self) -> list[tuple[str, bool]]:
        """What this host's replicator copies: (volume id, reversed) of every grs disk served
        from the primary region whose attachment is on this host, and of every detached one
        (any host may copy those; copies are create-if-absent, so duplicates are harmless)."""
        out, unfenced = [], []
        for name, disk in self.disks.items():
            if disk.get("state") != "ready" or disk.get("redundancy") != Redundancy.grs:
                continue
            if (disk.get("failover") or {}).get("fence_pending"):
                unfenced.append(name)
            if disk.get("primary", "primary") != "primary" or disk.get("kind") == "ephemeral":
                continue
            attachment = disk.get("attachment")
            if attachment and attachment["host"] != self.host_id:
                continue
            out.append((disk["volume_id"], False))
        self._unfenced = unfenced
        return out

    def fence_old_primaries(self) -> None:
        """Fence, once the primary region answers again, the writer of every disk that failed
        over while it was down (after each replication pass): a writer that was still running
        there can then never commit to the old copy again."""
        if isinstance(self.disks, MirroredRecords) and self.disks.primary_down():
            return
        for name in self._unfenced:
            disk = self.disks.find(name)
            failover = (disk or {}).get("failover") or {}
            if disk is None or not failover.get("fence_pending"):
                continue
            try:
                Volume.open(self.store, disk["volume_id"], writable=True).abandon()
            except NotFound:
                pass  # no log there at all: nothing can be written to it
            except BlockstoreError as exc:
                log.info("old primary of %s not fenced yet: %s", name, exc)
                return
            fenced = {**failover, "fence_pending": False, "fenced_at": now_iso(self.clock)}
            self._set_fields(name, failover=fenced)
            log.info("disk %s: the old primary's writer is fenced", name)
        self._unfenced = []

    def replication_status(self, disk: Record) -> dict[str, Any] | None:
        """Lag of a grs disk against what its primary has acknowledged, measured now on both
        stores (blockstore/geo/lag.py), plus the copy counters of this host's replicator or
        the progress marker of the host that replicates it (None for lrs disks)."""
        if disk.get("redundancy") != Redundancy.grs or self.secondary is None:
            return None
        if disk.get("primary", "primary") == "secondary":
            return {
                "state": "failed-over",
                "failover": disk.get("failover"),
                "rpo_target_seconds": self.replication_config.rpo_target_seconds,
            }
        status = None
        if self.replication is not None:
            status = self.replication.status(disk["volume_id"])
        if status is None:
            status = self._status_from_marker(disk)
        status.update(self._measured_lag(disk, status))
        if status.get("last_sync_time") is not None:
            status["last_sync_time"] = datetime.fromtimestamp(
                float(status["last_sync_time"]), UTC
            ).isoformat(timespec="milliseconds")
        return status

    def _measured_lag(self, disk: Record, counters: dict[str, Any]) -> dict[str, Any]:
        """The lag fields, or "unknown" when the primary does not answer: a lag that cannot
        be measured is never reported as none."""
        assert self.secondary is not None
        target = self.replication_config.rpo_target_seconds
        try:
            if isinstance(self.disks, MirroredRecords) and self.disks.primary_down():
                raise Unavailable("the primary region does not answer")
            lag = measure_lag(
                self.store,
                self.secondary,
                disk["volume_id"],
                known=int(counters.get("frontier_seq") or 0),
            )
        except BlockstoreError as exc:
            return {
                "state": "unknown",
                "lag_seconds": None,
                "lag_bytes": None,
                "rpo_target_seconds": target,
                "rpo_exceeded": True,
                "error": f"lag not measured: {exc}",
            }
        return lag_fields(lag, self.clock.time(), counters.get("last_sync_time"), target)

    def replication_statuses(self) -> list[tuple[str, dict[str, Any]]]:
        """(disk name, status) of every grs disk this host replicates, for /metrics."""
        if self.replication is None:
            return []
        by_volume = dict(self.replication.statuses())
        return [
            (name, status)
            for name, d in self.disks.items()
            if d.get("volume_id") in by_volume
            and d.get("state") == "ready"
            and (status := self.replication_status(d)) is not None
        ]

    def _status_from_marker(self, disk: Record) -> dict[str, Any]:
        """When the replicating host last proved the copy complete (its progress marker); the
        frontier in it is a hint only, so it is not used to measure the lag."""
        assert self.secondary is not None
        try:
            marker = json.loads(self.secondary.get(progress_key(disk["volume_id"])))
        except (NotFound, ValueError):
            marker = {}
        return {"last_sync_time": marker.get("last_sync_time"), "reported_by": "progress marker"}

    def _require_grs(self, disk: Record) -> None:
        self._require_volume(disk)
        if disk.get("redundancy") != Redundancy.grs:
            raise Conflict(
                f"disk {disk['name']!r} is locally redundant (lrs): only grs disks have a "
                "secondary copy to fail over to; PATCH it to redundancy grs first"
            )
        self._require_secondary()

    def _require_local(self, disk: Record, doing: str) -> None:
        attachment = disk.get("attachment")
        if attachment and attachment["host"] != self.host_id:
            raise Conflict(
                f"disk {disk['name']!r} is attached on host {attachment['host']}: {doing} it "
                "through that host's API, or detach it first"
            )

    def failover(self, name: str) -> Record:
        """Serve the disk from the secondary region from now on.

        Steps: stop replicating it; stop its export here; fence the primary's writer by
        opening the volume writable there and, when that works, drain what the secondary
        still lacks; cut the secondary's log at its replay frontier (the *fork*: what it has
        is a prefix of the primary, and the primary's log after it is never applied again);
        open it writable there (a new epoch, fences); record the switch; serve again. With the
        primary unreachable the fence and the drain are skipped, and writes the primary took
        after the fork are lost: that is the RPO the disk's lag showed. The switch is then
        recorded in the secondary alone (the record's mirror there is read and updated), and
        the old primary's writer is fenced as soon as the primary answers again
        (`fence_old_primaries`)."""
        with self._attach_lock:
            disk = self.get_disk(name)
            self._require_grs(disk)
            if disk.get("primary", "primary") == "secondary":
                raise Conflict(f"disk {name!r} is already served from the secondary region")
            self._require_local(disk, "fail over")
            started = self.clock.monotonic()
            vid = disk["volume_id"]
            secondary = self._require_secondary()
            if self.replication is not None:
                self.replication.pause(vid)
            primary_reachable = not (
                isinstance(self.disks, MirroredRecords) and self.disks.primary_down()
            )
            if disk.get("attachment"):
                # With the primary down the export could only wait out its retry deadline
                # trying to upload what is then discarded anyway: it is stopped at once.
                with contextlib.suppress(BlockstoreError):
                    self.exports.stop(disk, graceful=primary_reachable)
            if primary_reachable:
                try:
                    Volume.open(self.store, vid, writable=True).abandon()
                    DiskReplicator(
                        self.store, secondary, vid, config=self.replication_config
                    ).catch_up(max_passes=20)
                except BlockstoreError:
                    primary_reachable = False
            discarded = 0
            if not primary_reachable:
                # A readwrite cache's journal holds writes the primary never took. On top of
                # the secondary's older state they would make a disk that never existed (later
                # writes without earlier ones): they go, with everything after the fork.
                discarded = self.exports.discard_local(disk)
            fork = trim_after_frontier(secondary, vid)
            Volume.open(secondary, vid, writable=True).close()
            with contextlib.suppress(BlockstoreError):
                secondary.delete(progress_key(vid))
            failover = {
                "at": now_iso(self.clock),
                "fork_seq": fork,
                "primary_reachable": primary_reachable,
                "fence_pending": not primary_reachable,
                "host_cache_discarded_bytes": discarded,
                "seconds": round(self.clock.monotonic() - started, 3),
            }
            disk = self._set_fields(name, primary="secondary", failover=failover)
            if self.replication is not None:
                self.replication.forget(vid)
            if disk.get("attachment"):
                disk = self._serve_again(disk)
            return disk

    def failback(self, name: str) -> Record:
        """Re-seed the old primary from the secondary and serve from the primary again (an
        operation): fence the old primary, cut its log at the fork, copy what it lacks (only
        objects written since the fork, and checkpoints and snapshots it is missing), stop the
        export, fence the secondary, copy the rest, switch, serve."""
        disk = self.get_disk(name)
        self._require_grs(disk)
        if disk.get("primary", "primary") != "secondary":
            raise Conflict(f"disk {name!r} is served from its primary region: nothing to fail back")
        self._require_local(disk, "fail back")
        return self.operations.start("failback", name, lambda p: self._failback(name, p))

    def _failback(self, name: str, progress: Callable[[float], None]) -> None:
        disk = self.get_disk(name)
        vid = disk["volume_id"]
        secondary = self._require_secondary()
        fork = int((disk.get("failover") or {}).get("fork_seq", 0))
        Volume.open(self.store, vid, writable=True).abandon()  # fence any old-primary writer
        truncate_after(self.store, vid, fork)
        back = DiskReplicator(
            secondary, self.store, vid, config=self.replication_config, check_target_after=fork
        )
        try:
            if not back.catch_up(max_passes=200, progress=lambda f: progress(0.9 * f)):
                raise Conflict(f"disk {name!r}: the old primary did not catch up; try again")
            with self._attach_lock:
                disk = self.get_disk(name)
                attached = bool(disk.get("attachment"))
                if attached:
                    self.exports.stop(disk)
                Volume.open(secondary, vid, writable=True).close()  # fence the secondary's writer
                if not back.catch_up(max_passes=50):
                    raise Conflict(f"disk {name!r}: the last copy to the old primary failed")
                Volume.open(self.store, vid, writable=True).close()  # the primary takes the log
                with contextlib.suppress(BlockstoreError):
                    self.store.delete(progress_key(vid))
                disk = self._set_fields(name, primary="primary", failover=None)
                if attached:
                    self._serve_again(disk)
        finally:
            back.close()
        if self.replication is not None:
            self.replication.forget(vid)

    def set_redundancy(self, name: str, redundancy: Redundancy) -> Record | None:
        """lrs -> grs seeds the secondary; grs -> lrs removes the secondary copy. Both run as
        an operation, returned here (None when the disk already has that redundancy)."""
        disk = self.get_disk(name)
        self._require_volume(disk)
        if disk.get("redundancy") == redundancy:
            return None
        secondary = self._require_secondary()
        if disk.get("primary", "primary") == "secondary":
            raise Conflict(f"disk {name!r} runs on the secondary region: fail it back first")
        vid = disk["volume_id"]
        self._set_fields(name, redundancy=redundancy.value)
        if redundancy == Redundancy.grs:

            def seed(progress: Callable[[float], None]) -> None:
                rep = DiskReplicator(self.store, secondary, vid, config=self.replication_config)
                try:
                    if not rep.catch_up(max_passes=1000, progress=progress):
                        raise Conflict(f"seeding the secondary copy of {name!r} did not finish")
                finally:
                    rep.close()

            return self.operations.start("seed-secondary", name, seed)
        if self.replication is not None:
            self.replication.pause(vid)
            self.replication.forget(vid)

        def remove(progress: Callable[[float], None]) -> None:
            delete_copy(secondary, vid)

        return self.operations.start("remove-secondary", name, remove)

    def copy_snapshot(self, name: str, snapshot: str) -> Record:
        """Copy one snapshot to the other region (an operation), incrementally: segments a
        previous copy already put there are not sent again."""
        keys.validate_snapshot_name(snapshot)
        disk = self.get_disk(name)
        self._require_volume(disk)
        source, target = self.data_store(disk), self._other_store(disk)
        if snapshot not in {s["name"] for s in self._snapshots(disk)}:
            raise NotFound(f"disk {name!r} has no snapshot {snapshot!r}")

        def copy(progress: Callable[[float], None]) -> None:
            rep = DiskReplicator(source, target, disk["volume_id"], config=self.replication_config)
            try:
                rep.copy_snapshot(snapshot)
            finally:
                rep.close()

        return self.operations.start("copy-snapshot", f"{name}/{snapshot}", copy)


def host_id_of(home: Path) -> str:
    """This host's id, made once and kept in `<home>/host-id`."""
    path = home / "host-id"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    host = "h" + secrets.token_hex(6)
    path.write_text(host + "\n")
    return host
