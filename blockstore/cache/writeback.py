"""Write-back (``readwrite``): acknowledge from the cache file and the journal, upload later.

Place: called by `HostCache` for every write, trim, zero and flush in ``readwrite``; appends to
`cache/journal.py`, marks blocks dirty in `cache/blockmap.py`, applies entries to the volume.

States of a journal entry: *pending* (appended and acknowledged, not in the volume) ->
*unflushed* (applied to the volume, not yet durable) -> *durable* (a ``volume.flush()`` after
it returned; the entry's bytes leave the dirty count and the journal releases it). A block is
dirty while a pending entry touches it, and is then never evicted.

Invariants
- Entries are applied in journal order, one applier at a time (``_apply_lock``), so the store
  only ever holds a prefix of the writes (never a later write without an earlier one).
- The journal append and the cache file write of a request happen under the cache lock, so the
  file and the journal agree on the order of overlapping writes.
- Flush (or FUA) returns once every entry appended before it is durable. Rounds overlap: the
  apply step is serialised, the volume flush is not (see `WriteBack.sync`).
- Writes are accepted while the store is down until ``dirty_limit`` bytes are waiting; then a
  write waits ``write_wait_seconds`` (never past its request's deadline) and fails with
  `Unavailable`. The uploader retries with backoff for ever, so I/O resumes by itself.
- Once fenced (`fail`), every write and flush fails with `Fenced` and the uploader stops.

What a crash can lose: nothing acknowledged while the host survives (the journal is replayed at
the next open); losing the host loses the entries not yet durable.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

from blockstore import deadline as request_deadline
from blockstore.cache.blockmap import BlockMap
from blockstore.cache.journal import (
    KIND_WRITE,
    Journal,
    JournalEntry,
    apply,
    entry_cost,
    write_journal_epoch,
)
from blockstore.cache.settings import HostCacheConfig, HostCacheStats, VolumeLike
from blockstore.clock import Clock
from blockstore.errors import BlockstoreError, Fenced, Unavailable
from blockstore.store.base import Buffer

_IDLE_LOOK_SECONDS = 1.0  # how long the idle uploader keeps looking before it sleeps


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
        self._seq = 0  # last entry appended
        self._durable_seq = 0  # last entry known durable in the store
        self._pending: deque[JournalEntry] = deque()  # appended, not yet applied to the volume
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
        dcrc = zlib.crc32(data) if data is not None else 0
        cost = entry_cost(kind, n)
        self._reserve(cost)
        with self._cond:
            self._seq += 1
            try:
                entry = self._journal.append(kind, self._seq, offset, data, n, dcrc)
            except BaseException:
                self._seq -= 1
                self._stats.dirty_bytes -= cost
                raise
            self._blocks.write_back_locked(offset, n, data)
            self._pending.append(entry)
            if data is not None and self._held_bytes + n <= self._config.upload_memory:
                self._held[entry.seq] = bytes(data)  # nbdkit reuses its buffer after we return
                self._held_bytes += n
            # Wake the uploader only when it would not look by itself soon (see
            # `_upload_loop`): each wake-up cost the flush CPU (docs/cache-measurements.md).
            wake = self._stats.dirty_bytes >= self._config.dirty_limit // 2
            if len(self._pending) == 1:
                self._pending_since = time.monotonic()
                wake = wake or self.asleep
            if wake:
                self._cond.notify_all()
            self._blocks.make_room_locked()
        if fua:
            self.sync()

    def _reserve(self, cost: int) -> None:
        """Wait for room under the dirty limit (bounded), then count `cost` as dirty."""
        limit = self._config.dirty_limit
        stats = self._stats
        with self._cond:
            if self.error is not None:
                raise self.error
            if stats.dirty_bytes and stats.dirty_bytes + cost > limit:
                stats.write_waits += 1
                self._room_waiters += 1
                self._cond.notify_all()  # the uploader: send now
                try:
                    self._wait_for_room_locked(cost)
                finally:
                    self._room_waiters -= 1
            stats.dirty_bytes += cost

    def _wait_for_room_locked(self, cost: int) -> None:
        cfg, stats = self._config, self._stats
        deadline = self._clock.monotonic() + cfg.write_wait_seconds
        left = request_deadline.remaining(self._clock)
        if left is not None:  # and never past the request's own deadline
            deadline = min(deadline, self._clock.monotonic() + left)
        while stats.dirty_bytes and stats.dirty_bytes + cost > cfg.dirty_limit:
            left = deadline - self._clock.monotonic()
            if self.error is not None:
                raise self.error
            if left <= 0:
                raise Unavailable(
                    f"host cache dirty limit ({cfg.dirty_limit} bytes) reached and the store "
                    "did not take the data in time (write-wait "
                    f"{cfg.write_wait_seconds:g} s or the request's deadline)"
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
        """Apply pending entries up to `target` to the volume, in order (holding _apply_lock)."""
        while True:
            with self._cond:
                if not self._pending or self._pending[0].seq > target:
                    return
                entry = self._pending[0]
            data = None
            if entry.kind == KIND_WRITE:
                data = self._held.get(entry.seq) or self._journal.read(entry)
            # Re-applying an entry after a failure is harmless: the same bytes land again.
            apply(self._volume, entry.kind, entry.offset, entry.length, data, False)
            with self._cond:
                if self._held.pop(entry.seq, None) is not None:
                    self._held_bytes -= entry.length
                self._pending.popleft()
                self._unflushed.append(entry)
                self._blocks.clean_locked(entry.offset, entry.length)
                self._stats.uploads += 1

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
                freed = 0
                while self._unflushed and self._unflushed[0].seq <= target:
                    freed += self._unflushed.popleft().cost
                self._durable_seq = target
                self._stats.dirty_bytes -= freed
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
        # Hold back a moment: a flush right after a write then uploads the write itself, in its
        # own thread (no hand-off to this one and back), and writes without flushes go up in
        # fewer, larger rounds. Dirty data past half the limit, or a writer waiting for room,
        # does not wait.
        while (
            self._pending
            and not self._stop.is_set()
            and self._stats.dirty_bytes < cfg.dirty_limit // 2
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
