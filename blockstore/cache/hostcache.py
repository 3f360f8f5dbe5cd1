"""The host cache: the layer between the NBD plugin and a `Volume`, in one of three modes.

Place in the stack (DESIGN.md): ``nbd_plugin/plugin.py -> HostCache -> Volume -> ObjectStore``.
One `HostCache` serves every NBD connection of one nbdkit process, so a flush on any connection
covers writes acknowledged on all of them (that is what lets the plugin advertise multi-conn).

This file is the facade: the modes, the checks every call makes, the lock-free hit path, the
write-through path and opening/closing. Its parts, like nbdkit's cache filter, one job each:

    settings.py   HostCacheConfig, HostCacheStats, VolumeLike (the layer below)
    blockmap.py   the cache file and its block states; eviction
    fill.py       read misses: fetch from the volume, install, serve
    writeback.py  readwrite: journal append, dirty limit, the uploader, flush
    journal.py    the journal's files, entries, CRCs, epoch file and replay rule

Modes and what an acknowledgement means
---------------------------------------
- ``none``: every read goes to the volume; a write returns once it is durable in the store
  (``volume.write(..., durable=True)``; the engine's group commit lets concurrent writers share
  one segment PUT). No local state at all.
- ``readonly``: reads are served from a local cache file, filled from the volume on a miss.
  Writes are made durable in the store first and then update the cache, so the cache never
  holds a byte the store does not.
- ``readwrite``: a write returns once it is in the cache file and appended to the local write
  journal. Flush (or FUA) uploads everything acknowledged before it, in journal order, and then
  calls ``volume.flush()``. A background uploader drains the journal in the same order, so the
  store only ever holds a prefix of the writes (never a later write without an earlier one).

Failure guarantees
------------------
- A crash of the process (``kill -9``) loses nothing acknowledged: the journal is in the page
  cache, which outlives the process. `HostCache.__init__` replays a journal it finds to the
  volume and flushes it *before* anything is served, whatever the mode (a disk can be re-opened
  in another mode after a crash), if its epoch still held the log; a fenced epoch's journal is
  discarded and counted (``journal_discarded``): those are the writes after the last flush
  that readwrite may lose when the disk changes owner (cache/journal.py).
- Fenced (``fence()``, or a ``Fenced`` from the volume): every later call fails with `Fenced`,
  reads included, since the cache may hold bytes older than the new owner's.
- Losing the host (the cache directory) in ``readwrite`` loses the writes after the last
  successful upload+flush; the store still holds a prefix of the writes.
- Store errors surface as the volume raises them (`Unavailable` after the bounded retry time of
  the store stack, `IntegrityError`, `Fenced`); nothing is reported as done that was not. In
  ``readwrite`` writes keep being accepted while the store is down until ``dirty_limit`` bytes are
  waiting (each cache block counted once however often it is rewritten) or the journal holds
  four times that; then a write waits ``write_wait_seconds`` for room and fails with
  `Unavailable`.
- Inside an NBD request every wait here (another read's fill, dirty room, the journal applier)
  also ends at the request's own deadline (blockstore/deadline.py), so ``write_wait_seconds``
  longer than the deadline has no effect on a request.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from blockstore.cache.blockmap import BlockMap
from blockstore.cache.fill import Filler
from blockstore.cache.journal import KIND_TRIM, KIND_WRITE, KIND_ZERO, apply, replay
from blockstore.cache.settings import HostCacheConfig, HostCacheStats, VolumeLike
from blockstore.cache.writeback import WriteBack
from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.engine.volume import SECTOR
from blockstore.errors import BlockstoreError, Fenced, InvalidArgument
from blockstore.store.base import Buffer

__all__ = ["HostCache", "HostCacheConfig", "HostCacheStats", "VolumeLike"]


class HostCache:
    """One volume as the NBD plugin sees it: reads, writes, trims, zeros, flush, extents."""

    def __init__(
        self,
        volume: VolumeLike,
        config: HostCacheConfig | None = None,
        directory: str | Path | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.volume = volume
        self.config = cfg = config or HostCacheConfig()
        self.mode = cfg.mode
        self.size = volume.size
        self.stats = HostCacheStats()
        self.dir = Path(directory) if directory is not None else None
        if self.dir is None and cfg.mode != "none":
            raise InvalidArgument(f"cache mode {cfg.mode} needs a cache directory")
        self._lock = threading.Lock()  # every block state change (cache/blockmap.py)
        self._closed = False
        self._fenced: Fenced | None = None  # set once: every later call fails with it
        self._writeback: WriteBack | None = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Acknowledged writes of a crashed process: into the store before anything else.
            done = replay(self.dir, volume)
            self.stats.replayed = done.replayed
            self.stats.journal_discarded = done.discarded
        if cfg.mode == "none":
            return
        assert self.dir is not None
        self._map = BlockMap(
            self.dir / "cache.img",
            self.size,
            cfg.block_size,
            cfg.cache_size // cfg.block_size,
            self.stats,
        )
        self._last_read_end = -1  # where the last read ended: the next one is sequential
        self._fill = Filler(volume, self._map, self._lock, self.stats, clock, cfg.readahead)
        if cfg.mode == "readwrite":
            self._writeback = WriteBack(
                volume,
                self._map,
                self.dir,
                threading.Condition(self._lock),
                self.stats,
                cfg,
                clock,
                on_fenced=self.fence,
            )

    # --- public operations ---------------------------------------------------------------------

    def pread(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill `buf` with the disk's bytes at `offset`."""
        n = len(buf)
        self._check(offset, n)
        if n == 0:
            return
        if self.mode == "none":
            self.volume.readinto(offset, memoryview(buf))
            return
        # The hit path takes no lock (cache/blockmap.py says why this is safe).
        m = self._map
        first = offset >> m.shift
        last = (offset + n - 1) >> m.shift
        seq = m.evict_seq
        hit = m.present[first] if first == last else 0 not in m.present[first : last + 1]
        if hit:
            view = m.view
            if view is not None:
                buf[:] = view[offset : offset + n]
            elif os.preadv(m.fd, (buf,), offset) != n:
                hit = False
            if hit and seq == m.evict_seq:
                m.ref[first] = 1
                self._last_read_end = offset + n
                self.stats.hits += 1
                return
        sequential = offset == self._last_read_end
        self._last_read_end = offset + n
        self._fill.read(buf, offset, sequential)

    def pwrite(self, data: Buffer, offset: int, *, fua: bool = False) -> None:
        """Write `data` at `offset`; with `fua`, return only once it is durable in the store."""
        self._write(KIND_WRITE, offset, len(data), data, fua)

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Discard a range: it reads as zeros afterwards."""
        self._write(KIND_TRIM, offset, length, None, fua)

    def zero(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Make a range read as zeros (always fast: no data is written)."""
        self._write(KIND_ZERO, offset, length, None, fua)

    def grow(self, new_size: int) -> None:
        """Grow the disk while it is served: the volume logs the new size and makes it durable
        before this returns; the cache file and its block maps grow with it. New connections
        see the new size (NBD gives a connection its size once, at the handshake)."""
        if new_size <= self.size:
            return
        self.volume.resize(new_size)
        self.volume.flush()
        with self._lock:
            if self.mode != "none":
                self._map.grow_locked(new_size)
            self.size = new_size

    def flush(self) -> None:
        """Return once every write acknowledged before the call is durable in the store."""
        if self._fenced is not None:
            raise self._fenced
        if self._writeback is not None:
            self._writeback.sync()
        else:
            self.volume.flush()

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering the range."""
        self._check(offset, length)
        if length == 0:
            return []
        # Holes are the volume's to tell, and it knows only the writes applied to it; when
        # those cannot be applied now, "data" is always a safe answer.
        if self._writeback is not None and not self._writeback.apply_all():
            return [(offset, length, False)]
        return self.volume.extents(offset, length)

    def fence(self, exc: Fenced) -> None:
        """A newer writer owns the disk: fail every later call, reads included (the cache may
        hold bytes the new owner has overwritten), and stop uploading."""
        self._fenced = exc
        if self._writeback is not None:
            self._writeback.fail(exc)

    @property
    def fenced(self) -> Fenced | None:
        return self._fenced

    @property
    def dirty_bytes(self) -> int:
        return self.stats.dirty_bytes

    def close(self) -> None:
        """Upload and flush what is dirty (best effort: a journal left behind is replayed at the
        next open), stop the uploader and close the files. Does not close the volume."""
        self._shut(upload=True)

    def abandon(self) -> None:
        """Stop without uploading anything, as a crash would (tests)."""
        self._shut(upload=False)

    def _shut(self, *, upload: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writeback is not None:
            self._writeback.stop()
            if upload:
                with contextlib.suppress(BlockstoreError):
                    self._writeback.sync()
            self._writeback.close()
        if self.mode != "none":
            self._map.close()

    # --- writes --------------------------------------------------------------------------------

    def _write(self, kind: int, offset: int, n: int, data: Buffer | None, fua: bool) -> None:
        self._check(offset, n)
        if n == 0:
            return
        if self._writeback is not None:
            self._writeback.write(kind, offset, n, data, fua)
        elif self.mode == "none":
            apply(self.volume, kind, offset, n, data, True)
        else:
            self._write_through(kind, offset, n, data)

    def _write_through(self, kind: int, offset: int, n: int, data: Buffer | None) -> None:
        """readonly: durable in the store, then the cache file is updated."""
        with self._lock:
            # New generations first, so that a fill already in flight cannot install old bytes.
            gens = self._map.new_generations_locked(offset, n)
        try:
            apply(self.volume, kind, offset, n, data, True)
        except BaseException:
            with self._lock:
                for b in gens:
                    self._map.drop_locked(b)
            raise
        with self._lock:
            self._map.write_through_locked(kind, offset, n, data, gens)

    def _check(self, offset: int, length: int) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._closed:
            raise InvalidArgument("host cache is closed")
        if (offset | length) & (SECTOR - 1):
            raise InvalidArgument(f"range {offset}+{length} is not in whole 512-byte sectors")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(f"range {offset}+{length} is outside the disk (size {self.size})")
