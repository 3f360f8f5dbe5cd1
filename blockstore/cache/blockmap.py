"""The cache file and its block map: which blocks the file holds, and eviction.

Place: under `cache/hostcache.py` (``readonly`` and ``readwrite``); `cache/fill.py` installs the
volume's bytes through it, the write paths record their writes in it. Like nbdkit's cache
filter's ``blk.c`` (block map and block I/O) and ``lru.c``/``reclaim.c`` (what to evict).

The cache file is a sparse file of the disk's size; the cache works in blocks of ``block_size``
bytes. Per block:

- *absent*: the file holds nothing we trust for it; reads fetch it from the volume.
- *present* (``present[b] == 1``): the file holds the current contents of the whole block.
- *partial* (``readwrite`` only; ``partial[b]`` is a list of byte intervals): the block is absent
  but writes made since it was last absent are in the file at those intervals. A fill writes the
  volume's bytes only into the gaps, so a fill can never overwrite a write.
- *dirty* (``dirty[b] > 0``): journal entries touching the block are not yet in the volume, so
  the block may not be evicted (the volume could not give the bytes back).

Invariants
- ``gen[b]`` changes on every write, trim, zero and eviction of the block. A fill notes the
  generations before it reads the volume and installs only blocks whose generation is unchanged
  when it is done: a fill never installs data that a write or eviction made stale meanwhile.
- Every method named ``*_locked`` runs under the host cache's lock, and every change of block
  state and every write into the file by a writer or a fill happens in one of them.
- The hot read path (`HostCache.pread`) takes no lock: it checks ``present`` and copies the
  bytes from the file's shared mapping (``view``) into the caller's buffer, then checks that
  no eviction ran meanwhile (``evict_seq``, raised *before* a hole is punched); if one did, it
  redoes the read locked. A copy from the mapping keeps the interpreter lock where a `preadv`
  gave it up and took it back, which at QD16 was a hand-over between nbdkit's threads per hit
  (docs/cache-measurements.md). The mapping is made for disks up to `MAP_MAX` (the address
  space is finite); a larger disk's hits use ``os.preadv``. The file only grows while it is
  mapped, so the mapping never reaches past its end. A write-back into blocks the file holds
  copies into the mapping too; into a hole it is an ``os.pwrite`` (a store into a mapped hole
  on a full file system is SIGBUS, not ENOSPC).
- Only clean blocks are evicted (second chance via ``ref``), when more than ``capacity`` blocks
  occupy the file. Eviction punches a hole in the file.
- The map lives in memory only: the file is emptied at open. A crash loses nothing: the file
  only ever holds bytes the volume or the write journal also holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections import OrderedDict
from pathlib import Path

from blockstore.cache.journal import KIND_WRITE
from blockstore.cache.settings import HostCacheStats
from blockstore.errors import IntegrityError
from blockstore.store.base import Buffer

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
MAP_MAX = 4 << 40  # disks up to this size map their cache file for the hit path


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) of the file read as zeros and free its space."""
    if length <= 0:
        return
    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (a regular file may take less than asked)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def merge_interval(ivs: list[tuple[int, int]], s: int, e: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping intervals after adding [s, e)."""
    out: list[tuple[int, int]] = []
    placed = False
    for a, b in ivs:
        if b < s:
            out.append((a, b))
        elif a > e:
            if not placed:
                out.append((s, e))
                placed = True
            out.append((a, b))
        else:
            s, e = min(a, s), max(b, e)
    if not placed:
        out.append((s, e))
    return out


class BlockMap:
    """The cache file of one disk and the state of each of its blocks (module docstring)."""

    def __init__(
        self, path: Path, size: int, block_size: int, capacity: int, stats: HostCacheStats
    ) -> None:
        self.bs = block_size
        self.shift = block_size.bit_length() - 1
        self.size = size
        self.nblocks = (size + block_size - 1) >> self.shift
        self.capacity = capacity  # blocks the file may hold
        self.stats = stats
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, size)
        self.present = bytearray(self.nblocks)
        self.ref = bytearray(self.nblocks)  # second chance for eviction, set by hits
        self.gen: dict[int, int] = {}
        self.dirty: dict[int, int] = {}
        self.partial: dict[int, list[tuple[int, int]]] = {}
        self.resident: OrderedDict[int, None] = OrderedDict()  # blocks holding file space
        self.evict_seq = 0
        self.view: memoryview | None = self._map(size)

    def _map(self, size: int) -> memoryview | None:
        """The whole file mapped shared, for the hit path; None past MAP_MAX."""
        if not 0 < size <= MAP_MAX:
            return None
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        return memoryview(mmap.mmap(self.fd, size, mmap.MAP_SHARED, prot))

    def close(self) -> None:
        # The mapping is left to the garbage collector: a hit still copying from it keeps it.
        self.view = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def grow_locked(self, new_size: int) -> None:
        os.ftruncate(self.fd, new_size)
        self.view = self._map(new_size)  # a hit in flight goes on with the old one
        nblocks = (new_size + self.bs - 1) >> self.shift
        # In place: the lock-free read path holds no reference it could lose.
        self.present.extend(bytes(nblocks - self.nblocks))
        self.ref.extend(bytes(nblocks - self.nblocks))
        self.nblocks = nblocks
        self.size = new_size

    def read_locked(self, buf: bytearray | memoryview, offset: int) -> None:
        if os.preadv(self.fd, (buf,), offset) != len(buf):
            raise IntegrityError("short read from the host cache file")

    # --- what a read needs -----------------------------------------------------------------

    def missing_locked(self, first: int, last: int, offset: int, n: int) -> list[int]:
        """Blocks of [first, last] a read of [offset, offset+n) has to fetch: absent, and not
        rewritten where asked (what lets readwrite read its own writes while the store is
        down)."""
        return [
            b
            for b in range(first, last + 1)
            if not self.present[b] and not self._covered_locked(b, offset, n)
        ]

    def _covered_locked(self, b: int, offset: int, n: int) -> bool:
        """Whether block `b`'s partial writes cover its part of [offset, offset+n)."""
        bstart = b << self.shift
        s = max(offset, bstart) - bstart
        e = min(offset + n, bstart + self.bs) - bstart
        return any(i0 <= s and e <= i1 for i0, i1 in self.partial.get(b, ()))

    def _gaps_locked(self, b: int, blen: int) -> list[tuple[int, int]]:
        """The parts of block `b` (relative, within blen) not covered by its partial writes."""
        ivs = self.partial.get(b)
        if not ivs:
            return [(0, blen)]
        out, cur = [], 0
        for s, e in ivs:
            if s > cur:
                out.append((cur, s))
            cur = max(cur, e)
        if cur < blen:
            out.append((cur, blen))
        return out

    def install_locked(self, start: int, tmp: memoryview, gens: dict[int, int]) -> set[int]:
        """Put fetched blocks into the file, except where it already knows better. Returns the
        blocks whose file bytes are now exactly the fetched ones (installed whole), which a
        read can then take from `tmp` instead of reading the file back.

        One `pwrite` per block: on this machine's kernel a 2 MiB pwrite into the file cost ten
        times the CPU per byte of 64 KiB ones (docs/performance.md)."""
        same: set[int] = set()
        for b, g in gens.items():
            if self.present[b] or self.gen.get(b, 0) != g:
                continue  # already filled, or a write/eviction made our copy stale
            rel = (b << self.shift) - start
            part = tmp[rel : rel + self.bs]
            if not part:
                continue
            if b in self.partial:  # only the gaps between writes the volume has not seen
                for g0, g1 in self._gaps_locked(b, len(part)):
                    _pwrite_all(self.fd, part[g0:g1], (b << self.shift) + g0)
                del self.partial[b]
            else:
                _pwrite_all(self.fd, part, b << self.shift)
                same.add(b)
            self.present[b] = 1
            self.resident[b] = None
            self.stats.fills += 1
        return same

    def serve_locked(
        self,
        buf: bytearray | memoryview,
        offset: int,
        tmp: memoryview | None,
        start: int,
        gens: dict[int, int],
        same: set[int],
    ) -> bool:
        """Copy the request out of the fetched bytes (blocks in `same`, which the file holds
        unchanged), the file (other present blocks) or both; False when a block is neither
        present nor fetched at its current generation."""
        n, shift, bs = len(buf), self.shift, self.bs
        first, last = offset >> shift, (offset + n - 1) >> shift
        if tmp is not None and all(b in same for b in range(first, last + 1)):
            buf[:] = tmp[offset - start : offset - start + n]
            return True
        if 0 not in self.present[first : last + 1]:
            self.read_locked(buf, offset)
            return True
        out = memoryview(buf)
        for b in range(first, last + 1):
            bstart = b << shift
            s = max(offset, bstart)
            e = min(offset + n, bstart + bs)
            dst = out[s - offset : e - offset]
            if self.present[b]:
                os.preadv(self.fd, (dst,), s)
                continue
            if tmp is None or gens.get(b) != self.gen.get(b, 0):
                return False
            dst[:] = tmp[s - start : e - start]
            for i0, i1 in self.partial.get(b, ()):  # writes the volume has not seen
                a, z = max(s, bstart + i0), min(e, bstart + i1)
                if a < z:
                    os.preadv(self.fd, (out[a - offset : z - offset],), a)
        return True

    # --- eviction --------------------------------------------------------------------------

    def make_room_locked(self) -> None:
        """Evict clean blocks, oldest first with a second chance, down to the capacity."""
        budget = 2 * len(self.resident)
        while len(self.resident) > self.capacity and budget > 0:
            budget -= 1
            b, _ = self.resident.popitem(last=False)
            if self.ref[b] or self.dirty.get(b):
                self.ref[b] = 0
                self.resident[b] = None
                continue
            self.present[b] = 0
            self.partial.pop(b, None)
            self.gen[b] = self.gen.get(b, 0) + 1
            self.evict_seq += 1  # before the punch: lock-free readers re-check this after
            punch_hole(self.fd, b << self.shift, self.bs)
            self.stats.evictions += 1

    def drop_locked(self, b: int) -> None:
        """Forget block `b` (it becomes absent) and make any fill in flight for it stale."""
        self.gen[b] = self.gen.get(b, 0) + 1
        if self.present[b]:
            self.present[b] = 0
            self.evict_seq += 1
            self.resident.pop(b, None)
            punch_hole(self.fd, b << self.shift, self.bs)

    # --- what the write paths need ---------------------------------------------------------

    def new_generations_locked(self, offset: int, n: int) -> dict[int, int]:
        """Bump the generation of every block of [offset, offset+n): a fill already in flight
        can then not install the bytes from before. Returns the new generations."""
        gens = {}
        for b in range(offset >> self.shift, ((offset + n - 1) >> self.shift) + 1):
            gens[b] = self.gen[b] = self.gen.get(b, 0) + 1
        return gens

    def write_through_locked(
        self, kind: int, offset: int, n: int, data: Buffer | None, gens: dict[int, int]
    ) -> None:
        """A write-through that the volume made durable: update the blocks the file holds (or
        that it covers whole); forget a block another write changed meanwhile, since which of
        the two landed last in the store is unknown."""
        for b, g in gens.items():
            bstart = b << self.shift
            s, e = max(offset, bstart), min(offset + n, bstart + self.bs)
            if self.gen[b] != g:
                self.drop_locked(b)
            elif self.present[b] or (kind == KIND_WRITE and e - s == self.bs):
                if kind == KIND_WRITE:
                    assert data is not None
                    os.pwrite(self.fd, memoryview(data)[s - offset : e - offset], s)
                else:
                    punch_hole(self.fd, s, e - s)
                if not self.present[b]:
                    self.present[b] = 1
                    self.resident[b] = None
        self.make_room_locked()

    def write_back_locked(self, offset: int, n: int, data: Buffer | None) -> None:
        """A write-back (readwrite) entering the file: its blocks turn dirty (and partial when
        absent) until the volume has the journal entry (`clean_locked`)."""
        view = self.view
        first, last = offset >> self.shift, (offset + n - 1) >> self.shift
        if data is not None and view is not None and 0 not in self.present[first : last + 1]:
            # Blocks the file holds already have their space: a copy into the mapping (under
            # the interpreter lock, as hits) cannot meet a full disk, which would be SIGBUS.
            view[offset : offset + n] = data
        elif data is not None:
            os.pwrite(self.fd, data, offset)  # a full disk is an error here, not a signal
        else:
            punch_hole(self.fd, offset, n)
        shift, bs = self.shift, self.bs
        for b in range(offset >> shift, ((offset + n - 1) >> shift) + 1):
            self.gen[b] = self.gen.get(b, 0) + 1
            self.dirty[b] = self.dirty.get(b, 0) + 1
            if self.present[b]:
                continue
            bstart = b << shift
            blen = min(bs, self.size - bstart)
            s, e = max(offset, bstart) - bstart, min(offset + n, bstart + bs) - bstart
            ivs = merge_interval(self.partial.get(b, []), s, e)
            if ivs[0] == (0, blen):
                self.partial.pop(b, None)
                self.present[b] = 1
            else:
                self.partial[b] = ivs
            self.resident[b] = None

    def clean_locked(self, offset: int, length: int) -> None:
        """One journal entry over [offset, offset+length) reached the volume."""
        for b in range(offset >> self.shift, ((offset + length - 1) >> self.shift) + 1):
            left = self.dirty[b] - 1
            if left:
                self.dirty[b] = left
            else:
                del self.dirty[b]
