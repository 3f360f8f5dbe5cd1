"""Read misses: fetch absent blocks from the volume, install them, serve the read.

Place: called by `HostCache.pread` (``readonly`` and ``readwrite``) when the lock-free hit path
in `cache/hostcache.py` cannot serve a read; reads the volume, installs through `BlockMap`.

States of a fill: *planned* (under the lock: the blocks to fetch are marked as being filled,
each with an event, and their generations noted) -> *fetching* (no lock held: one volume read
of the whole run, read-ahead included) -> *installed* (under the lock: blocks whose generation
is unchanged go into the file; the read is served from the file and the fetched bytes) ->
*done* (the events are set, whatever happened).

Invariants
- A block is fetched by one fill at a time: a miss on a block another fill is fetching waits
  for that fill (at most `FILL_WAIT_SECONDS`, and never past its request's deadline), then
  looks again, instead of fetching the same bytes twice.
- A fill never installs a block a write or an eviction changed while it was fetching (its
  generation moved); the read then goes round again, at most 64 times.
- Read-ahead: a miss that continues the previous read carries on past the request, by up to
  ``readahead`` bytes, while blocks are absent and no other fill is fetching them.

Failure: a volume error ends the read with that error and the blocks stay absent; nothing is
written to the file, so a crash at any point loses nothing.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from blockstore import deadline as request_deadline
from blockstore.cache.blockmap import BlockMap
from blockstore.cache.settings import HostCacheStats, VolumeLike
from blockstore.clock import Clock
from blockstore.errors import Unavailable

FILL_WAIT_SECONDS = 5.0  # a miss waits this long at most for another fill, then looks again
_ATTEMPTS = 64
SCRATCH_MAX = 4 << 20  # fetches up to this size reuse their thread's buffer


class _Plan(NamedTuple):
    lo: int  # first block to fetch
    hi: int  # one past the last
    gens: dict[int, int]  # generation of each block when the fill was planned
    mine: dict[int, threading.Event]  # blocks this fill marked as being filled


class Filler:
    """The miss path of one host cache (module docstring)."""

    def __init__(
        self,
        volume: VolumeLike,
        blocks: BlockMap,
        lock: threading.Lock,
        stats: HostCacheStats,
        clock: Clock,
        readahead: int,
    ) -> None:
        self._volume = volume
        self._blocks = blocks
        self._lock = lock
        self._stats = stats
        self._clock = clock
        self._readahead = readahead
        # Blocks a fill is fetching now: a miss on one waits for that fill instead of fetching
        # the same bytes again (docs/cache-measurements.md).
        self._filling: dict[int, threading.Event] = {}
        self._local = threading.local()  # each nbdkit thread's fetch buffer (`_scratch`)

    def read(self, buf: bytearray | memoryview, offset: int, sequential: bool) -> None:
        """Serve a read the hit path could not; `sequential`: it continues the previous one."""
        shift = self._blocks.shift
        last = (offset + len(buf) - 1) >> shift
        for _attempt in range(_ATTEMPTS):
            with self._lock:
                plan = self._plan_locked(buf, offset, sequential)
            if plan is None:
                return  # served from the file
            if isinstance(plan, threading.Event):
                # Then look again: filled, or that fill failed. Never past this request's
                # deadline: the fill may have started long before it (blockstore/deadline.py).
                left = request_deadline.check(self._clock, "cache fill of another read")
                plan.wait(FILL_WAIT_SECONDS if left is None else min(FILL_WAIT_SECONDS, left))
                continue
            if self._fetch(buf, offset, last, plan):
                return
            # A write or an eviction raced with the fill on a block we still need: go again.
        raise Unavailable("cache blocks kept changing under a read; giving up")

    def _scratch(self, n: int) -> memoryview:
        """A buffer of `n` bytes for one fetch: this thread's own, reused while fetches fit in
        `SCRATCH_MAX` (a fresh bytearray is zeroed and faulted in page by page, which cost a
        cold sequential read as much CPU as the copy into the cache file)."""
        if n > SCRATCH_MAX:
            return memoryview(bytearray(n))
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._local.buf = bytearray(max(n, 2 << 20))
        return memoryview(buf)[:n]

    def _plan_locked(
        self, buf: bytearray | memoryview, offset: int, sequential: bool
    ) -> _Plan | threading.Event | None:
        """None: served from the file now. An event: another fill is fetching a block we
        need. A plan: the blocks this read fetches itself, marked as being filled."""
        m, n = self._blocks, len(buf)
        missing = m.missing_locked(offset >> m.shift, (offset + n - 1) >> m.shift, offset, n)
        if not missing:
            m.read_locked(buf, offset)
            return None
        busy = next((self._filling[b] for b in missing if b in self._filling), None)
        if busy is not None:
            return busy
        lo, hi = missing[0], missing[-1] + 1
        if sequential:
            limit = min(m.nblocks, hi + (self._readahead >> m.shift))
            while hi < limit and not m.present[hi] and hi not in self._filling:
                hi += 1
        gens = {b: m.gen.get(b, 0) for b in range(lo, hi)}
        mine = {b: threading.Event() for b in range(lo, hi) if b not in self._filling}
        self._filling.update(mine)
        return _Plan(lo, hi, gens, mine)

    def _fetch(self, buf: bytearray | memoryview, offset: int, last: int, plan: _Plan) -> bool:
        """Read the planned blocks from the volume, install them and serve the read; False
        when a block we need changed meanwhile."""
        m = self._blocks
        try:
            start = plan.lo << m.shift
            end = min(m.size, plan.hi << m.shift)
            tmp = self._scratch(end - start)
            self._volume.readinto(start, tmp)
            with self._lock:
                self._stats.misses += 1
                self._stats.readahead += max(0, plan.hi - last - 1)
                same = m.install_locked(start, tmp, plan.gens)
                served = m.serve_locked(buf, offset, tmp, start, plan.gens, same)
                m.make_room_locked()
                return served
        finally:
            with self._lock:
                for b, ev in plan.mine.items():
                    if self._filling.get(b) is ev:
                        del self._filling[b]
                    ev.set()
