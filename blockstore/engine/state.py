"""The in-memory state of a volume: what the log says (`LogState`, built by replay and fencing)
and the live state of an open handle (`VolumeState`, shared by its components).

`LogState` is the result of reading the log: the newest checkpoint, plus every segment after
it judged in order by the log rule (blockstore/engine/fence.py). It is built at open and then
handed to a `VolumeState`, which nothing else keeps.

`VolumeState` holds, under its one lock (`lock`, with `cv` to wait on it):

- the *durable map*: for every byte, the newest copy the store acknowledged; changed only by
  acknowledging a segment, in log order (`apply_acked_locked`);
- the *pending overlay*: writes, trims and shrinks not yet acknowledged, pointing at their bytes
  in memory; reads look here first (`resolve_locked`), so every write is visible at once;
- the log frontier (`acked_seq`, the last position acknowledged or replayed), the writer's
  epoch and the log's fences, the segment sizes the map may name, the last checkpoint;
- the handle's life: `fatal` (this writer is fenced for good), `stopping`, `abandoned`,
  `closed`, and its background threads.

A crash loses all of it, and nothing that was acknowledged: the store holds every acknowledged
segment, and the next open rebuilds a `LogState` from them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from blockstore.clock import Clock
from blockstore.crypto.disk import PLAIN, DiskKeys
from blockstore.engine.config import SECTOR, VolumeConfig, VolumeStats
from blockstore.engine.extentmap import ExtentMap
from blockstore.engine.fence import LogRule
from blockstore.errors import BlockstoreError, Conflict, InvalidArgument
from blockstore.format import keys
from blockstore.format.checkpoint import Checkpoint
from blockstore.format.segment import RESIZE, TRIM, WRITE, LogRecord, SegmentHeader
from blockstore.store.counting import CountingStore

FAR = 1 << 62  # "to the end of any disk" for clearing tails


def apply_record(durable: ExtentMap[LogRecord], rec: LogRecord, size: int) -> int:
    """Apply one acknowledged record to the durable map; returns the size after it."""
    if rec.kind == WRITE:
        durable.set(rec.offset, rec.offset + rec.length, rec, 0)
    elif rec.kind == TRIM:
        durable.clear(rec.offset, rec.offset + rec.length)
    elif rec.kind == RESIZE:
        if rec.offset < size:
            durable.clear(rec.offset, FAR)
        size = rec.offset
    return size


@dataclass
class LogState:
    """What the log says up to position `seq`."""

    durable: ExtentMap[LogRecord]
    size: int
    seq: int  # last log position judged (applied or void; 0: none of this disk's own)
    ckpt_seq: int  # newest checkpoint seq, -1 when there is none
    ckpt_refs: set[str]
    segments: dict[str, int]  # segment key -> data bytes, for every segment the map may name
    rule: LogRule = field(default_factory=LogRule)  # log epoch, fences, broken run
    # A writer's open: the epoch that held the log just before this writer's first fence took
    # it (0: none). A write journal of that epoch may still be made durable; any other is stale.
    prior_epoch: int = 0

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, *, clone_size: int | None = None) -> LogState:
        """The state a checkpoint records. For a clone's first open (`clone_size` given), only
        the source's map and segments: its seq, epoch and fences belong to the source's log,
        and the clone's own log starts empty."""
        durable = ExtentMap.from_sorted(ck.starts, ck.ends, ck.vals)
        if clone_size is not None:
            return cls(durable, clone_size, 0, -1, set(), dict(ck.segments))
        rule = LogRule(ck.epoch, list(ck.fences))
        return cls(durable, ck.size, ck.seq, ck.seq, set(ck.segments), dict(ck.segments), rule)

    @property
    def log_epoch(self) -> int:
        return self.rule.epoch

    @property
    def fences(self) -> list[int]:
        return self.rule.fences

    def replay(self, hdr: SegmentHeader | None, stats: VolumeStats, disk_id: str) -> None:
        """Take the object at position seq + 1 (None: a torn, empty one) into the state:
        applied or void, as the one log rule (blockstore/engine/fence.py) says."""
        self.seq += 1
        if not self.rule.judge(self.seq, hdr):
            stats.segments_void += 1
            return
        assert hdr is not None
        for rec in hdr.records:
            self.size = apply_record(self.durable, rec, self.size)
        if hdr.data_len:  # in plain bytes, as the commit pipeline counts a batch
            self.segments[keys.segment_key(disk_id, self.seq)] = hdr.plain_len
        stats.segments_replayed += 1


Piece = tuple[int, int, LogRecord | None, int]


class VolumeState:
    """The live state of one open volume (see the module docstring). Fields marked "locked" are
    read and changed under `lock` only."""

    def __init__(self, log: LogState, disk_id: str, epoch: int, writable: bool) -> None:
        self.disk_id = disk_id
        self.epoch = epoch
        self.writable = writable
        # Reentrant: a future that is already done runs its callback inside
        # add_done_callback, under this lock.
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.durable = log.durable  # locked
        self.pending: ExtentMap[LogRecord] = ExtentMap()  # locked
        self.size = log.size  # the size with every pending resize applied
        self.durable_size = log.size  # locked
        self.acked_seq = log.seq  # locked
        self.segments = log.segments  # locked
        self.segment_acked_at: dict[str, float] = {}  # segments this handle wrote (GC merge age)
        self.log_epoch = log.log_epoch
        self.prior_epoch = log.prior_epoch
        self.fences = log.fences  # never deleted by GC: they keep fenced writers fenced
        self.last_ckpt_seq = log.ckpt_seq  # locked
        self.last_ckpt_refs = log.ckpt_refs  # locked
        self.last_ckpt_size = log.size  # locked
        self.fatal: BlockstoreError | None = None  # locked
        self.stopping = False  # locked
        self.abandoned = False  # locked
        self.closed = False
        self.threads: list[threading.Thread] = []

    def check_range(self, offset: int, length: int) -> None:
        for name, v in (("offset", offset), ("length", length)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidArgument(f"{name} {v!r} is not an integer")
            if v < 0 or v % SECTOR:
                raise InvalidArgument(f"{name} {v} must be a non-negative multiple of 512")
        size = self.size
        if offset + length > size:
            raise InvalidArgument(
                f"range offset {offset} length {length} goes past the end of the disk "
                f"({size} bytes)"
            )

    def check_can_write_locked(self) -> None:
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only")
        if self.fatal is not None:
            raise self.fatal
        if self.closed or self.abandoned:
            raise Conflict(f"disk {self.disk_id!r} is closed")

    def threads_alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def resolve_locked(self, lo: int, hi: int) -> list[Piece]:
        """Pieces covering [lo, hi): pending overlay first, durable map under its gaps."""
        if not len(self.pending):
            return self.durable.lookup(lo, hi)
        out: list[Piece] = []
        for s, e, rec, delta in self.pending.lookup(lo, hi):
            if rec is None:
                out.extend(self.durable.lookup(s, e))
            else:
                out.append((s, e, rec, delta))
        return out

    def add_pending_locked(self, rec: LogRecord) -> None:
        """Make a record visible to reads before it is durable."""
        if rec.kind != RESIZE:
            self.pending.set(rec.offset, rec.offset + rec.length, rec, 0)
            return
        if rec.offset < self.size:
            # Until the shrink is durable the durable map still has the tail: mask it, so
            # a later grow reads zeros there.
            self.pending.set(rec.offset, self.size, rec, 0)
        self.size = rec.offset

    def apply_acked_locked(self, records: list[LogRecord]) -> None:
        """Move a stored segment's records from the pending overlay to the durable map."""
        for rec in records:
            self.durable_size = apply_record(self.durable, rec, self.durable_size)
            end = rec.offset + rec.length if rec.kind != RESIZE else FAR
            self.pending.remove_where(rec.offset, end, lambda r, rec=rec: r is rec)  # type: ignore[misc]
        for rec in records:
            rec.mem = None  # reads now go to the store


@dataclass(frozen=True)
class Context:
    """What every component of one open volume is built with: its live state, its store (the
    stack below, counted in `stats`), its settings and its clock; and its keys
    (blockstore/crypto/disk.py), `PLAIN` for a disk that is not encrypted."""

    state: VolumeState
    store: CountingStore
    stats: VolumeStats
    config: VolumeConfig
    clock: Clock
    keys: DiskKeys = PLAIN
    codec: int = 0  # a compressed disk's codec (blockstore/format/codec.py); 0: none
