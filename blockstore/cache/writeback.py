"""Write-back (``readwrite``): acknowledge from the cache file and the journal, upload later.

Place: called by `HostCache` for every write, trim, zero and flush in ``readwrite``; appends to
`cache/journal.py`, marks blocks dirty in `cache/blockmap.py`, applies entries to the volume.

States of a journal entry: *pending* (appended and acknowledged, not in the volume) ->
*unflushed* (applied to the volume, not yet durable) -> *durable* (a ``volume.flush()`` after
it returned; the entry's bytes leave the dirty count and the journal releases it). A block is
dirty while a pending entry touches it, and is then never evicted.

Two counts bound what waits: the *dirty bytes* (per cache block, the bytes its waiting writes
cover, at most the block: what a coalesced upload would send, so an area rewritten over and
over counts once) against ``dirty_limit``, and the *journal bytes* against four times it (disk
space and replay time).

Invariants
- Entries are applied in journal order, one applier at a time (``_apply_lock``), so the store
  only ever holds a prefix of the writes (never a later write without an earlier one). A round
  applied coalesced (cache/coalesce.py) is one segment, all or nothing, so it moves the store
  from one prefix to a later one in a single step.
- The journal append and the cache file write of a request happen under the cache lock, so the
  file and the journal agree on the order of overlapping writes.
- Flush (or FUA) returns once every entry appended before it is durable. Rounds overlap: the
  apply step is serialised, the volume flush is not (see `WriteBack.sync`).
- Writes are accepted while the store is down until either count reaches its limit; then a
  write waits ``write_wait_seconds`` (never past its request's deadline) and fails with
  `Unavailable`. The uploader retries with backoff for ever, so I/O resumes by itself.
- Once fenced (`fail`), every write and flush fails with `Fenced` and the uploader stops.

What a crash can lose: nothing acknowledged while the host survives (the journal is replayed at
the next open); losing the host loses the entries not yet durable.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from blockstore import deadline as request_deadline
from blockstore.cache.blockmap import BlockMap
from blockstore.cache.coalesce import Piece, group_prefix, small_prefix, surviving, write_bytes
from blockstore.cache.journal import (
    KIND_WRITE,
    Journal,
    JournalEntry,
    apply,
    data_check,
    entry_cost,
    write_journal_epoch,
)
from blockstore.cache.settings import HostCacheConfig, HostCacheStats, VolumeLike
from blockstore.clock import Clock
from blockstore.errors import BlockstoreError, Fenced, Unavailable
from blockstore.store.base import Buffer

_IDLE_LOOK_SECONDS = 1.0  # how long the idle uploader keeps looking before it sleeps
# Rounds smaller than this are not coalesced: they fit in a segment or two anyway, and the
# uploader shares the interpreter with the request path.
_COALESCE_FROM = 4 << 20
# Entries up to this many bytes together go to the volume as one segment (the volume's default
# segment size): a flush's worth of small writes is one PUT, not one per commit window.
_GROUP_BYTES = 4 << 20
_JOURNAL_LIMIT_FACTOR = 4  # the journal may hold this many times the dirty limit
# Only writes up to this size are also kept in memory for the uploader: for them a pread per
# entry was most of its cost, while a large one costs a copy either way, and a coalesced round
# reads back only the parts that survive it.
_HOLD_MAX = 128 << 10


class WriteBack:
    """The journal, the dirty count and the background uploader of one host cache."""

    def __init__(
        self,
        volume: VolumeLike,
        blocks: BlockMap,
        directory: Path,
        cond: threading.Condition,
        stats: HostCacheStats,
        config: HostCacheConfig,
        clock: Clock,
        on_fenced: Callable[[Fenced], None],
    ) -> None:
        self._volume = volume
        self._blocks = blocks
        self._cond = cond  # over the cache lock: pending entries or dirty room changed
        self._stats = stats
        self._config = config
        self._clock = clock
        self._on_fenced = on_fenced
        # One applier at a time keeps journal order; the volume flush after it runs outside, so
        # a flush that arrives while a round waits for the store joins it (see `sync`).
        self._apply_lock = threading.Lock()
        if volume.writable:  # a read-only view must not relabel a journal left here
            write_journal_epoch(directory, volume.epoch)
        self._journal = Journal(directory, config.journal_file_size)
        # Journal bytes not yet durable may reach this many: the dirty count no longer bounds
        # them once rewrites of one area count once (`_charge_locked`).
        self._journal_limit = _JOURNAL_LIMIT_FACTOR * config.dirty_limit
        self._covered: dict[int, int] = {}  # cache block -> bytes its waiting writes cover
        self._seq = 0  # last entry appended
        self._durable_seq = 0  # last entry known durable in the store
        self._pending: deque[JournalEntry] = deque()  # appended, not yet applied to the volume
        self._pending_bytes = 0  # the data of the pending writes (against `upload_batch`)
        # The bytes of pending writes, by seq, while they fit in `upload_memory`: the uploader
        # takes them from here instead of reading them back from the journal file.
        self._held: dict[int, bytes] = {}
        self._held_bytes = 0
        self._unflushed: deque[JournalEntry] = deque()  # applied, not yet durable
        self._stop = threading.Event()
        self.error: BlockstoreError | None = None  # fatal (fenced): everything fails
        self._room_waiters = 0  # writers waiting in _reserve for dirty room
        self._pending_since = 0.0  # when the oldest pending entry was appended
        self.asleep = False  # the uploader waits without a timeout: a write must wake it
        self._uploader = threading.Thread(
            target=self._upload_loop, name="hostcache-uploader", daemon=True
        )
        self._uploader.start()

    # --- requests ------------------------------------------------------------------------

    def write(self, kind: int, offset: int, n: int, data: Buffer | None, fua: bool) -> None:
        """Into the cache file and the journal; durable later (or now, with FUA)."""
        dcrc = data_check(data) if data is not None else 0
        jcost = entry_cost(kind, n)
        most = n if data is not None else 0  # the most this write can add to the dirty bytes
        self._reserve(most, jcost)
        stats = self._stats
        with self._cond:
            self._seq += 1
            try:
                entry = self._journal.append(kind, self._seq, offset, data, n, dcrc)
            except BaseException:
                self._seq -= 1
                stats.dirty_bytes -= most
                stats.journal_bytes -= jcost
                raise
            if data is not None:  # the reservation becomes what the write really adds
                stats.dirty_bytes += self._charge_locked(offset, n, 1) - most
            self._blocks.write_back_locked(offset, n, data)
            self._pending.append(entry)
            if data is not None:
                self._pending_bytes += n
            if (
                data is not None
                and n <= _HOLD_MAX
                and self._held_bytes + n <= self._config.upload_memory
            ):
                self._held[entry.seq] = bytes(data)  # nbdkit reuses its buffer after we return
                self._held_bytes += n
            # Wake the uploader only when it would not look by itself soon (see
            # `_upload_loop`): each wake-up cost the flush CPU (docs/cache-measurements.md).
            wake = self._over_half_locked() or self._batch_full_locked()
            if len(self._pending) == 1:
                self._pending_since = time.monotonic()
                wake = wake or self.asleep
            if wake:
                self._cond.notify_all()
            self._blocks.make_room_locked()
        if fua:
            self.sync()

    def _reserve(self, most: int, jcost: int) -> None:
        """Wait for room under the dirty and journal limits (bounded), then count the write
        as dirty (`most`, corrected once its blocks are known) and in the journal (`jcost`)."""
        stats = self._stats
        with self._cond:
            if self.error is not None:
                raise self.error
            if not self._room_locked(most, jcost):
                stats.write_waits += 1
                self._room_waiters += 1
                self._cond.notify_all()  # the uploader: send now
                try:
                    self._wait_for_room_locked(most, jcost)
                finally:
                    self._room_waiters -= 1
            stats.dirty_bytes += most
            stats.journal_bytes += jcost

    def _room_locked(self, most: int, jcost: int) -> bool:
        """Room for a write under both limits (one larger than a limit goes when it is alone)."""
        st, cfg = self._stats, self._config
        return (not st.dirty_bytes or st.dirty_bytes + most <= cfg.dirty_limit) and (
            not st.journal_bytes or st.journal_bytes + jcost <= self._journal_limit
        )

    def _over_half_locked(self) -> bool:
        """Past half of either limit: the uploader sends without waiting (`_upload_loop`)."""
        st = self._stats
        return (
            st.dirty_bytes >= self._config.dirty_limit // 2
            or st.journal_bytes >= self._journal_limit // 2
        )

    def _batch_full_locked(self) -> bool:
        """Pending writes hold `upload_batch` bytes: a segment's worth, sent without waiting
        for a flush or `upload_delay` (so a flush never waits for more than about that)."""
        return self._pending_bytes >= self._config.upload_batch

    def _charge_locked(self, offset: int, n: int, sign: int) -> int:
        """How the dirty bytes change when a write over [offset, offset+n) starts (sign 1) or
        stops (-1) waiting to be durable. Per cache block, the dirty bytes are the bytes its
        waiting writes cover, summed, but at most the block: an upper bound on what a coalesced
        upload sends (cache/coalesce.py), exact for writes that do not overlap, and a hot area
        rewritten over and over counts once. O(blocks touched), never per byte."""
        covered, shift, bs = self._covered, self._blocks.shift, self._blocks.bs
        end, delta = offset + n, 0
        for b in range(offset >> shift, ((end - 1) >> shift) + 1):
            lo = b << shift
            old = covered.get(b, 0)
            new = old + sign * (min(end, lo + bs) - max(offset, lo))
            delta += min(bs, new) - min(bs, old)
            if new:
                covered[b] = new
            else:
                del covered[b]
        return delta

    def _wait_for_room_locked(self, most: int, jcost: int) -> None:
        cfg = self._config
        deadline = self._clock.monotonic() + cfg.write_wait_seconds
        left = request_deadline.remaining(self._clock)
        if left is not None:  # and never past the request's own deadline
            deadline = min(deadline, self._clock.monotonic() + left)
        while not self._room_locked(most, jcost):
            left = deadline - self._clock.monotonic()
            if self.error is not None:
                raise self.error
            if left <= 0:
                full = (
                    f"dirty limit ({cfg.dirty_limit} bytes)"
                    if self._stats.dirty_bytes + most > cfg.dirty_limit
                    else f"journal limit ({self._journal_limit} bytes, 4x the dirty limit)"
                )
                raise Unavailable(
                    f"host cache {full} reached and the store did not take the data in time "
                    f"(write-wait {cfg.write_wait_seconds:g} s or the request's deadline)"
                )
            self._cond.wait(left)

    def apply_all(self) -> bool:
        """Apply every entry appended so far to the volume (not flushed), waiting for the
        applier no longer than the request's deadline; False when that could not be done."""
        left = request_deadline.remaining(self._clock)
        if not self._apply_lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            return False
        try:
            self._upload(self._seq)
        except BlockstoreError:
            return False
        finally:
            self._apply_lock.release()
        return True

    def fail(self, exc: BlockstoreError) -> None:
        """Fail every later write and flush with `exc`, and stop uploading."""
        with self._cond:
            self.error = exc
            self._cond.notify_all()

    # --- upload --------------------------------------------------------------------------

    def _upload(self, target: int) -> None:
        """Apply pending entries up to `target` to the volume, in order (holding _apply_lock).

        A round of at least `_COALESCE_FROM` bytes whose entries overwrite each other enough
        goes up as one segment holding only what survives (cache/coalesce.py); otherwise small
        entries go up together, up to `_GROUP_BYTES` in one segment, and an entry larger than
        that by itself, which the volume cuts into segments PUT in parallel. Either way the
        store holds a prefix of the writes at every instant. Re-applying entries after a
        failure is harmless: the same bytes land again."""
        with self._cond:
            run = list(itertools.takewhile(lambda e: e.seq <= target, self._pending))
        while run:
            k = len(run)
            if write_bytes(run) >= _COALESCE_FROM:
                k = group_prefix(run, self._config.upload_group_max)
                head = run[:k]
                raw = write_bytes(head)
                pieces, sent = surviving(head)
                if k > 1 and sent <= raw - raw // 8:
                    self._apply_group(head, pieces)
                    with self._cond:
                        self._stats.coalesced_bytes += raw - sent
                        self._applied_locked(head)
                    run = run[k:]
                    continue
            k = small_prefix(run[:k], _GROUP_BYTES)
            if k:
                head = run[:k]
                self._apply_group(head, [Piece(e, e.offset, e.offset + e.length) for e in head])
            else:
                k, entry = 1, run[0]
                data = None
                if entry.kind == KIND_WRITE:
                    data = self._held.get(entry.seq) or self._journal.read(entry)
                apply(self._volume, entry.kind, entry.offset, entry.length, data, False)
            with self._cond:
                self._applied_locked(run[:k])
            run = run[k:]

    def _apply_group(self, run: list[JournalEntry], pieces: list[Piece]) -> None:
        """Write the surviving pieces of `run` to the volume as one segment (atomic)."""
        records: list[tuple[int, int, bytes | memoryview | None]] = []
        for entry, start, end in pieces:
            if entry.kind != KIND_WRITE:
                records.append((start, end - start, None))
                continue
            skip, n = start - entry.offset, end - start
            held = self._held.get(entry.seq)
            if held is not None:
                records.append((start, n, memoryview(held)[skip : skip + n]))
            else:
                records.append((start, n, self._journal.read(entry, skip, n)))
        self._volume.write_group(records)

    def _applied_locked(self, entries: list[JournalEntry]) -> None:
        """`entries`, the head of the pending queue, are in the volume now."""
        for entry in entries:
            if self._held.pop(entry.seq, None) is not None:
                self._held_bytes -= entry.length
            self._pending.popleft()
            if entry.kind == KIND_WRITE:
                self._pending_bytes -= entry.length
            self._unflushed.append(entry)
            self._blocks.clean_locked(entry.offset, entry.length)
        self._stats.uploads += len(entries)

    def sync(self) -> None:
        """Make every entry appended so far durable: apply the ones not yet in the volume (in
        order), then volume.flush().

        Rounds overlap: the apply step is serialised, the volume flush is not. A flush that
        arrives while a round waits for its PUT applies only what that round did not cover
        (often nothing) and then waits in volume.flush(), which returns once every segment
        written before it is acknowledged: it joins the round in flight, and whatever it added
        goes out in the next segment at once (the volume pipelines PUTs), not after the round.
        Correct for any interleaving: volume.flush() covers every entry applied before it was
        called, and the bookkeeping below only ever moves forward."""
        if self.error is not None:
            raise self.error
        with self._cond:
            target = self._seq
            if self._durable_seq >= target:
                return
        # The uploader may hold the applier while it waits for the store: wait for it no longer
        # than this request's deadline (blockstore/deadline.py).
        left = request_deadline.check(self._clock, "flush")
        if not self._apply_lock.acquire(timeout=-1 if left is None else left):
            raise Unavailable("flush: the journal applier stayed busy past the request's deadline")
        try:
            self._upload(target)
        finally:
            self._apply_lock.release()
        self._volume.flush()
        with self._cond:
            if target > self._durable_seq:
                stats = self._stats
                while self._unflushed and self._unflushed[0].seq <= target:
                    entry = self._unflushed.popleft()
                    stats.journal_bytes -= entry.cost
                    if entry.kind == KIND_WRITE:
                        stats.dirty_bytes += self._charge_locked(entry.offset, entry.length, -1)
                self._durable_seq = target
                self._journal.release(target)
            self._stats.syncs += 1
            if self._room_waiters:
                self._cond.notify_all()  # writers waiting for dirty room

    def _upload_loop(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            with self._cond:
                self._wait_for_work_locked()
                if not self._pending:
                    continue
            if self._stop.is_set():
                return
            try:
                self.sync()
                delay = 0.05
            except Fenced as exc:
                self._on_fenced(exc)  # a newer writer owns the disk: stop for good
                return
            except BlockstoreError:
                self._stats.upload_errors += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self._config.upload_retry_max_delay)

    def _wait_for_work_locked(self) -> None:
        """Until there is something to upload and it is time to send it (or stop is asked)."""
        cfg = self._config
        # While writes keep coming, look every upload_delay instead of being woken by each
        # write that finds nothing pending: with a flush after every write (a database's
        # commits), that was a wake-up per write, and this thread took the GIL in the middle of
        # the write or the flush. After a second with nothing to do, sleep until a write wakes
        # us.
        idle_ticks = 0
        while not self._pending and not self._stop.is_set():
            if cfg.upload_delay > 0 and idle_ticks * cfg.upload_delay < _IDLE_LOOK_SECONDS:
                idle_ticks += 1
                self._cond.wait(cfg.upload_delay)
            else:
                self.asleep = True
                try:
                    self._cond.wait()
                finally:
                    self.asleep = False
        # Hold back: a flush then uploads the writes before it itself, in its own thread, in
        # one segment (one PUT per flush, not one per upload round between flushes; issue
        # #21), and writes without flushes go up in fewer, larger rounds, `upload_delay` after
        # the first. A segment's worth pending (`upload_batch`), dirty data past half the
        # limit, or a writer waiting for room does not wait.
        while (
            self._pending
            and not self._stop.is_set()
            and not self._over_half_locked()
            and not self._batch_full_locked()
            and not self._room_waiters
        ):
            left = cfg.upload_delay - (time.monotonic() - self._pending_since)
            if left <= 0:
                break
            self._cond.wait(left)

    # --- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the background uploader (what is pending stays in the journal)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._uploader.join()

    def close(self) -> None:
        self._journal.close()
