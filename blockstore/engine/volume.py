"""The volume engine: a page blob as a log of immutable segments, with checkpoints, GC,
snapshots, clones and writer fencing.

Place in the stack: ``HostCache -> Volume -> ObjectStore`` (DESIGN.md). The NBD plugin and the
API reach a disk only through this class; it imports neither nbdkit nor a web framework.

State (all in memory, rebuilt from the store at open):

- the *durable map* (`ExtentMap`): for every byte, the newest copy acknowledged by the store;
  changed only by the committer, in segment seq order;
- the *pending overlay*: writes, trims and shrinks not yet acknowledged, pointing at their bytes
  in memory. Reads look here first, so every write is visible at once (read-your-writes);
- the *open batch* (records that will form the next segment), then *sealed* and *in-flight*
  batches. A committer thread seals the open batch when it reaches `segment_max_bytes`, or,
  once a PUT slot is free, when a durable write or flush waits (the waiting thread seals and
  sends it at once) or `commit_delay` after its first write (while every slot is busy, later
  writes keep joining it); PUTs run up to `max_inflight_segments` at a time, but are
  acknowledged strictly in seq order. Reads fetch
  each run of nearby pieces of one segment with one ranged GET, the GETs of a read in parallel.

Guarantees:

- `flush()` returns only when every write acknowledged before it is in a segment the store
  acknowledged, and so is every earlier segment; a `durable=True` write likewise for itself.
  Concurrent durable writers share one PUT while every PUT slot is busy.
- A crash at any instant loses nothing flushed: segments are immutable and created with
  If-None-Match, checkpoints are immutable, and opening replays the newest checkpoint plus the
  contiguous run of valid segments after it (docs/format.md walks through every crash point).
- Every byte fetched from the store is checked against its xxh3 chunk checksum; a mismatch
  raises `IntegrityError` and counts `checksum_failures`, it never returns wrong data.
- Exclusive writer: a writable open claims a new epoch (create-if-absent only), replays the log
  and then creates *fences* (empty segments) in batches of `FENCE_SPAN` positions, until every
  position from its first fence F to F + FENCE_SPAN - 1 is decided; it writes data after that,
  so it fences an old writer in bounded time whatever that writer's rate. There is one segment
  key per seq, created with If-None-Match, so an older writer's PUT at a position the new
  writer holds gets 412 and it raises `Fenced`; a write is acknowledged once its PUT (and every
  earlier one) succeeded, with no further request. Which objects count is decided by one rule,
  `blockstore/engine/fence.py`, for replay and fencing alike (docs/format.md has the argument).
- A writer whose own PUT left a torn (empty) object resumes in its own epoch past it, while no
  newer epoch is claimed (else it is `Fenced`); no acknowledged write is lost.
- A failed segment PUT is not retried in a loop here (`RetryingStore` below does bounded
  retries): the waiting flush/durable write gets the error, the batch stays queued and is
  re-sent on the next flush. Nothing is acknowledged that the store did not acknowledge.
  Inside an NBD request the request's own deadline rules instead (blockstore/deadline.py): a
  durable write or flush waits for its segments until that deadline and no longer, and a
  transient PUT failure re-sends the batch rather than failing a request whose deadline is
  still ahead.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from blockstore import deadline as request_deadline
from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.engine.extentmap import ExtentMap
from blockstore.engine.fence import FENCE_SPAN, FENCE_WINDOW, LogRule
from blockstore.errors import (
    BlockstoreError,
    Conflict,
    Fenced,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from blockstore.format import keys
from blockstore.format.segment import (
    RESIZE,
    TRIM,
    WRITE,
    Checkpoint,
    Record,
    SegmentHeader,
    decode_checkpoint,
    decode_segment_header,
    encode_checkpoint,
    encode_segment,
    n_chunks,
    segment_header_length,
    verify_chunks,
)
from blockstore.store.base import ObjectStore

SECTOR = 512
MAX_SIZE = 64 << 40  # 64 TiB, the largest disk we create or grow to
_FAR = 1 << 62  # "to the end of any disk" for clearing tails
_ZEROS = memoryview(bytes(1 << 20))
_READ_PARALLEL = 8  # ranged GETs of one read that may run at once
_COALESCE_GAP = 64 << 10  # pieces of one segment closer than this share a ranged GET
_REPLAY_AHEAD = 16  # segment headers fetched in parallel ahead of the one being replayed


@dataclass(frozen=True)
class VolumeConfig:
    segment_max_bytes: int = 4 << 20  # a batch closes at this size
    commit_delay: float = 0.0005  # group-commit window after the first write of a batch
    checksum_chunk: int = 4096  # data checksummed per chunk so a small read verifies little
    checkpoint_every_segments: int = 256  # at least this many segments between checkpoints
    checkpoint_extents_per_segment: int = 8  # ...and one per this many extents of the map
    checkpoint_max_segments: int = 2048  # ...stretched so far at most (replay reads each header)
    gc_live_threshold: float = 0.5  # segments under this live fraction are compacted
    # Segments smaller than this (and than a quarter of segment_max_bytes) are merged, their
    # live data rewritten in disk order, once together they make at least one segment this
    # big: small random writes otherwise leave a region spread over one object per write, and
    # a sequential read of it then costs one GET per write (measured: 0.03-0.06x of sequential
    # GETs). 0 disables merging.
    gc_merge_below_bytes: int = 1 << 20
    # ...and only once they are this old: data still being rewritten is mostly dead before
    # then (nothing to copy), and a burst of small writes is not slowed by GC re-reading it.
    gc_merge_min_age_seconds: float = 120.0
    gc_min_age_seconds: float = 300.0  # nothing is deleted until unreferenced this long
    max_inflight_segments: int = 4  # segment PUTs may be pipelined; acks stay in order
    gc_interval_seconds: float = 60.0  # background GC period in writable volumes; 0 disables
    header_read_bytes: int = 64 << 10  # first ranged GET of a segment header at replay

    def __post_init__(self) -> None:
        if self.segment_max_bytes < SECTOR:
            raise InvalidArgument(f"segment_max_bytes {self.segment_max_bytes} is too small")
        if self.checksum_chunk < SECTOR or self.checksum_chunk % SECTOR:
            raise InvalidArgument(
                f"checksum_chunk {self.checksum_chunk} must be a positive multiple of 512"
            )
        if not 1 <= self.max_inflight_segments <= FENCE_WINDOW:
            raise InvalidArgument(
                f"max_inflight_segments {self.max_inflight_segments} must be 1..{FENCE_WINDOW}"
            )
        if self.gc_merge_min_age_seconds < 0:
            raise InvalidArgument(
                f"gc_merge_min_age_seconds {self.gc_merge_min_age_seconds} must be >= 0"
            )
        if self.checkpoint_every_segments < 1:
            raise InvalidArgument(f"checkpoint_every_segments {self.checkpoint_every_segments} < 1")
        if self.checkpoint_extents_per_segment < 1:
            raise InvalidArgument(
                f"checkpoint_extents_per_segment {self.checkpoint_extents_per_segment} < 1"
            )


@dataclass
class VolumeStats:
    """Counters of one open volume; /metrics and the bench read these, nobody re-counts."""

    writes: int = 0
    bytes_written: int = 0  # bytes the caller wrote (not counting trims)
    trims: int = 0
    reads: int = 0
    bytes_read: int = 0
    flushes: int = 0
    segments_written: int = 0
    segments_replayed: int = 0
    segments_void: int = 0  # stale segments of superseded writers, skipped (never applied)
    fences_written: int = 0
    log_resumes: int = 0  # times this writer took the log up again past its own torn PUT
    bytes_uploaded: int = 0  # every byte this volume PUT (segments, checkpoints, records)
    puts: int = 0
    gets: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0
    bytes_fetched: int = 0
    checksum_failures: int = 0
    checkpoints_written: int = 0
    commit_errors: int = 0
    gc_passes: int = 0
    gc_segments_compacted: int = 0
    gc_bytes_rewritten: int = 0
    gc_objects_deleted: int = 0
    gc_bytes_deleted: int = 0
    gc_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    disk_id: str
    size: int
    created: float  # unix time
    checkpoint_seq: int


@dataclass
class GcResult:
    segments_compacted: int = 0
    bytes_rewritten: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    objects_waiting: int = 0  # unreferenced but younger than gc_min_age_seconds


# --- helpers that read the store ---------------------------------------------------------


class _Io:
    """Store calls of one volume, counted in its stats."""

    def __init__(self, store: ObjectStore, stats: VolumeStats) -> None:
        self.store = store
        self.stats = stats
        self.lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        data = self.store.get(key, start, length)
        with self.lock:
            self.stats.gets += 1
            self.stats.bytes_fetched += len(data)
        return data

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        n = self.store.get_into(key, start, buf)
        with self.lock:
            self.stats.gets += 1
            self.stats.bytes_fetched += n
        return n

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        with self.lock:
            self.stats.puts += 1
            self.stats.bytes_uploaded += len(data)
        self.store.put(key, data, if_none_match=if_none_match)

    def exists(self, key: str) -> bool:
        with self.lock:
            self.stats.heads += 1
        try:
            self.store.head(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str, start_after: str | None = None) -> list[tuple[str, int]]:
        with self.lock:
            self.stats.lists += 1
        return [(o.key, o.size) for o in self.store.list(prefix, start_after)]

    def delete(self, key: str) -> None:
        with self.lock:
            self.stats.deletes += 1
        self.store.delete(key)

    def json(self, key: str) -> dict[str, Any]:
        raw = self.get(key)
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise IntegrityError(f"{key}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise IntegrityError(f"{key}: expected a JSON object")
        return obj


def _check_size(name: str, size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidArgument(f"{name} {size!r} is not an integer")
    if size <= 0 or size % SECTOR or size > MAX_SIZE:
        raise InvalidArgument(
            f"{name} {size} must be a positive multiple of 512 no larger than {MAX_SIZE} (64 TiB)"
        )
    return size


def _snapshot_info(obj: dict[str, Any], key: str) -> SnapshotInfo:
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


def _read_snapshot(io: _Io, disk_id: str, name: str) -> SnapshotInfo:
    key = keys.snapshot_key(disk_id, name)
    try:
        obj = io.json(key)
    except NotFound:
        raise NotFound(f"disk {disk_id!r} has no snapshot {name!r}") from None
    return _snapshot_info(obj, key)


def _read_meta(io: _Io, disk_id: str) -> dict[str, Any]:
    try:
        return io.json(keys.volume_key(disk_id))
    except NotFound:
        raise NotFound(f"disk {disk_id!r} does not exist") from None


def _read_checkpoint(io: _Io, key: str) -> Checkpoint:
    return decode_checkpoint(io.get(key), key)


def _top_epoch(io: _Io, disk_id: str) -> int:
    """The highest claimed epoch, or 0."""
    top = 0
    for key, _size in io.list(keys.epoch_prefix(disk_id)):
        e = keys.parse_epoch_key(key)
        if e is not None:
            top = max(top, e)
    return top


def _read_header_bytes(io: _Io, key: str, header_read: int) -> bytes:
    """The first bytes of segment `key`, at least its whole header (one ranged GET, two when
    the header is longer than `header_read`)."""
    head = io.get(key, 0, header_read)
    need = segment_header_length(head, key)
    if need > len(head):
        head += io.get(key, len(head), need - len(head))
    return head


def _read_header(io: _Io, key: str, header_read: int, size: int | None = None) -> SegmentHeader:
    """The verified header of segment `key`."""
    return decode_segment_header(_read_header_bytes(io, key, header_read), key, size)


@dataclass
class _State:
    durable: ExtentMap[Record]
    size: int
    seq: int  # last log position judged (applied or void; 0: none of this disk's own)
    ckpt_seq: int  # newest checkpoint seq, -1 when there is none
    ckpt_refs: set[str]
    segments: dict[str, int]  # segment key -> data bytes, for every segment the map may name
    rule: LogRule = field(default_factory=LogRule)  # log epoch, fences, broken run
    # A writer's open: the epoch that held the log just before this writer's first fence took
    # it (0: none). A write journal of that epoch may still be made durable; any other is stale.
    prior_epoch: int = 0

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
            self.size = _apply(self.durable, rec, self.size)
        if hdr.data_len:
            self.segments[keys.segment_key(disk_id, self.seq)] = hdr.data_len
        stats.segments_replayed += 1


def _state_from_checkpoint(ck: Checkpoint) -> _State:
    return _State(
        ExtentMap.from_sorted(ck.starts, ck.ends, ck.vals),
        ck.size,
        ck.seq,
        ck.seq,
        set(ck.segments),
        dict(ck.segments),
        LogRule(ck.epoch, list(ck.fences)),
    )


def _load_state(io: _Io, disk_id: str, meta: dict[str, Any], header_read: int) -> _State:
    """Newest checkpoint (or the clone source's, or empty) plus replay of the segments after
    it, up to the first missing seq (nothing after a gap was ever acknowledged)."""
    ckpts = [
        p[1]
        for k, _s in io.list(keys.checkpoint_prefix(disk_id))
        if (p := keys.parse_checkpoint_key(k)) is not None
    ]
    if ckpts:
        base_seq = max(ckpts)
        ck = _read_checkpoint(io, keys.checkpoint_key(disk_id, base_seq))
        if ck.disk_id != disk_id or ck.seq != base_seq:
            raise IntegrityError(
                f"checkpoint {base_seq:016x} of {disk_id} names {ck.disk_id}/{ck.seq}"
            )
        state = _state_from_checkpoint(ck)
    else:
        base_seq = 0
        durable: ExtentMap[Record] = ExtentMap()
        segments: dict[str, int] = {}
        source = meta.get("source")
        if source:
            # The source's map; its fences and epochs belong to the source's log, not ours.
            ck = _read_checkpoint(io, str(source["checkpoint_key"]))
            durable = ExtentMap.from_sorted(ck.starts, ck.ends, ck.vals)
            segments = dict(ck.segments)
        state = _State(durable, int(meta["size"]), 0, -1, set(), segments)
    return _replay_listed(io, disk_id, state, header_read)


def _replay_listed(io: _Io, disk_id: str, state: _State, header_read: int) -> _State:
    """List the segments after `state.seq` and replay them up to the first missing one."""
    present = dict(io.list(keys.segment_prefix(disk_id), keys.segment_key(disk_id, state.seq)))
    if keys.segment_key(disk_id, state.seq + 1) not in present:
        return state
    pool = ThreadPoolExecutor(_REPLAY_AHEAD, thread_name_prefix=f"replay-{disk_id}")
    try:
        return _replay(io, disk_id, state, present, header_read, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _replay(
    io: _Io,
    disk_id: str,
    state: _State,
    present: dict[str, int],
    header_read: int,
    pool: ThreadPoolExecutor,
) -> _State:
    """Judge the segments after the checkpoint, in log order, up to the first missing one.
    Their headers are fetched `_REPLAY_AHEAD` at a time ahead of the one being judged: one GET
    after another took 0.8 ms per segment (2,008 segments: 1.6 s, now 0.65 s), and bounded how
    rarely a checkpoint may be written."""
    ahead: dict[int, Future[SegmentHeader | None]] = {}
    next_fetch = state.seq + 1  # the first seq not asked for yet

    def fetch(seq: int) -> SegmentHeader | None:
        """The header at `seq`; None for a torn (empty) object."""
        key = keys.segment_key(disk_id, seq)
        if present[key] == 0:
            return None
        hdr = _read_header(io, key, header_read, present[key])
        if hdr.seq != seq or hdr.disk_id != disk_id:
            raise IntegrityError(f"segment {key}: header names {hdr.disk_id}/{hdr.seq}")
        return hdr

    while keys.segment_key(disk_id, state.seq + 1) in present:
        seq = state.seq + 1
        while next_fetch < seq + _REPLAY_AHEAD and keys.segment_key(disk_id, next_fetch) in present:
            ahead[next_fetch] = pool.submit(fetch, next_fetch)
            next_fetch += 1
        hdr = ahead.pop(seq).result()
        with io.lock:
            state.replay(hdr, io.stats, disk_id)
    return state


def _apply(durable: ExtentMap[Record], rec: Record, size: int) -> int:
    """Apply one acknowledged record to the durable map; returns the size after it."""
    if rec.kind == WRITE:
        durable.set(rec.offset, rec.offset + rec.length, rec, 0)
    elif rec.kind == TRIM:
        durable.clear(rec.offset, rec.offset + rec.length)
    elif rec.kind == RESIZE:
        if rec.offset < size:
            durable.clear(rec.offset, _FAR)
        size = rec.offset
    return size


def _identity_list(
    starts: list[int], ends: list[int], vals: list[tuple[Record, int]]
) -> list[tuple[int, int, tuple[str, int]]]:
    """Extents with a location identity: byte x lives at (seg_key, base + x)."""
    return [
        (s, e, (rec.seg_key, rec.data_off + delta - s))
        for s, e, (rec, delta) in zip(starts, ends, vals, strict=True)
    ]


def _diff(
    a: list[tuple[int, int, tuple[str, int]]],
    b: list[tuple[int, int, tuple[str, int]]],
    limit: int,
) -> list[tuple[int, int]]:
    """Ranges of [0, limit) where map a and map b do not point at the same stored bytes."""
    points = {0, limit}
    for s, e, _ in a:
        points.update((min(s, limit), min(e, limit)))
    for s, e, _ in b:
        points.update((min(s, limit), min(e, limit)))
    cuts = sorted(points)
    out: list[tuple[int, int]] = []
    ia = ib = 0
    for p, q in itertools.pairwise(cuts):
        while ia < len(a) and a[ia][1] <= p:
            ia += 1
        while ib < len(b) and b[ib][1] <= p:
            ib += 1
        va = a[ia][2] if ia < len(a) and a[ia][0] <= p else None
        vb = b[ib][2] if ib < len(b) and b[ib][0] <= p else None
        if va != vb:
            if out and out[-1][1] == p:
                out[-1] = (out[-1][0], q)
            else:
                out.append((p, q))
    return out


def _take_position(
    io: _Io, disk_id: str, epoch: int, seq: int, config: VolumeConfig
) -> tuple[bool, SegmentHeader | None]:
    """PUT a fence of `epoch` at `seq` with If-None-Match. Returns (True, our fence's header)
    when the position is ours (also when an earlier attempt whose reply was lost stored it),
    else (False, the header of what holds it), or (False, None) for a torn (empty) object."""
    key = keys.segment_key(disk_id, seq)
    blob = encode_segment(key, disk_id, seq, epoch, config.checksum_chunk, [])
    try:
        io.put(key, blob, if_none_match=True)
        held = False
    except PreconditionFailed:
        held = True
    if held:
        head = io.get(key, 0, config.header_read_bytes)
        if not head:
            return False, None
        need = segment_header_length(head, key)
        if need > len(head):
            head += io.get(key, len(head), need - len(head))
        hdr = decode_segment_header(head, key)
        if hdr.seq != seq or hdr.disk_id != disk_id:
            raise IntegrityError(f"segment {key}: header names {hdr.disk_id}/{hdr.seq}")
        if hdr.epoch != epoch or hdr.records:
            return False, hdr
    with io.lock:
        io.stats.fences_written += 1
    return True, decode_segment_header(blob, key)


class _TornPosition(BlockstoreError):
    """Our own segment PUT left an empty (torn) object at its position."""


class _Batch:
    """Records that become one segment."""

    __slots__ = ("blob", "data_len", "first", "future", "n", "nbytes", "records", "seq")

    # `future` is the PUT in flight (None: not sent, or to be re-sent after an error).
    # `seq` is the log position; `n` the batch's ordinal in this handle, which waiters wait
    # for: a writer that resumes after its own torn PUT moves its batches to new positions.

    def __init__(self, seq: int, n: int, first: float) -> None:
        self.seq = seq
        self.n = n
        self.first = first
        self.records: list[Record] = []
        self.nbytes = 0
        self.data_len = 0
        self.blob: bytes | None = None
        self.future: Future[None] | None = None


# --- the volume --------------------------------------------------------------------------


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
        config: VolumeConfig | None = None,
        clock: Clock | None = None,
        source: tuple[str, str] | None = None,
    ) -> None:
        """Create an empty volume, or a clone of snapshot `source = (src_disk_id, name)`
        (size 0 means the snapshot's size; a larger size grows the clone); Conflict if the
        disk exists or has leftover objects."""
        clock = clock or SYSTEM_CLOCK
        keys.validate_disk_id(disk_id)
        io = _Io(store, VolumeStats())
        meta: dict[str, Any] = {"format": 1, "disk_id": disk_id, "created": clock.time()}
        if io.list(keys.disk_prefix(disk_id)):
            raise Conflict(f"disk {disk_id!r} already exists (or has objects left from a destroy)")
        registration: str | None = None
        if source is None:
            meta["size"] = _check_size("size", size)
            meta["source"] = None
        else:
            src, name = keys.validate_disk_id(source[0]), keys.validate_snapshot_name(source[1])
            snap = _read_snapshot(io, src, name)
            if size == 0:
                size = snap.size
            _check_size("size", size)
            if size < snap.size:
                raise InvalidArgument(
                    f"size {size} is smaller than snapshot {src}/{name} ({snap.size} bytes)"
                )
            # Register first, then re-check the snapshot: delete_snapshot writes its tombstone
            # first and then looks for clones, so of the two racing, at least one sees the other.
            registration = keys.clone_ref_key(src, name, disk_id)
            io.put(registration, disk_id.encode())
            if io.exists(keys.snapshot_deleting_key(src, name)) or not io.exists(
                keys.snapshot_key(src, name)
            ):
                io.delete(registration)
                raise Conflict(f"snapshot {src}/{name} is being deleted")
            meta["size"] = size
            meta["source"] = {
                "disk_id": src,
                "snapshot": name,
                "checkpoint_seq": snap.checkpoint_seq,
                "checkpoint_key": keys.checkpoint_key(src, snap.checkpoint_seq),
            }
        try:
            io.put(keys.volume_key(disk_id), json.dumps(meta).encode(), if_none_match=True)
        except PreconditionFailed:
            if registration is not None:
                io.delete(registration)
            raise Conflict(f"disk {disk_id!r} already exists") from None

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
        io = _Io(store, stats)
        meta = _read_meta(io, disk_id)
        if epoch is not None and not writable:
            raise InvalidArgument("a read-only open claims no writer epoch")
        epoch = cls._claim_epoch(io, disk_id, epoch) if writable else 0
        state = _load_state(io, disk_id, meta, config.header_read_bytes)
        if writable:
            if state.log_epoch > epoch:
                # A newer writer claimed after us and has already fenced: anything we wrote
                # from here on would come after its fence and be void.
                raise Fenced(
                    f"disk {disk_id!r}: a newer writer (epoch {state.log_epoch}) took the log "
                    f"while epoch {epoch} was opening"
                )
            cls._fence(io, disk_id, epoch, state, config)
        return cls(io, disk_id, meta, state, config, clock or SYSTEM_CLOCK, writable, epoch)

    @staticmethod
    def _fence(io: _Io, disk_id: str, epoch: int, state: _State, config: VolumeConfig) -> None:
        """Take the log over, in bounded time whatever an older writer's rate.

        Fences are PUT at FENCE_SPAN positions after the end of the log at once. When every
        position of a batch is decided (ours, or held by another object), the lowest one we
        hold, F, is our first fence; if an older writer filled the whole batch, the next batch
        follows. Every position of [F, F + FENCE_SPAN) is then decided too (fencing more if
        the batch ended sooner), and the positions up to F + FENCE_SPAN - 1 are judged, in
        order, by the one log rule (blockstore/engine/fence.py): below F an older writer's segments
        are replayed (it may have acknowledged them), above F they are void. Our data starts at
        F + FENCE_SPAN, beyond the reach of every older writer and opener (docs/format.md).
        Raises `Fenced` when a newer epoch's object is met anywhere."""
        # Catch up first with one LIST: an older writer that kept writing while we replayed
        # has segments we can read in parallel, which is cheaper than fencing over them.
        _replay_listed(io, disk_id, state, config.header_read_bytes)
        if state.log_epoch > epoch:
            raise Fenced(
                f"disk {disk_id!r}: a newer writer (epoch {state.log_epoch}) took the log "
                f"while epoch {epoch} was opening"
            )
        lo = state.seq + 1
        decided: dict[int, tuple[bool, SegmentHeader | None]] = {}
        todo = list(range(lo, lo + FENCE_SPAN))
        with ThreadPoolExecutor(FENCE_SPAN, thread_name_prefix=f"fence-{disk_id}") as pool:
            while todo:
                results = pool.map(lambda q: _take_position(io, disk_id, epoch, q, config), todo)
                for seq, got in zip(todo, results, strict=True):
                    decided[seq] = got
                    hdr = got[1]
                    if not got[0] and hdr is not None and hdr.epoch > epoch:
                        raise Fenced(
                            f"disk {disk_id!r}: a newer writer (epoch {hdr.epoch}) took the log "
                            f"while epoch {epoch} was opening"
                        )
                first = min((q for q, got in decided.items() if got[0]), default=None)
                if first is None:  # an older writer filled the whole batch: the next one
                    top = max(decided)
                    todo = list(range(top + 1, top + 1 + FENCE_SPAN))
                else:
                    todo = [q for q in range(lo, first + FENCE_SPAN) if q not in decided]
        assert first is not None
        with io.lock:
            for seq in range(lo, first + FENCE_SPAN):
                if seq == first:
                    state.prior_epoch = state.log_epoch
                state.replay(decided[seq][1], io.stats, disk_id)
        assert state.log_epoch == epoch and state.fences[-1] == first

    @staticmethod
    def _claim_epoch(io: _Io, disk_id: str, wanted: int | None = None) -> int:
        if wanted is not None:
            if not 1 <= wanted <= keys.MAX_EPOCH:
                raise InvalidArgument(f"writer epoch {wanted} is out of range")
            try:
                io.put(keys.epoch_key(disk_id, wanted), b"", if_none_match=True)
            except PreconditionFailed:
                raise Conflict(f"disk {disk_id!r}: writer epoch {wanted} is taken") from None
            top = _top_epoch(io, disk_id)
            if top > wanted:
                raise Fenced(
                    f"disk {disk_id!r}: epoch {top} was claimed before epoch {wanted} could "
                    "take the log"
                )
            return wanted
        epoch = _top_epoch(io, disk_id) + 1
        for _ in range(1000):
            if epoch > keys.MAX_EPOCH:
                break
            try:
                io.put(keys.epoch_key(disk_id, epoch), b"", if_none_match=True)
                return epoch
            except PreconditionFailed:
                epoch += 1  # another opener won this number
        raise Conflict(f"disk {disk_id!r}: could not claim a writer epoch")

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
        io = _Io(store, VolumeStats())
        meta = _read_meta(io, disk_id)
        info = _read_snapshot(io, disk_id, snapshot)
        ck = _read_checkpoint(io, keys.checkpoint_key(disk_id, info.checkpoint_seq))
        state = _state_from_checkpoint(ck)
        return cls(io, disk_id, meta, state, config, clock or SYSTEM_CLOCK, False, 0)

    @classmethod
    def destroy(cls, store: ObjectStore, disk_id: str) -> None:
        """Delete every object of the volume; Conflict while a clone depends on one of its
        snapshots. The volume record goes last, so an interrupted destroy can be re-run."""
        io = _Io(store, VolumeStats())
        objects = io.list(keys.disk_prefix(disk_id))
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
            meta = io.json(meta_key)
        except (NotFound, IntegrityError):
            meta = {}
        source = meta.get("source")
        if source:
            io.delete(keys.clone_ref_key(source["disk_id"], source["snapshot"], disk_id))
        for key, _size in objects:
            if key != meta_key:
                io.delete(key)
        io.delete(meta_key)

    # -- construction --

    def __init__(
        self,
        io: _Io,
        disk_id: str,
        meta: dict[str, Any],
        state: _State,
        config: VolumeConfig,
        clock: Clock,
        writable: bool,
        epoch: int,
    ) -> None:
        self._io = io
        self._store = io.store
        self.stats = io.stats
        self.disk_id = disk_id
        self._meta = meta
        self._config = config
        self._clock = clock
        self.writable = writable
        self._epoch = epoch
        # Reentrant: a future that is already done runs its callback (`_wake`) inside
        # add_done_callback, under this lock.
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._durable = state.durable
        self._pending: ExtentMap[Record] = ExtentMap()
        self._size = state.size
        self._durable_size = state.size
        self._acked_seq = state.seq
        self._next_seq = state.seq + 1
        self._acked_n = 0  # ordinal of the last acknowledged batch
        self._next_n = 1
        self._resume_at: int | None = None  # position of our own torn PUT, until resumed
        self._segments = state.segments
        self._segment_acked_at: dict[str, float] = {}  # segments this handle wrote (GC merge age)
        self._log_epoch = state.log_epoch
        self._prior_epoch = state.prior_epoch
        self._fences = state.fences  # never deleted by GC: they keep fenced writers fenced
        self._last_ckpt_seq = state.ckpt_seq
        self._last_ckpt_refs = state.ckpt_refs
        self._last_ckpt_size = state.size
        self._open: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._inflight: deque[_Batch] = deque()
        self._flush_target = 0
        self._flush_gen = 0
        self._error: BaseException | None = None
        self._error_gen = 0
        self._fatal: BlockstoreError | None = None
        self._stopping = False
        self._abandoned = False
        self._checkpoint_due = False
        self._ckpt_asked_seq = 0  # acked seq when the last checkpoint was asked for
        self._ack_waiters = 0  # threads in _await_locked's wait
        self._closed = False
        self._ckpt_lock = threading.Lock()
        self._gc_lock = threading.Lock()
        self._unref_since: dict[str, float] = {}
        self._snap_refs_cache: dict[str, set[str]] = {}
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None  # made at the first multi-GET read
        if writable:
            self._executor = ThreadPoolExecutor(
                config.max_inflight_segments, thread_name_prefix=f"seg-put-{disk_id}"
            )
            t = threading.Thread(target=self._committer, name=f"commit-{disk_id}", daemon=True)
            self._threads.append(t)
            t.start()
            if config.gc_interval_seconds > 0:
                g = threading.Thread(target=self._gc_loop, name=f"gc-{disk_id}", daemon=True)
                self._threads.append(g)
                g.start()

    # -- properties --

    @property
    def size(self) -> int:
        return self._size

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def prior_epoch(self) -> int:
        """The epoch that held the log until this writer took it (0: none, or read-only)."""
        return self._prior_epoch

    def newer_epoch(self) -> int | None:
        """The newest writer epoch claimed after this writer's, or None: one LIST. A newer claim
        means the control plane authorised another writer, whose fence will stop this one."""
        start = keys.epoch_key(self.disk_id, self._epoch)
        newer = [
            e
            for key, _size in self._io.list(keys.epoch_prefix(self.disk_id), start)
            if (e := keys.parse_epoch_key(key)) is not None and e > self._epoch
        ]
        return max(newer, default=None)

    @property
    def config(self) -> VolumeConfig:
        return self._config

    # -- validation --

    def _check_range(self, offset: int, length: int) -> None:
        for name, v in (("offset", offset), ("length", length)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidArgument(f"{name} {v!r} is not an integer")
            if v < 0 or v % SECTOR:
                raise InvalidArgument(f"{name} {v} must be a non-negative multiple of 512")
        size = self._size
        if offset + length > size:
            raise InvalidArgument(
                f"range offset {offset} length {length} goes past the end of the disk "
                f"({size} bytes)"
            )

    def _check_can_write_locked(self) -> None:
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only")
        if self._fatal is not None:
            raise self._fatal
        if self._closed or self._abandoned:
            raise Conflict(f"disk {self.disk_id!r} is closed")

    # -- reads --

    def _resolve_locked(self, lo: int, hi: int) -> list[tuple[int, int, Record | None, int]]:
        """Pieces covering [lo, hi): pending overlay first, durable map under its gaps."""
        if not len(self._pending):
            return self._durable.lookup(lo, hi)
        out: list[tuple[int, int, Record | None, int]] = []
        for s, e, rec, delta in self._pending.lookup(lo, hi):
            if rec is None:
                out.extend(self._durable.lookup(s, e))
            else:
                out.append((s, e, rec, delta))
        return out

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill `buf` with the bytes at `offset`; holes read as zeros."""
        buf = memoryview(buf)
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
        n = len(buf)
        self._check_range(offset, n)
        with self._lock:
            pieces = self._resolve_locked(offset, offset + n)
        stored: list[tuple[Record, int, memoryview]] = []
        for s, e, rec, delta in pieces:
            dst = buf[s - offset : e - offset]
            if rec is None or rec.kind != WRITE:
                _zero_fill(dst)
                continue
            mem = rec.mem  # read once: the committer drops it after the segment is acked
            if mem is not None:
                dst[:] = memoryview(mem)[delta : delta + (e - s)]
            else:
                stored.append((rec, delta, dst))
        if stored:
            self._fetch_all(stored)
        with self._io.lock:
            self.stats.reads += 1
            self.stats.bytes_read += n

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray(length)
        self.readinto(offset, memoryview(out))
        return bytes(out)

    def _fetch_all(self, pieces: list[tuple[Record, int, memoryview]]) -> None:
        """Fetch stored pieces: one ranged GET per run of pieces that lie close together in one
        segment (whole checksum chunks, so each piece verifies on its own), the GETs of one read
        in parallel; every piece verified before it is copied into the caller's buffer."""
        # (segment key, object start, object end, first chunk index, piece)
        spans = []
        for rec, delta, dst in pieces:
            chunk = rec.chunk
            c0 = delta // chunk
            lo = rec.data_off + c0 * chunk
            hi = rec.data_off + min(n_chunks(delta + len(dst), chunk) * chunk, rec.length)
            spans.append((rec.seg_key, lo, hi, c0, rec, delta, dst))
        spans.sort(key=lambda x: (x[0], x[1]))
        groups: list[list[tuple[str, int, int, int, Record, int, memoryview]]] = []
        for sp in spans:
            g = groups[-1] if groups else None
            if g is not None and g[0][0] == sp[0] and sp[1] <= max(x[2] for x in g) + _COALESCE_GAP:
                g.append(sp)
            else:
                groups.append([sp])
        if len(groups) == 1:
            self._fetch_group(groups[0])
            return
        pool = self._read_pool
        if pool is None:
            with self._lock:
                if self._read_pool is None:
                    self._read_pool = ThreadPoolExecutor(  # the caller fetches one group too
                        _READ_PARALLEL - 1, thread_name_prefix=f"seg-get-{self.disk_id}"
                    )
                pool = self._read_pool
        # Each GET carries the request's deadline along (blockstore/deadline.py): one queued
        # behind other reads' GETs starts no attempt past it.
        futures = [pool.submit(contextvars.copy_context().run, self._fetch_group, g)
                   for g in groups[1:]]  # fmt: skip
        try:
            self._fetch_group(groups[0])
        finally:
            for f in futures:
                f.exception()  # wait for all: none may write into the buffer after we return
        for f in futures:
            f.result()

    def _fetch_group(self, group: list[tuple[str, int, int, int, Record, int, memoryview]]) -> None:
        key = group[0][0]
        glo = group[0][1]
        ghi = max(x[2] for x in group)
        _k, lo, hi, c0, rec, delta, dst = group[0]
        # The GET is exactly the caller's piece (whole chunks, e.g. an aligned 1 MiB read):
        # the body lands in the caller's buffer and is verified there. On a mismatch the read
        # fails, so bad bytes in the buffer are never returned.
        direct = len(group) == 1 and delta == c0 * rec.chunk and len(dst) == hi - lo
        try:
            if direct:
                got = self._io.get_into(key, glo, dst)
                self._verify(rec, c0, dst[:got], hi - lo)
                return
            data = memoryview(self._io.get(key, glo, ghi - glo))
        except NotFound:
            raise IntegrityError(
                f"segment {key} named by the extent map is missing (removed by GC while "
                "this read-only view was open past gc_min_age_seconds, or lost)"
            ) from None
        for _key, lo, hi, c0, rec, delta, dst in group:
            part = data[lo - glo : hi - glo]
            self._verify(rec, c0, part, hi - lo)
            skip = delta - c0 * rec.chunk
            dst[:] = part[skip : skip + len(dst)]

    def _verify(self, rec: Record, first_chunk: int, data: bytes | memoryview, expect: int) -> None:
        bad = verify_chunks(rec, first_chunk, data) if len(data) == expect else -1
        if bad is not None:
            with self._io.lock:
                self.stats.checksum_failures += 1
            where = "object too short" if bad == -1 else f"record byte {bad}"
            raise IntegrityError(
                f"disk {self.disk_id}: checksum mismatch in {rec.seg_key} ({where}); "
                "refusing to return wrong data"
            )

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering exactly [offset, offset+length)."""
        self._check_range(offset, length)
        with self._lock:
            pieces = self._resolve_locked(offset, offset + length)
        out: list[tuple[int, int, bool]] = []
        for s, e, rec, _d in pieces:
            hole = rec is None or rec.kind != WRITE
            if out and out[-1][2] == hole and out[-1][0] + out[-1][1] == s:
                out[-1] = (out[-1][0], out[-1][1] + e - s, hole)
            else:
                out.append((s, e - s, hole))
        return out

    # -- writes --

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, durable: bool = False
    ) -> None:
        """Join the open batch (visible to reads at once); with durable=True, return only when
        the segment holding it and every earlier one are acknowledged by the store."""
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = len(mv)
        self._check_range(offset, n)
        if n == 0:
            return
        # Copy once: the caller (nbdkit) reuses its buffer after we return.
        payload = data if isinstance(data, bytes) else mv.tobytes()
        step = self._config.segment_max_bytes - self._config.segment_max_bytes % SECTOR
        with self._lock:
            self._check_can_write_locked()
            self._backpressure_locked()
            target = 0
            for pos in range(0, n, step):
                piece = payload[pos : pos + step] if n > step else payload
                rec = Record(WRITE, offset + pos, len(piece), mem=piece)
                target = self._append_locked(rec, wake=not durable)
            self.stats.writes += 1
            self.stats.bytes_written += n
        if durable:
            self._commit_through(target)

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None:
        """Make the range a hole (reads as zeros, stores nothing)."""
        self._check_range(offset, length)
        if length == 0:
            return
        with self._lock:
            self._check_can_write_locked()
            self._backpressure_locked()
            target = self._append_locked(Record(TRIM, offset, length), wake=not durable)
            self.stats.trims += 1
        if durable:
            self._commit_through(target)

    def zero(self, offset: int, length: int, *, durable: bool = False) -> None:
        """Same as trim: holes read as zeros."""
        self.trim(offset, length, durable=durable)

    def resize(self, new_size: int, *, allow_shrink: bool = False) -> None:
        """Grow (always) or shrink (only with allow_shrink; the tail is dropped). Recorded in
        the log, so it is ordered with the writes around it."""
        _check_size("new size", new_size)
        with self._lock:
            self._check_can_write_locked()
            if new_size == self._size:
                return
            if new_size < self._size and not allow_shrink:
                raise Conflict(
                    f"shrinking disk {self.disk_id!r} from {self._size} to {new_size} bytes "
                    "would drop data; pass allow_shrink=True to do it"
                )
            self._backpressure_locked()
            self._append_locked(Record(RESIZE, new_size, 0))

    def _append_locked(self, rec: Record, *, wake: bool = True) -> int:
        b = self._open
        if b is None:
            # The group-commit window is a latency knob timed by the real monotonic clock (a
            # condition wait cannot sleep on a fake clock); GC ages use the injected clock.
            b = self._open = _Batch(self._next_seq, self._next_n, time.monotonic())
            self._next_seq += 1
            self._next_n += 1
            if wake:  # start the commit-delay timer (a durable write asks for a PUT anyway)
                self._cv.notify_all()
        b.records.append(rec)
        end = rec.offset + rec.length
        if rec.kind == WRITE:
            self._pending.set(rec.offset, end, rec, 0)
            b.nbytes += rec.length + 25 + 8 * n_chunks(rec.length, self._config.checksum_chunk)
            b.data_len += rec.length
        elif rec.kind == TRIM:
            self._pending.set(rec.offset, end, rec, 0)
            b.nbytes += 17
        else:
            if rec.offset < self._size:
                # Until the shrink is durable the durable map still has the tail: mask it, so
                # a later grow reads zeros there.
                self._pending.set(rec.offset, self._size, rec, 0)
            self._size = rec.offset
            b.nbytes += 17
        if b.nbytes >= self._config.segment_max_bytes:
            self._seal_locked()
        return b.n

    def _seal_locked(self) -> None:
        b = self._open
        if b is not None:
            self._open = None
            self._sealed.append(b)
            self._cv.notify_all()

    def _backpressure_locked(self) -> None:
        """Bound memory: wait while too many batches are queued behind the store."""
        limit = 2 * self._config.max_inflight_segments
        if len(self._sealed) + len(self._inflight) < limit:
            return
        oldest = (self._inflight or self._sealed)[0].n
        target = oldest + len(self._sealed) + len(self._inflight) - limit
        self._await_locked(target, self._request_locked(target, own_put=False)[0])

    def _commit_through(self, target: int) -> None:
        """Block until batch `target` (an ordinal) and all before it are acknowledged (lock
        not held)."""
        with self._lock:
            my_gen, own = self._request_locked(target, own_put=True)
        if own is not None:
            self._put_own(own)
        with self._lock:
            if own is not None:
                self._ack_stored_locked()
            self._await_locked(target, my_gen)

    def _request_locked(self, target: int, *, own_put: bool) -> tuple[int, _Batch | None]:
        """Ask for everything through `target` to be stored. When a PUT slot is free the open
        batch is sent at once, by the asking thread itself if `own_put` (it returns the batch:
        the caller PUTs it without the lock, then acknowledges). Returns the request's
        generation, for `_await_locked`."""
        self._flush_gen += 1
        if target > self._flush_target:
            self._flush_target = target
        ob = self._open
        own = None
        if (
            ob is not None
            and ob.n <= target
            and self._error is None
            and self._fatal is None
            and self._resume_at is None
            and len(self._inflight) + len(self._sealed) < self._config.max_inflight_segments
        ):
            # Left to the committer, the batch would stay open until that thread got the GIL,
            # and the other writers of a QD4 stream would pile into it: one big PUT at a time
            # instead of several in parallel (measured: half the durable sequential
            # throughput). Sent by this thread, it also skips two thread hand-offs (to a PUT
            # thread, and back through the committer): about 0.2 ms of a 4 KiB durable write.
            self._seal_locked()
            if own_put and len(self._sealed) == 1:  # the batch just sealed, alone
                self._sealed.pop()
                ob.future = Future()
                ob.future.set_running_or_notify_cancel()
                self._inflight.append(ob)
                own = ob
            self._submit_locked()
        if own is None:
            self._cv.notify_all()  # the committer: a batch to seal or send
        return self._flush_gen, own

    def _put_own(self, b: _Batch) -> None:
        """PUT a batch in the calling thread; the outcome goes to its future, as from the pool."""
        assert b.future is not None
        try:
            self._put_batch(b)
        except BaseException as exc:  # the committer handles it as any failed PUT
            b.future.set_exception(exc)
        else:
            b.future.set_result(None)

    def _await_locked(self, target: int, my_gen: int) -> None:
        """Wait until segment `target` and all before it are acknowledged; raise the commit
        error of a request made at or after `my_gen`.

        Inside an NBD request (blockstore/deadline.py) the wait ends at the request's deadline,
        and a transient failure (`Unavailable`) of a PUT is not the request's while its deadline
        is ahead: it asks again, so the batch is re-sent. A PUT that began before the request
        (or before the store came back) cannot fail it; only its own deadline can."""
        while self._acked_n < target:
            if self._fatal is not None:
                raise self._fatal
            left = request_deadline.remaining(self._clock)
            err = self._error
            if err is not None and self._error_gen >= my_gen:
                if left is not None and left > 0 and isinstance(err, Unavailable):
                    my_gen = self._request_locked(target, own_put=False)[0]
                    continue
                if isinstance(err, BlockstoreError):
                    raise type(err)(f"disk {self.disk_id}: segment not stored: {err}") from err
                raise Unavailable(f"disk {self.disk_id}: segment not stored: {err!r}") from err
            if left is not None and left <= 0:
                last = f" (last error: {err})" if err is not None else ""
                raise Unavailable(
                    f"disk {self.disk_id}: batch {target} not stored by the request's "
                    f"deadline{last}"
                )
            if self._abandoned or (self._stopping and not self._threads_alive()):
                raise Conflict(f"disk {self.disk_id!r} is closed")
            self._ack_waiters += 1
            try:
                self._cv.wait(left)
            finally:
                self._ack_waiters -= 1

    def _threads_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def flush(self) -> None:
        """Return when every write acknowledged before this call is durable in the store."""
        if not self.writable:
            return
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            self.stats.flushes += 1
            target = self._next_n - 1
            if self._acked_n >= target:
                return
        self._commit_through(target)

    # -- the committer --

    def _committer(self) -> None:
        cfg = self._config
        while True:
            with self._lock:
                while True:
                    if self._abandoned:
                        return
                    ob = self._open
                    now = time.monotonic()
                    # While every PUT slot is busy the open batch stays open: writes arriving
                    # meanwhile join it, so under load segments grow instead of queueing as
                    # many small PUTs (it could not be sent any sooner anyway).
                    room = len(self._inflight) + len(self._sealed) < cfg.max_inflight_segments
                    if (
                        ob is not None
                        and (room or self._stopping)
                        and (
                            self._stopping
                            or self._flush_target >= ob.n
                            or now - ob.first >= cfg.commit_delay
                        )
                    ):
                        self._seal_locked()
                        ob = None
                    if self._error is not None and self._flush_gen > self._error_gen:
                        self._error = None  # someone asked again: retry the queued batches
                    if self._error is None and self._fatal is None:
                        self._submit_locked()
                    if self._ack_stored_locked():
                        continue  # slots freed: seal and submit again
                    running = any(
                        b.future is not None and not b.future.done() for b in self._inflight
                    )
                    resume = (
                        self._resume_at is not None
                        and self._error is None
                        and self._fatal is None
                        and not self._abandoned
                        and not running
                    )
                    if resume:
                        break  # every PUT has finished: take the log up again past the torn one
                    if self._checkpoint_due:
                        self._checkpoint_due = False
                        break
                    if self._stopping and not running:
                        idle = not self._inflight and not self._sealed and self._open is None
                        if idle or self._error is not None or self._fatal is not None:
                            self._cv.notify_all()
                            return
                    timeout = None
                    if ob is not None and room:
                        timeout = max(1e-4, cfg.commit_delay - (now - ob.first))
                    self._cv.wait(timeout)
            if resume:
                self._resume()
                continue
            try:
                self._write_checkpoint()
            except BlockstoreError:
                with self._io.lock:
                    self.stats.commit_errors += 1  # the next one will try again

    def _submit_locked(self) -> None:
        assert self._executor is not None
        if self._resume_at is not None:
            return  # nothing goes out until the batches have their new positions
        for b in self._inflight:
            if b.future is None:
                b.future = self._executor.submit(self._put_batch, b)
                b.future.add_done_callback(self._wake)
        while self._sealed and len(self._inflight) < self._config.max_inflight_segments:
            b = self._sealed.popleft()
            b.future = self._executor.submit(self._put_batch, b)
            b.future.add_done_callback(self._wake)
            self._inflight.append(b)

    def _wake(self, _f: object) -> None:
        with self._lock:
            self._cv.notify_all()

    def _set_error_locked(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._error_gen = self._flush_gen
            self.stats.commit_errors += 1
        self._cv.notify_all()

    def _resume(self) -> None:
        """Take the log up again, in our own epoch, after our own PUT at position t left a
        torn (empty) object, once every PUT in flight has finished.

        Nothing at or after t was acknowledged (acknowledgements are in order) and our PUTs
        reach at most t + FENCE_WINDOW - 1. We fence t+1 .. t+FENCE_WINDOW, so that every
        position up to the resume fence is decided (a late PUT of ours there gets 412), and
        the resume fence r is the first of those at or after t + FENCE_WINDOW that we hold:
        the log rule voids our objects in between and applies ours again from r. Every
        batch not acknowledged moves, in order, to r+1, r+2, ...

        Only while no newer epoch has been claimed: a writer that resumes must not take
        positions a newer writer is fencing for. When that cannot be proved (the LIST
        fails), or a newer epoch's object is met, this writer is `Fenced` for good."""
        with self._lock:
            t = self._resume_at
        if t is None:
            return
        cfg = self._config

        def fenced(why: str) -> None:
            with self._lock:
                if self._fatal is None:
                    self._fatal = Fenced(
                        f"disk {self.disk_id!r}: writer epoch {self._epoch} cannot resume "
                        f"past its torn segment at {t}: {why}"
                    )
                self._cv.notify_all()

        try:
            newer = self.newer_epoch()
        except BlockstoreError as exc:
            fenced(f"no proof that no newer writer was claimed ({exc})")
            return
        if newer is not None:
            fenced(f"epoch {newer} was claimed")
            return
        todo = list(range(t + 1, t + FENCE_WINDOW + 1))
        resume_at: int | None = None
        try:
            with ThreadPoolExecutor(len(todo), thread_name_prefix=f"resume-{self.disk_id}") as pool:
                while resume_at is None:
                    got = list(
                        pool.map(
                            lambda q: _take_position(self._io, self.disk_id, self._epoch, q, cfg),
                            todo,
                        )
                    )
                    for q, (ours, hdr) in zip(todo, got, strict=True):
                        if not ours and hdr is not None and hdr.epoch > self._epoch:
                            fenced(f"epoch {hdr.epoch} holds position {q}")
                            return
                        if not ours and hdr is not None and hdr.epoch < self._epoch:
                            raise IntegrityError(
                                f"disk {self.disk_id}: epoch {hdr.epoch} holds position {q}, "
                                f"inside epoch {self._epoch}'s data; refusing to resume"
                            )
                        if ours and q >= t + FENCE_WINDOW and resume_at is None:
                            resume_at = q
                    if todo[-1] >= t + 2 * FENCE_WINDOW:
                        # Our reach must stay inside a newer writer's fence span (FENCE_SPAN
                        # from its first fence, which is past t): give up rather than go on.
                        raise Unavailable(
                            f"disk {self.disk_id}: {FENCE_WINDOW} resume fences after position "
                            f"{t} were torn"
                        )
                    todo = [todo[-1] + 1]  # our resume fence was torn too: the next one
        except BlockstoreError as exc:
            with self._lock:
                self._set_error_locked(exc)  # the next flush tries again
            return
        with self._lock:
            if self._abandoned or self._fatal is not None:
                return
            batches = [*self._inflight, *self._sealed]
            if self._open is not None:
                batches.append(self._open)
            assert batches and batches[0].seq == t
            for i, b in enumerate(batches):
                b.seq = resume_at + 1 + i
                b.blob = None
                b.future = None
            self._next_seq = resume_at + 1 + len(batches)
            self._acked_seq = resume_at
            self._resume_at = None
            self.stats.log_resumes += 1
            self._cv.notify_all()

    def _put_batch(self, b: _Batch) -> None:
        key = keys.segment_key(self.disk_id, b.seq)
        if b.blob is None:
            b.blob = encode_segment(
                key, self.disk_id, b.seq, self._epoch, self._config.checksum_chunk, b.records
            )
        try:
            self._io.put(key, b.blob, if_none_match=True)
            return
        except PreconditionFailed:
            pass
        # Someone holds this position. A newer writer's fence: we are superseded. Our own
        # bytes: an earlier attempt whose reply was lost stored them. Nothing else can be there:
        # older writers' PUTs all fall inside our own fence window (FENCE_WINDOW).
        raw = self._io.get(key, 0, self._config.header_read_bytes)
        if not raw:
            raise _TornPosition(f"segment {key}: our PUT left an empty object there")
        need = segment_header_length(raw, key)
        if need > len(raw):
            raw += self._io.get(key, len(raw), need - len(raw))
        hdr = decode_segment_header(raw, key)
        if hdr.epoch > self._epoch:
            raise Fenced(
                f"disk {self.disk_id!r}: writer epoch {self._epoch} was superseded by epoch "
                f"{hdr.epoch}; this handle may not commit any more"
            )
        if raw[: hdr.data_start] != b.blob[: hdr.data_start]:
            raise IntegrityError(
                f"segment {key} holds epoch {hdr.epoch}'s segment, not ours (epoch "
                f"{self._epoch}); refusing to acknowledge"
            )

    def _ack_stored_locked(self) -> bool:
        """Acknowledge the stored batches at the head of the pipeline, in log order; True if
        any was. Called by the committer and by a writer that sent its own batch: whoever
        sees a PUT done first applies it, under the lock, exactly once."""
        if self._abandoned or self._fatal is not None:
            return False
        acked = False
        now = self._clock.monotonic()
        while self._inflight:
            b = self._inflight[0]
            f = b.future
            if f is None or not f.done():
                break
            exc = f.exception()
            if isinstance(exc, Fenced):
                self._fatal = exc  # never acknowledge anything again
                break
            if isinstance(exc, _TornPosition):
                # Our own PUT died mid-body and left an empty object: nothing from here on
                # can be acknowledged at these positions. The committer resumes the log past
                # them once every PUT in flight has finished (`_resume`).
                b.future = None
                self._resume_at = b.seq
                self._cv.notify_all()
                break
            if exc is not None:
                b.future = None
                self._set_error_locked(exc)
                break
            self._inflight.popleft()
            for rec in b.records:
                self._durable_size = _apply(self._durable, rec, self._durable_size)
                end = rec.offset + rec.length if rec.kind != RESIZE else _FAR
                self._pending.remove_where(rec.offset, end, lambda r, rec=rec: r is rec)  # type: ignore[misc]
            for rec in b.records:
                rec.mem = None  # reads now go to the store
            if b.data_len:
                key = keys.segment_key(self.disk_id, b.seq)
                self._segments[key] = b.data_len
                self._segment_acked_at[key] = now
            b.blob = None
            self._acked_seq = b.seq
            self._acked_n = b.n
            self.stats.segments_written += 1
            acked = True
        if acked:
            cfg = self._config
            # A checkpoint costs CPU and bytes in proportion to the map (about 1 us and 60
            # bytes per extent): a big map is checkpointed less often, so that its cost per
            # segment stays bounded. Every 256 segments, a 13,000-extent map cost a 4 KiB
            # durable write 70 us on average and made its p99.9 9-15 ms (the store's: 3.5).
            extents = len(self._durable) // cfg.checkpoint_extents_per_segment
            every = max(cfg.checkpoint_every_segments, min(cfg.checkpoint_max_segments, extents))
            if self._acked_seq - max(self._last_ckpt_seq, self._ckpt_asked_seq, 0) >= every:
                self._checkpoint_due = True  # written by the committer, off the write path
                self._ckpt_asked_seq = self._acked_seq
        if (
            self._ack_waiters
            or self._checkpoint_due
            or self._sealed
            or self._open is not None
            or self._stopping
            or self._error is not None
            or self._fatal is not None
        ):
            # Not waking the committer for nothing took the time after a durable 4 KiB
            # write's PUT from 36 to 24 us (in-process, median).
            self._cv.notify_all()
        return acked

    # -- checkpoints --

    def checkpoint(self) -> None:
        """Flush, then write the durable map as a checkpoint (if it changed)."""
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only")
        self.flush()
        self._write_checkpoint()

    def _write_checkpoint(self) -> tuple[int, set[str]]:
        """Checkpoint the durable map at the acknowledged seq; returns (seq, segments named)."""
        with self._ckpt_lock:
            with self._lock:
                seq = self._acked_seq
                if seq <= self._last_ckpt_seq:
                    return self._last_ckpt_seq, self._last_ckpt_refs
                starts, ends, vals = self._durable.copy().lists()
                size = self._durable_size
                sizes = dict(self._segments)
                fences = list(self._fences)
            refs = {rec.seg_key for rec, _d in vals}
            blob = encode_checkpoint(
                self.disk_id, seq, self._log_epoch, size, starts, ends, vals, sizes, fences
            )
            # A checkpoint already at this seq describes the same log prefix: same content.
            with contextlib.suppress(PreconditionFailed):
                self._io.put(keys.checkpoint_key(self.disk_id, seq), blob, if_none_match=True)
            with self._lock:
                self._last_ckpt_seq = seq
                self._last_ckpt_refs = refs
                self._last_ckpt_size = size
                # Forget sizes of segments nothing will name again (bounded memory).
                newer = keys.segment_key(self.disk_id, seq)
                self._segments = {k: v for k, v in self._segments.items() if k in refs or k > newer}
                born = self._segment_acked_at
                self._segment_acked_at = {k: t for k, t in born.items() if k in self._segments}
                self.stats.checkpoints_written += 1
            return seq, refs

    # -- snapshots and clones --

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Flush, checkpoint, and record an immutable snapshot pinning that checkpoint.

        A read-only open may take a snapshot too: of the state it replayed (the control plane
        flushes an attached disk through its export first, then opens it read-only). Its
        checkpoint at seq S describes the same log prefix the writer's would, and the writer's
        GC sees the new pin at its next pass, well inside `gc_min_age_seconds` of the open."""
        keys.validate_snapshot_name(name)
        key = keys.snapshot_key(self.disk_id, name)
        if self._io.exists(key):
            raise Conflict(f"disk {self.disk_id!r} already has a snapshot {name!r}")
        with self._gc_lock:  # our own GC must not retire the checkpoint before it is pinned
            self.flush()
            seq, _refs = self._write_checkpoint()
            info = SnapshotInfo(name, self.disk_id, self._last_ckpt_size, self._clock.time(), seq)
            body = json.dumps(
                {
                    "format": 1,
                    "name": name,
                    "disk_id": self.disk_id,
                    "size": info.size,
                    "created": info.created,
                    "checkpoint_seq": seq,
                    "checkpoint_key": keys.checkpoint_key(self.disk_id, seq),
                }
            ).encode()
            try:
                self._io.put(key, body, if_none_match=True)
            except PreconditionFailed:
                raise Conflict(f"disk {self.disk_id!r} already has a snapshot {name!r}") from None
        return info

    def list_snapshots(self) -> list[SnapshotInfo]:
        return list_snapshots(self._store, self.disk_id)

    def delete_snapshot(self, name: str) -> None:
        delete_snapshot(self._store, self.disk_id, name)

    def changed_ranges(self, since: str | None, until: str | None = None) -> list[tuple[int, int]]:
        """Ranges whose content may differ between snapshot `since` (None: the empty disk)
        and snapshot `until` (None: now), merged and sorted."""
        if since is None:
            a: list[tuple[int, int, tuple[str, int]]] = []
        else:
            ck = self._snapshot_checkpoint(since)
            a = _identity_list(ck.starts, ck.ends, ck.vals)
        if until is None:
            self.flush()
            with self._lock:
                starts, ends, vals = self._durable.copy().lists()
                limit = self._durable_size
            b = _identity_list(starts, ends, vals)
        else:
            ck = self._snapshot_checkpoint(until)
            b = _identity_list(ck.starts, ck.ends, ck.vals)
            limit = ck.size
        return _diff(a, b, limit)

    def _snapshot_checkpoint(self, name: str) -> Checkpoint:
        info = _read_snapshot(self._io, self.disk_id, name)
        return _read_checkpoint(self._io, keys.checkpoint_key(self.disk_id, info.checkpoint_seq))

    # -- space --

    def stored_bytes(self) -> int:
        """Bytes of every object under this disk (a clone's shared source data not counted)."""
        return sum(size for _k, size in self._io.list(keys.disk_prefix(self.disk_id)))

    def live_bytes(self) -> int:
        """Bytes of data the current durable map references."""
        with self._lock:
            return self._durable.mapped_bytes()

    # -- garbage collection --

    def _gc_loop(self) -> None:
        while not self._stop_event.wait(self._config.gc_interval_seconds):
            try:
                self.gc()
            except BlockstoreError:
                with self._io.lock:
                    self.stats.gc_errors += 1
                if self._fatal is not None:
                    return

    def gc(self) -> GcResult:
        """One GC pass: compact sparse segments, then delete what nothing can need any more."""
        if not self.writable:
            raise Conflict(f"disk {self.disk_id!r} is open read-only; only the writer runs GC")
        with self._gc_lock:
            result = GcResult()
            pinned_segs, pinned_ckpts = self._snapshot_pins()
            self._compact(pinned_segs, result)
            self.flush()
            ckpt_seq, ckpt_refs = self._write_checkpoint()
            self._delete_unreferenced(ckpt_seq, ckpt_refs, pinned_segs, pinned_ckpts, result)
            with self._io.lock:
                self.stats.gc_passes += 1
                self.stats.gc_segments_compacted += result.segments_compacted
                self.stats.gc_bytes_rewritten += result.bytes_rewritten
                self.stats.gc_objects_deleted += result.objects_deleted
                self.stats.gc_bytes_deleted += result.bytes_deleted
            return result

    def _snapshot_pins(self) -> tuple[set[str], set[int]]:
        """Segments and checkpoint seqs that this disk's snapshots hold."""
        segs: set[str] = set()
        ckpts: set[int] = set()
        for info in list_snapshots(self._store, self.disk_id):
            ckey = keys.checkpoint_key(self.disk_id, info.checkpoint_seq)
            ckpts.add(info.checkpoint_seq)
            refs = self._snap_refs_cache.get(ckey)
            if refs is None:
                refs = self._snap_refs_cache[ckey] = set(_read_checkpoint(self._io, ckey).segments)
            segs |= refs
        return segs, ckpts

    def _compact(self, pinned: set[str], result: GcResult) -> None:
        own = keys.segment_prefix(self.disk_id)
        threshold = self._config.gc_live_threshold
        with self._lock:
            live: dict[str, list[tuple[int, int, Record, int]]] = {}
            for s, e, rec, delta in self._durable:
                if rec.seg_key.startswith(own) and rec.seg_key not in pinned:
                    live.setdefault(rec.seg_key, []).append((s, e, rec, delta))
            # Merged output comes in segments of up to segment_max_bytes: only what is well
            # below that counts as small, or merged segments would be merged again forever.
            merge_below = min(
                self._config.gc_merge_below_bytes, self._config.segment_max_bytes // 4
            )
            young = self._clock.monotonic() - self._config.gc_merge_min_age_seconds
            candidates, small = [], []
            for key, pieces in live.items():
                total = self._segments.get(key, 0)
                used = sum(e - s for s, e, _r, _d in pieces)
                if total > 0 and used < threshold * total:
                    candidates.append((key, pieces))
                elif 0 < total < merge_below and self._segment_acked_at.get(key, young) <= young:
                    small.append((key, pieces, used))
            small_groups: list[tuple[str, list[tuple[int, int, Record, int]]]] = []
            if small and sum(used for _k, _p, used in small) >= merge_below:
                small_groups = [(key, pieces) for key, pieces, _used in small]
        # Rewritten in disk order, in batches of about one segment of live data: small
        # random writes leave a region spread over one object per write, and merging them
        # by age would spread it over one merged segment per batch (a 1 MiB read of a 64 MiB
        # area written so needed 11 GETs after GC; in disk order, one). Pieces go one by one
        # (a batch GETs only the part of a segment it needs), except those of a sparse
        # segment scattered over more of the disk than a segment holds: that one is a unit,
        # placed at its first piece, so that it is fetched once and not once per batch.
        limit = self._config.segment_max_bytes
        units = [[p] for _key, pieces in small_groups for p in pieces]
        for _key, pieces in candidates:  # a segment's pieces come in disk order
            if pieces[-1][1] - pieces[0][0] <= limit:
                units += [[p] for p in pieces]
            else:
                units.append(pieces)
        units.sort(key=lambda unit: unit[0][0])
        fetched: set[str] = set()
        batch: list[tuple[int, int, Record, int]] = []
        live_in_batch = 0
        for unit in units:
            batch += unit
            live_in_batch += sum(e - s for s, e, _r, _d in unit)
            if live_in_batch >= limit:
                self._rewrite(batch, fetched, result)
                batch, live_in_batch = [], 0
        if batch:
            self._rewrite(batch, fetched, result)
        result.segments_compacted += len(fetched)

    def _rewrite(
        self,
        batch: list[tuple[int, int, Record, int]],
        fetched: set[str],
        result: GcResult,
    ) -> None:
        """Copy the live pieces of a batch into the open batch, in disk order; runs of
        adjacent pieces become one record (one extent, however many writes made it)."""
        spans: dict[str, tuple[int, int]] = {}  # segment -> object range its pieces need
        for s, e, rec, delta in batch:
            lo = rec.data_off + delta - delta % rec.chunk
            hi = rec.data_off + min(n_chunks(delta + e - s, rec.chunk) * rec.chunk, rec.length)
            have = spans.get(rec.seg_key)
            spans[rec.seg_key] = (min(lo, have[0]), max(hi, have[1])) if have else (lo, hi)
        blobs: dict[str, tuple[int, bytes]] = {}
        for key, (lo, hi) in spans.items():
            with contextlib.suppress(NotFound):  # deleted by an earlier pass meanwhile
                blobs[key] = (lo, self._io.get(key, lo, hi - lo))
                fetched.add(key)
        step = self._config.segment_max_bytes - self._config.segment_max_bytes % SECTOR
        run_start, run_end = 0, 0
        parts: list[memoryview] = []
        rewritten = 0
        with self._lock:
            self._check_can_write_locked()

            def emit() -> None:
                if parts:
                    data = b"".join(parts)
                    self._append_locked(Record(WRITE, run_start, run_end - run_start, mem=data))
                    parts.clear()

            for s, e, rec, delta in sorted(batch, key=lambda p: p[0]):
                if rec.seg_key not in blobs:
                    continue
                base, blob = blobs[rec.seg_key]
                for ps, pe, prec, pdelta in self._resolve_locked(s, e):
                    # Only bytes still served from this very place are copied: anything
                    # written or trimmed since we looked wins.
                    if prec is not rec or pdelta != delta + (ps - s):
                        continue
                    c0 = pdelta // rec.chunk
                    lo = c0 * rec.chunk
                    hi = min(n_chunks(pdelta + pe - ps, rec.chunk) * rec.chunk, rec.length)
                    at = rec.data_off + lo - base
                    raw = memoryview(blob)[at : at + hi - lo]
                    self._verify(rec, c0, raw, hi - lo)
                    if ps != run_end or run_end - run_start + pe - ps > step:
                        emit()
                        run_start = ps
                    parts.append(raw[pdelta - lo : pdelta - lo + (pe - ps)])
                    run_end = pe
                    rewritten += pe - ps
            emit()
            self._backpressure_locked()
        result.bytes_rewritten += rewritten

    def _delete_unreferenced(
        self,
        ckpt_seq: int,
        ckpt_refs: set[str],
        pinned_segs: set[str],
        pinned_ckpts: set[int],
        result: GcResult,
    ) -> None:
        now = self._clock.time()
        min_age = self._config.gc_min_age_seconds
        with self._lock:
            live = {rec.seg_key for _s, _e, rec, _d in self._durable}
            fences = set(self._fences)
        keep = live | ckpt_refs | pinned_segs
        doomed: list[tuple[str, int]] = []
        seen: set[str] = set()
        candidates: list[tuple[str, int]] = []
        for key, size in self._io.list(keys.segment_prefix(self.disk_id)):
            p = keys.parse_segment_key(key)
            # Only at or below the newest checkpoint: replay never reads those, so deleting
            # them cannot open a gap in anyone's log.
            # Fences are never deleted: a fenced writer that is still running may retry a PUT
            # at that very position any time, and must keep getting 412 there.
            if p is None or p[1] > ckpt_seq or key in keep or p[1] in fences:
                continue
            candidates.append((key, size))
        for key, size in self._io.list(keys.checkpoint_prefix(self.disk_id)):
            c = keys.parse_checkpoint_key(key)
            if c is None or c[1] >= ckpt_seq or c[1] in pinned_ckpts:
                continue
            candidates.append((key, size))
        for key, size in candidates:
            seen.add(key)
            first = self._unref_since.setdefault(key, now)
            if now - first >= min_age:
                doomed.append((key, size))
            else:
                result.objects_waiting += 1
        self._unref_since = {k: v for k, v in self._unref_since.items() if k in seen}
        if not doomed:
            return
        # A superseded writer must not delete anything on the strength of a stale view.
        if self.newer_epoch() is not None:
            with self._lock:
                self._fatal = Fenced(
                    f"disk {self.disk_id!r}: writer epoch {self._epoch} superseded"
                )
                self._cv.notify_all()
            raise self._fatal
        for key, size in doomed:
            self._io.delete(key)
            self._unref_since.pop(key, None)
            self._snap_refs_cache.pop(key, None)
            result.objects_deleted += 1
            result.bytes_deleted += size

    # -- shutdown --

    def close(self) -> None:
        """Flush, checkpoint if useful, stop threads. Safe to call twice."""
        if self._closed:
            return
        try:
            if self.writable and self._fatal is None and not self._abandoned:
                self.flush()
                with self._lock:
                    useful = self._acked_seq > max(self._last_ckpt_seq, 0)
                if useful:
                    self._write_checkpoint()
        finally:
            self._stop(wait_puts=True)
            self._closed = True

    def abandon(self) -> None:
        """Crash tests: stop threads and drop everything unflushed, writing nothing more (PUTs
        already on the wire complete but are not acknowledged, as when a process dies)."""
        with self._lock:
            self._abandoned = True
            self._cv.notify_all()
        self._stop(wait_puts=True)
        self._closed = True

    def _stop(self, *, wait_puts: bool) -> None:
        with self._lock:
            self._stopping = True
            self._cv.notify_all()
        self._stop_event.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
        if self._executor is not None:
            self._executor.shutdown(wait=wait_puts, cancel_futures=True)
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
        with self._lock:
            self._cv.notify_all()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zero_fill(dst: memoryview) -> None:
    n = len(dst)
    pos = 0
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        dst[pos : pos + k] = _ZEROS[:k]
        pos += k


# --- snapshot records (also used by the control plane without opening the volume) -------


def list_snapshots(store: ObjectStore, disk_id: str) -> list[SnapshotInfo]:
    """Every snapshot of `disk_id`, by name."""
    io = _Io(store, VolumeStats())
    out = []
    for key, _size in io.list(keys.snapshot_prefix(disk_id)):
        if keys.parse_snapshot_key(key) is None:
            continue
        try:
            out.append(_snapshot_info(io.json(key), key))
        except NotFound:
            continue  # deleted between the listing and the read
    return sorted(out, key=lambda s: s.name)


def delete_snapshot(store: ObjectStore, disk_id: str, name: str) -> None:
    """Delete a snapshot record; Conflict while a clone depends on it. GC later reclaims what
    only it held."""
    io = _Io(store, VolumeStats())
    key = keys.snapshot_key(disk_id, name)
    if not io.exists(key):
        raise NotFound(f"disk {disk_id!r} has no snapshot {name!r}")
    tomb = keys.snapshot_deleting_key(disk_id, name)
    # Tombstone first, then look for clones: a clone registers first and then looks for the
    # tombstone, so a racing clone either sees the tombstone or is seen here.
    io.put(tomb, b"")
    clones = [k for k, _s in io.list(keys.clone_ref_prefix(disk_id, name))]
    if clones:
        io.delete(tomb)
        names = ", ".join(sorted(k.rsplit("/", 1)[-1] for k in clones))
        raise Conflict(f"snapshot {disk_id}/{name} is the source of clone(s) {names}")
    io.delete(key)
    io.delete(tomb)


def top_epoch(store: ObjectStore, disk_id: str) -> int:
    """The highest writer epoch claimed on the disk (0: none): the control plane issues the
    next one above both this and the last it recorded."""
    return _top_epoch(_Io(store, VolumeStats()), disk_id)
