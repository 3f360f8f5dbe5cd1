"""`Volume`: one page blob as a log of immutable segments; the engine's facade.

Place in the stack: ``HostCache -> Volume -> ObjectStore`` (DESIGN.md). The NBD plugin, the host
cache and the control plane reach a disk only through this class and the functions below it;
it imports neither nbdkit nor a web framework. `Volume` holds no logic of its own: it opens and
closes, and hands each call to the component whose job it is, all sharing one `VolumeState`:

    meta.py          the volume and snapshot records, epoch claims
    replay.py        the state at open: newest checkpoint + the segments after it
    fence.py         the log rule: which objects of the log count
    fencing.py       claiming an epoch, taking the log over, resuming past a torn PUT
    state.py         the durable map, the pending overlay, the log frontier
    reader.py        reads: resolve, fetch with ranged GETs, verify
    commit.py        writes: batches, group commit, in-order acknowledgement
    committer.py     the committer thread (sealing on time, checkpoints, resume)
    uploader.py      one batch PUT as the segment at its position
    checkpoints.py   checkpoints, and when one is due
    snapshots.py     snapshots, clone registration, changed ranges
    gc.py            compaction and deletion
    lifecycle.py     create and destroy

Guarantees (docs/format.md walks through every crash point):

- `flush()` returns only when every write acknowledged before it is in a segment the store
  acknowledged, and so is every earlier segment; a `durable=True` write likewise for itself.
  Concurrent durable writers share one PUT while every PUT slot is busy.
- A crash at any instant loses nothing flushed: segments are immutable and created with
  If-None-Match, checkpoints are immutable, and opening replays the newest checkpoint plus the
  contiguous run of valid segments after it.
- Every byte fetched from the store is checked against its xxh3 chunk checksum; a mismatch
  raises `IntegrityError` and counts `checksum_failures`, it never returns wrong data.
- Exclusive writer: a writable open claims a new epoch and fences the log before it writes, so
  an older writer's PUT at any position the new writer holds gets 412 and it raises `Fenced`;
  a writer whose own PUT left a torn object resumes past it while no newer epoch is claimed.
- A failed segment PUT is not retried in a loop here (`RetryingStore` below does bounded
  retries): the waiting flush or durable write gets the error and the batch is re-sent on the
  next flush; inside an NBD request, the request's deadline rules (blockstore/deadline.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.crypto.disk import PLAIN, DiskKeys, disk_keys
from blockstore.engine.checkpoints import Checkpointer
from blockstore.engine.commit import CommitPipeline
from blockstore.engine.committer import Committer
from blockstore.engine.config import MAX_SIZE, SECTOR, VolumeConfig, VolumeStats
from blockstore.engine.fencing import claim_epoch, superseded, take_log
from blockstore.engine.gc import GarbageCollector, GcResult
from blockstore.engine.lifecycle import create_volume, destroy_volume
from blockstore.engine.meta import (
    SnapshotInfo,
    listing,
    newer_epoch,
    read_checkpoint,
    read_meta,
    read_snapshot,
    top_epoch,
)
from blockstore.engine.points import load_state_at
from blockstore.engine.reader import Reader
from blockstore.engine.replay import load_state
from blockstore.engine.snapshots import (
    Snapshots,
    changed_between,
    delete_snapshot,
    list_snapshots,
)
from blockstore.engine.state import Context, LogState, VolumeState
from blockstore.errors import Conflict, InvalidArgument
from blockstore.format import keys
from blockstore.format.codec import codec_id
from blockstore.store.base import ObjectStore
from blockstore.store.counting import CountingStore

__all__ = [
    "MAX_SIZE",
    "SECTOR",
    "GcResult",
    "SnapshotInfo",
    "Volume",
    "VolumeConfig",
    "VolumeStats",
    "delete_snapshot",
    "list_snapshots",
    "top_epoch",
]


class Volume:
    """One page blob; see the module docstring. Thread-safe."""

    # -- lifecycle (classmethods) --

    @classmethod
    def create(
        cls,
        store: ObjectStore,
        disk_id: str,
        size: int,
        *,
        source: tuple[str, str] | None = None,
        encrypt: bool = False,
        compression: str = "none",
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Create an empty volume, or a clone of snapshot `source = (src_disk_id, name)`
        (size 0 means the snapshot's size; a larger size grows the clone); Conflict if the
        disk exists or has leftover objects. `encrypt` (and a clone of an encrypted disk):
        its data is sealed under a data key of its own (blockstore/crypto/). `compression`
        (zstd, lz4 or none): how its writes are stored (blockstore/format/codec.py)."""
        create_volume(store, disk_id, size, clock or SYSTEM_CLOCK, source, encrypt, compression)

    @classmethod
    def open(
        cls,
        store: ObjectStore,
        disk_id: str,
        *,
        writable: bool = True,
        epoch: int | None = None,
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
    ) -> Volume:
        """Open a volume. A writable open takes a new epoch, fencing every older writer.

        `epoch` is the writer epoch to claim; the control plane hands out epochs from the disk
        record (blockstore/control/service.py), so that only the holder the record names can fence.
        Without it, the next free epoch is claimed (tools, tests, the detached-disk paths).
        A given epoch that is taken already raises `Conflict`; one below an epoch already
        claimed raises `Fenced` (a newer writer was authorised meanwhile)."""
        config = config or VolumeConfig()
        stats = VolumeStats()
        io = CountingStore(store, stats)
        meta = read_meta(io, disk_id)
        if epoch is not None and not writable:
            raise InvalidArgument("a read-only open claims no writer epoch")
        dkeys = disk_keys(io, disk_id, meta)
        epoch = claim_epoch(io, disk_id, epoch) if writable else 0
        state = load_state(io, stats, disk_id, meta, config.header_read_bytes, dkeys)
        if writable:
            if state.log_epoch > epoch:
                # A newer writer claimed after us and has already fenced: anything we wrote
                # from here on would come after its fence and be void.
                raise superseded(disk_id, epoch, state.log_epoch)
            take_log(io, stats, disk_id, epoch, state, config, dkeys)
        codec = codec_id(str(meta.get("compression", "none")))
        return cls(
            io, stats, disk_id, state, config, clock or SYSTEM_CLOCK, writable, epoch, dkeys, codec
        )

    @classmethod
    def fence_writers(
        cls,
        store: ObjectStore,
        disk_id: str,
        *,
        epoch: int | None = None,
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Fence every writer of the disk and write nothing more: a writable open (which claims
        a new epoch and takes the log over) dropped at once, as `abandon` drops it."""
        cls.open(store, disk_id, writable=True, epoch=epoch, config=config, clock=clock).abandon()

    @classmethod
    def open_snapshot(
        cls,
        store: ObjectStore,
        disk_id: str,
        snapshot: str,
        *,
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
    ) -> Volume:
        """A read-only view of a snapshot."""
        config = config or VolumeConfig()
        stats = VolumeStats()
        io = CountingStore(store, stats)
        dkeys = disk_keys(io, disk_id, read_meta(io, disk_id))
        info = read_snapshot(io, disk_id, snapshot)
        key = keys.checkpoint_key(disk_id, info.checkpoint_seq)
        ck = read_checkpoint(io, key)
        dkeys.check(disk_id, ck, f"checkpoint {key}")
        state = LogState.from_checkpoint(ck)
        return cls(io, stats, disk_id, state, config, clock or SYSTEM_CLOCK, False, 0, dkeys)

    @classmethod
    def open_at(
        cls,
        store: ObjectStore,
        disk_id: str,
        position: int,
        *,
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
    ) -> Volume:
        """A read-only view of the disk as it was after log `position`, a restore point
        (engine/points.py); NotFound when it is not restorable any more."""
        config = config or VolumeConfig()
        stats = VolumeStats()
        io = CountingStore(store, stats)
        meta = read_meta(io, disk_id)
        dkeys = disk_keys(io, disk_id, meta)
        state = load_state_at(io, stats, disk_id, meta, config.header_read_bytes, position, dkeys)
        return cls(io, stats, disk_id, state, config, clock or SYSTEM_CLOCK, False, 0, dkeys)

    @classmethod
    def destroy(cls, store: ObjectStore, disk_id: str) -> None:
        """Delete every object of the volume; Conflict while a clone depends on one of its
        snapshots. The volume record goes last, so an interrupted destroy can be re-run."""
        destroy_volume(store, disk_id)

    # -- construction: the components, wired --

    def __init__(
        self,
        io: CountingStore,
        stats: VolumeStats,
        disk_id: str,
        log: LogState,
        config: VolumeConfig,
        clock: Clock,
        writable: bool,
        epoch: int,
        dkeys: DiskKeys = PLAIN,
        codec: int = 0,
    ) -> None:
        self._io = io
        self._store = io.inner  # snapshot records are read and written uncounted
        self.stats = stats
        self.disk_id = disk_id
        self._config = config
        self.writable = writable
        st = self._state = VolumeState(log, disk_id, epoch, writable)
        ctx = Context(st, io, stats, config, clock, dkeys, codec)
        gc_lock = threading.Lock()  # one GC pass at a time, and no pass while a snapshot pins
        self._checkpointer = Checkpointer(ctx)
        self._reader = Reader(ctx)
        self._commit = CommitPipeline(ctx, self._checkpointer)
        self._snapshots = Snapshots(ctx, self.flush, self._checkpointer, gc_lock)
        self._gc = GarbageCollector(ctx, self._commit, self._checkpointer, self._reader, gc_lock)
        if writable:
            st.threads.append(Committer(self._commit).start())
            if config.gc_interval_seconds > 0:
                st.threads.append(self._gc.start())

    # -- properties --

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def epoch(self) -> int:
        return self._state.epoch

    @property
    def prior_epoch(self) -> int:
        """The epoch that held the log until this writer took it (0: none, or read-only)."""
        return self._state.prior_epoch

    def newer_epoch(self) -> int | None:
        """The newest writer epoch claimed after this writer's, or None: one LIST. A newer claim
        means the control plane authorised another writer, whose fence will stop this one."""
        return newer_epoch(self._io, self.disk_id, self._state.epoch)

    @property
    def config(self) -> VolumeConfig:
        return self._config

    # -- reads (reader.py) --

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill `buf` with the bytes at `offset`; holes read as zeros."""
        self._reader.readinto(offset, buf)

    def read(self, offset: int, length: int) -> bytes:
        self._state.check_range(offset, length)
        out = bytearray(length)
        self._reader.readinto(offset, memoryview(out))
        return bytes(out)

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering exactly [offset, offset+length)."""
        return self._reader.extents(offset, length)

    # -- writes (commit.py) --

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, durable: bool = False
    ) -> None:
        """Join the open batch (visible to reads at once); with durable=True, return only when
        the segment holding it and every earlier one are acknowledged by the store."""
        self._commit.write(offset, data, durable=durable)

    def write_group(self, records: Sequence[tuple[int, int, bytes | memoryview | None]]) -> None:
        """Write (offset, length, data) records, None data making a hole, as one segment: the
        store gets all of them or none. Durable at the next flush."""
        self._commit.write_group(records)

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None:
        """Make the range a hole (reads as zeros, stores nothing)."""
        self._commit.trim(offset, length, durable=durable)

    def zero(self, offset: int, length: int, *, durable: bool = False) -> None:
        """Same as trim: holes read as zeros."""
        self._commit.trim(offset, length, durable=durable)

    def resize(self, new_size: int, *, allow_shrink: bool = False) -> None:
        """Grow (always) or shrink (only with allow_shrink; the tail is dropped). Recorded in
        the log, so it is ordered with the writes around it."""
        self._commit.resize(new_size, allow_shrink=allow_shrink)

    def flush(self) -> None:
        """Return when every write acknowledged before this call is durable in the store."""
        if self.writable:
            self._commit.flush()

    def checkpoint(self) -> None:
        """Flush, then write the durable map as a checkpoint (if it changed)."""
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only")
        self.flush()
        self._checkpointer.write()

    # -- snapshots and clones (snapshots.py) --

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Flush, checkpoint, and record an immutable snapshot pinning that checkpoint.

        A read-only open may take a snapshot too: of the state it replayed (the control plane
        flushes an attached disk through its export first, then opens it read-only). Its
        checkpoint at seq S describes the same log prefix the writer's would, and the writer's
        GC sees the new pin at its next pass, well inside `gc_min_age_seconds` of the open."""
        return self._snapshots.create(name)

    def list_snapshots(self) -> list[SnapshotInfo]:
        return list_snapshots(self._store, self.disk_id)

    def delete_snapshot(self, name: str) -> None:
        delete_snapshot(self._store, self.disk_id, name)

    def changed_ranges(self, since: str | None, until: str | None = None) -> list[tuple[int, int]]:
        """Ranges whose content may differ between snapshot `since` (None: the empty disk)
        and snapshot `until` (None: now), merged and sorted."""
        return self._snapshots.changed_ranges(since, until)

    def changed_from(self, base: Volume | None) -> list[tuple[int, int]]:
        """Ranges whose content may differ between `base` (None: an empty disk) and this
        volume's durable state, e.g. two restore points' views (flush first to include
        writes not yet acknowledged)."""
        return changed_between(None if base is None else base._state, self._state)

    # -- space and garbage collection (gc.py) --

    def stored_bytes(self) -> int:
        """Bytes of every object under this disk (a clone's shared source data not counted)."""
        return sum(size for _k, size in listing(self._io, keys.disk_prefix(self.disk_id)))

    def live_bytes(self) -> int:
        """Bytes of data the current durable map references."""
        with self._state.lock:
            return self._state.durable.mapped_bytes()

    def gc(self) -> GcResult:
        """One GC pass: compact sparse segments, then delete what nothing can need any more."""
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only; only the writer runs GC")
        return self._gc.run()

    # -- shutdown --

    def close(self) -> None:
        """Flush, checkpoint if useful, stop threads. Safe to call twice."""
        st = self._state
        if st.closed:
            return
        try:
            if self.writable and st.fatal is None and not st.abandoned:
                self.flush()
                with st.lock:
                    useful = st.acked_seq > max(st.last_ckpt_seq, 0)
                if useful:
                    self._checkpointer.write()
        finally:
            self._stop(wait_puts=True)
            st.closed = True

    def abandon(self) -> None:
        """Drop the handle as a crash would: stop threads and drop everything unflushed,
        writing nothing more (PUTs already on the wire complete but are not acknowledged)."""
        st = self._state
        with st.lock:
            st.abandoned = True
            st.cv.notify_all()
        self._stop(wait_puts=True)
        st.closed = True

    def _stop(self, *, wait_puts: bool) -> None:
        st = self._state
        with st.lock:
            st.stopping = True
            st.cv.notify_all()
        self._gc.stop_event.set()
        for t in st.threads:
            if t is not threading.current_thread():
                t.join()
        self._commit.stop(wait_puts=wait_puts)
        self._reader.close()
        with st.lock:
            st.cv.notify_all()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
