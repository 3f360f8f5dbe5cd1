"""The host cache: the layer between the NBD plugin and a `Volume`, in one of three modes.

Place in the stack (DESIGN.md): ``nbd_plugin/plugin.py -> HostCache -> Volume -> ObjectStore``.
One `HostCache` serves every NBD connection of one nbdkit process, so a flush on any connection
covers writes acknowledged on all of them (that is what lets the plugin advertise multi-conn).

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
  in another mode after a crash). A torn record at the tail (the crash hit mid-append, so the
  write was never acknowledged) ends the replay; every record carries CRCs of header and data.
- A journal belongs to one writer epoch (the file ``journal.epoch``, written before any record).
  It is replayed only when that epoch is the one the new writer took the log from
  (``volume.prior_epoch``): nobody wrote the disk in between, so its records go on top of exactly
  the state they were acknowledged over. Any other journal was fenced (another host, or another
  export lifetime, wrote the disk since): replaying it would put old writes over newer ones, so
  it is discarded and counted (``journal_discarded``). Its writes were never durable: they are the
  writes after the last flush that readwrite may lose when the disk changes owner.
- Fenced (``fence()``, or a ``Fenced`` from the volume): every later call fails with `Fenced`,
  reads included, since the cache may hold bytes older than the new owner's.
- Losing the host (the cache directory) in ``readwrite`` loses the writes after the last
  successful upload+flush; the store still holds a prefix of the writes.
- Store errors surface as the volume raises them (`Unavailable` after the bounded retry time of
  the store stack, `IntegrityError`, `Fenced`); nothing is reported as done that was not. In
  ``readwrite`` writes keep being accepted while the store is down until ``dirty_limit`` bytes are
  waiting; then a write waits ``write_wait_seconds`` for room and fails with `Unavailable`.
- Inside an NBD request every wait here (another read's fill, dirty room, the journal applier)
  also ends at the request's own deadline (blockstore/deadline.py), so ``write_wait_seconds``
  longer than the deadline has no effect on a request.
  The uploader retries with backoff for ever, so I/O resumes by itself when the store returns.

Block states and invariants (``readonly`` and ``readwrite``)
-----------------------------------------------------------
The cache file is a sparse file of the disk's size; the cache works in blocks of
``block_size`` bytes. Per block, under ``_lock``:

- *absent*: the file holds nothing we trust for it; reads fetch it from the volume.
- *present* (``_present[b] == 1``): the file holds the current contents of the whole block.
- *partial* (``readwrite`` only; ``_partial[b]`` is a list of byte intervals): the block is absent
  but writes made since it was last absent are in the file at those intervals. A fill writes the
  volume's bytes only into the gaps, so a fill can never overwrite a write.
- *dirty* (``_dirty[b] > 0``): journal records touching the block are not yet in the volume, so
  the block may not be evicted (the volume could not give the bytes back).
- ``_gen[b]`` changes on every write, trim, zero and eviction of the block. A fill notes the
  generations before it reads the volume and installs only blocks whose generation is unchanged
  when it is done: a fill never installs data that a write or eviction made stale meanwhile.
- Every change of block state and every write into the file by a writer or a fill happens
  under ``_lock``; in ``readwrite`` the journal append happens under the same lock, so the file
  and the journal agree on the order of overlapping writes.
- The hot read path takes no lock: it checks ``_present`` and reads the file with one
  ``os.preadv`` into the caller's buffer, then checks that no eviction ran meanwhile
  (``_evict_seq``); if one did, it redoes the read on the locked path.
- Only clean blocks are evicted (second chance via ``_ref``), when more than
  ``cache_size // block_size`` blocks occupy the file. Eviction punches a hole in the file.
- The present map lives in memory only: at open the cache file is emptied (after any replay).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple, Protocol

from blockstore import deadline as request_deadline
from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import BlockstoreError, Fenced, IntegrityError, InvalidArgument, Unavailable

MODES = ("none", "readonly", "readwrite")
FILL_WAIT_SECONDS = 5.0  # a miss waits this long at most for another fill, then looks again
_IDLE_LOOK_SECONDS = 1.0  # readwrite: how long the idle uploader keeps looking before it sleeps
SECTOR = 512  # the volume's unit; NBD requests must be whole sectors

Buffer = bytes | bytearray | memoryview


class VolumeLike(Protocol):
    """What the cache needs of a `blockstore.engine.volume.Volume` (kept narrow on purpose)."""

    @property
    def size(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    @property
    def prior_epoch(self) -> int: ...

    @property
    def writable(self) -> bool: ...

    def readinto(self, offset: int, buf: memoryview) -> None: ...

    def write(self, offset: int, data: Buffer, *, durable: bool = False) -> None: ...

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None: ...

    def zero(self, offset: int, length: int, *, durable: bool = False) -> None: ...

    def resize(self, new_size: int, *, allow_shrink: bool = False) -> None: ...

    def flush(self) -> None: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]: ...


@dataclass(frozen=True)
class HostCacheConfig:
    """Settings of one host cache. Sizes are bytes."""

    mode: str = "none"
    block_size: int = 64 * 1024  # unit of fill, eviction and the present map
    cache_size: int = 1 << 30  # bound on the blocks the cache file may hold
    dirty_limit: int = 256 << 20  # readwrite: journal bytes not yet durable in the store
    readahead: int = 1 << 20  # extra bytes fetched when a miss continues a sequential stream
    write_wait_seconds: float = 30.0  # readwrite: how long a write waits for dirty room -> EIO
    upload_delay: float = 0.005  # readwrite: age of unflushed writes before the uploader sends
    journal_file_size: int = 64 << 20  # the journal rolls to a new file past this size
    upload_retry_max_delay: float = 2.0  # uploader backoff cap while the store fails

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(
                f"cache mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        bs = self.block_size
        if bs < 4096 or bs & (bs - 1):
            raise InvalidArgument(f"cache block size must be a power of two >= 4096, not {bs}")
        if self.upload_delay < 0:
            raise InvalidArgument(f"upload delay must be >= 0 seconds, not {self.upload_delay}")
        if self.cache_size < 16 * bs:
            raise InvalidArgument("cache size must hold at least 16 cache blocks")
        if self.mode == "readwrite" and not 0 < self.dirty_limit <= self.cache_size // 2:
            # Dirty blocks cannot be evicted: keep room for clean ones so reads still cache.
            raise InvalidArgument("dirty limit must be positive and at most half the cache size")


@dataclass
class HostCacheStats:
    """Counters of one host cache; read by the bench and /metrics (nobody re-counts)."""

    hits: int = 0  # reads served wholly from the cache file
    misses: int = 0  # reads that had to fetch from the volume
    fills: int = 0  # blocks installed into the cache file from the volume
    evictions: int = 0
    dirty_bytes: int = 0  # readwrite: journal bytes not yet durable in the store
    readahead: int = 0  # blocks fetched beyond what the read asked for
    uploads: int = 0  # journal records applied to the volume
    syncs: int = 0  # successful upload+volume.flush rounds
    replayed: int = 0  # journal records replayed at open
    journal_discarded: int = 0  # records of a fenced epoch's journal dropped at open
    write_waits: int = 0  # writes that had to wait for dirty room
    upload_errors: int = 0  # failed upload rounds (the uploader retries)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- the write journal -------------------------------------------------------------------------

KIND_WRITE, KIND_TRIM, KIND_ZERO = 1, 2, 3
_MAGIC = 0x4A4B5342  # "BSKJ"
# magic, kind, seq, offset, length, data crc; then a crc of those 36 bytes.
_HEAD = struct.Struct("<IB3xQQQI")
_HCRC = struct.Struct("<I")
RECORD_HEADER = _HEAD.size + _HCRC.size


class Record(NamedTuple):
    seq: int
    kind: int
    offset: int
    length: int
    file: int  # journal file number
    pos: int  # where the data starts in that file
    cost: int  # bytes it counts against the dirty limit


def _header(kind: int, seq: int, offset: int, length: int, dcrc: int) -> bytes:
    head = _HEAD.pack(_MAGIC, kind, seq, offset, length, dcrc)
    return head + _HCRC.pack(zlib.crc32(head))


class Journal:
    """Append-only files ``journal-<n>`` in the cache directory; records in acknowledgement order.

    Callers serialise `append` (HostCache holds its lock). Once every record in a file is
    durable in the store it is deleted, or reused from its start if it is the one being
    appended to. A reused file keeps its old records behind the new ones until they are
    overwritten; replay never reads them, because record seqs only grow (`read_journal` stops
    at the first record whose seq is not above the one before) and the first header of a
    reused file is zeroed until the next append. Only the last file may have such a tail: the
    file being left for a new one is cut to its end first.
    """

    def __init__(self, directory: Path, file_size: int) -> None:
        self.dir = directory
        self.file_size = file_size
        self._fds: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}
        self._current = max(journal_files(directory), default=0) + 1
        self._pos = 0
        self._open_current()

    def _open_current(self) -> None:
        path = self.dir / f"journal-{self._current:08d}"
        self._fds[self._current] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._last_seq[self._current] = 0
        self._pos = 0

    def append(
        self, kind: int, seq: int, offset: int, data: Buffer | None, length: int, dcrc: int
    ) -> Record:
        if self._pos >= self.file_size:
            os.ftruncate(self._fds[self._current], self._pos)  # no stale tail before a later file
            self._current += 1
            self._open_current()
        fd, pos = self._fds[self._current], self._pos
        head = _header(kind, seq, offset, length, dcrc)
        parts: list[Buffer] = [head] if data is None else [head, data]
        want = RECORD_HEADER + (0 if data is None else length)
        if os.pwritev(fd, parts, pos) != want:
            raise OSError(f"short write to the write journal in {self.dir}")
        self._pos = pos + want
        self._last_seq[self._current] = seq
        return Record(seq, kind, offset, length, self._current, pos + RECORD_HEADER, want)

    def read(self, rec: Record) -> bytes:
        data = os.pread(self._fds[rec.file], rec.length, rec.pos)
        if len(data) != rec.length:
            raise IntegrityError(f"write journal in {self.dir} is shorter than its index")
        return data

    def release(self, durable_seq: int) -> None:
        """Drop the records that are all durable: the current file is reused from its start
        (emptying it with ftruncate cost 7-38 us per flush here, and the next append then had
        to allocate its blocks again); older files are deleted. The first header is zeroed, so
        that a replay before the next append finds nothing: records already durable must never
        be applied again (another host may have written the disk since)."""
        if self._pos and self._last_seq[self._current] <= durable_seq:
            os.pwrite(self._fds[self._current], bytes(RECORD_HEADER), 0)
            self._pos = 0
        for n in sorted(self._fds):
            if n != self._current and self._last_seq[n] <= durable_seq:
                os.close(self._fds.pop(n))
                del self._last_seq[n]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / f"journal-{n:08d}")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


JOURNAL_EPOCH_FILE = "journal.epoch"  # the writer epoch whose acknowledgements the journal holds


def write_journal_epoch(directory: Path, epoch: int) -> None:
    """Say, durably and before any record exists, which writer epoch the journal belongs to."""
    tmp = directory / (JOURNAL_EPOCH_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{epoch}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / JOURNAL_EPOCH_FILE)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_journal_epoch(directory: Path) -> int | None:
    """The epoch a journal belongs to; None when unknown (then it cannot be proven current)."""
    try:
        return int((directory / JOURNAL_EPOCH_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def journal_files(directory: Path) -> list[int]:
    out = []
    for p in directory.glob("journal-*"):
        with contextlib.suppress(ValueError):
            out.append(int(p.name.split("-", 1)[1]))
    return sorted(out)


def read_journal(directory: Path) -> list[tuple[int, int, int, bytes | None]]:
    """Every complete record left in `directory`, in order: (kind, offset, length, data).

    Stops at the first torn or corrupt record: it was being appended when the process died, so
    it (and anything after it) was never acknowledged.
    """
    out: list[tuple[int, int, int, bytes | None]] = []
    last_seq = 0
    for n in journal_files(directory):
        blob = (directory / f"journal-{n:08d}").read_bytes()
        pos = 0
        while pos + RECORD_HEADER <= len(blob):
            head = blob[pos : pos + _HEAD.size]
            (hcrc,) = _HCRC.unpack_from(blob, pos + _HEAD.size)
            if zlib.crc32(head) != hcrc:
                return out
            magic, kind, seq, offset, length, dcrc = _HEAD.unpack(head)
            if magic != _MAGIC or seq <= last_seq or kind not in (KIND_WRITE, KIND_TRIM, KIND_ZERO):
                return out
            pos += RECORD_HEADER
            data: bytes | None = None
            if kind == KIND_WRITE:
                data = blob[pos : pos + length]
                if len(data) != length or zlib.crc32(data) != dcrc:
                    return out
                pos += length
            out.append((kind, offset, length, data))
            last_seq = seq
        if pos != len(blob):
            return out  # torn tail; a later file cannot hold acknowledged records
    return out


# --- punching holes ----------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) of the file read as zeros and free its space."""
    if length <= 0:
        return
    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


# --- the cache ---------------------------------------------------------------------------------


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
        self._clock = clock
        self.dir = Path(directory) if directory is not None else None
        if self.dir is None and cfg.mode != "none":
            raise InvalidArgument(f"cache mode {cfg.mode} needs a cache directory")
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # pending records / dirty room changed
        # One applier at a time keeps journal order; the volume flush after it runs outside, so
        # a flush that arrives while a round waits for the store joins it (see `_sync`).
        self._apply_lock = threading.Lock()
        self._fd = -1
        self._journal: Journal | None = None
        self._uploader: threading.Thread | None = None
        self._closed = False
        self._fenced: Fenced | None = None  # set once: every later call fails with it
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Acknowledged writes of a crashed process: into the store before anything else.
            self._replay()
        if cfg.mode == "none":
            return
        assert self.dir is not None
        bs = cfg.block_size
        self._bs = bs
        self._shift = bs.bit_length() - 1
        self._nblocks = (self.size + bs - 1) >> self._shift
        self._capacity = cfg.cache_size >> self._shift
        path = self.dir / "cache.img"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, self.size)
        self._present = bytearray(self._nblocks)
        self._ref = bytearray(self._nblocks)  # second chance for eviction, set by hits
        self._gen: dict[int, int] = {}
        # Blocks a fill is fetching now: a miss on one waits for that fill instead of fetching
        # the same bytes again (at QD4, sequential misses fetched every block about twice).
        self._filling: dict[int, threading.Event] = {}
        self._dirty: dict[int, int] = {}
        self._partial: dict[int, list[tuple[int, int]]] = {}
        self._resident: OrderedDict[int, None] = OrderedDict()  # blocks holding file space
        self._evict_seq = 0
        self._last_read_end = -1
        if cfg.mode == "readwrite":
            if volume.writable:  # a read-only view must not relabel a journal left here
                write_journal_epoch(self.dir, volume.epoch)
            self._journal = Journal(self.dir, cfg.journal_file_size)
            self._seq = 0  # last record appended
            self._uploaded_seq = 0  # last record applied to the volume
            self._durable_seq = 0  # last record known durable in the store
            self._pending: deque[Record] = deque()  # appended, not yet applied to the volume
            self._unflushed: deque[Record] = deque()  # applied, not yet durable
            self._stop = threading.Event()
            self._error: BlockstoreError | None = None  # fatal (fenced): everything fails
            self._room_waiters = 0  # writers waiting in _reserve for dirty room
            self._pending_since = 0.0  # when the oldest pending record was appended
            self._uploader_asleep = False  # waiting without a timeout: a write must wake it
            self._uploader = threading.Thread(
                target=self._upload_loop, name="hostcache-uploader", daemon=True
            )
            self._uploader.start()

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
        first = offset >> self._shift
        last = (offset + n - 1) >> self._shift
        seq = self._evict_seq
        hit = self._present[first] if first == last else 0 not in self._present[first : last + 1]
        if hit and os.preadv(self._fd, (buf,), offset) == n and seq == self._evict_seq:
            self._ref[first] = 1
            self._last_read_end = offset + n
            self.stats.hits += 1
            return
        self._read_miss(buf, offset)

    def pwrite(self, data: Buffer, offset: int, *, fua: bool = False) -> None:
        """Write `data` at `offset`; with `fua`, return only once it is durable in the store."""
        n = len(data)
        self._check(offset, n)
        if n == 0:
            return
        if self.mode == "readwrite":
            self._write_back(KIND_WRITE, offset, n, data, fua)
        else:
            self._write_through(KIND_WRITE, offset, n, data)

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Discard a range: it reads as zeros afterwards."""
        self._range_op(KIND_TRIM, offset, length, fua)

    def zero(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Make a range read as zeros (always fast: no data is written)."""
        self._range_op(KIND_ZERO, offset, length, fua)

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
                os.ftruncate(self._fd, new_size)
                nblocks = (new_size + self._bs - 1) >> self._shift
                self._present.extend(bytes(nblocks - self._nblocks))
                self._ref.extend(bytes(nblocks - self._nblocks))
                self._nblocks = nblocks
            self.size = new_size

    def flush(self) -> None:
        """Return once every write acknowledged before the call is durable in the store."""
        if self._fenced is not None:
            raise self._fenced
        if self.mode == "readwrite":
            self._sync()
        else:
            self.volume.flush()

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering the range."""
        self._check(offset, length)
        if length == 0:
            return []
        if self.mode == "readwrite":
            # Holes are the volume's to tell, and it knows only the writes applied to it.
            left = request_deadline.remaining(self._clock)
            if not self._apply_lock.acquire(timeout=-1 if left is None else max(0.0, left)):
                return [(offset, length, False)]  # "data" is always a safe answer
            try:
                self._upload(self._seq)
            except BlockstoreError:
                return [(offset, length, False)]
            finally:
                self._apply_lock.release()
        return self.volume.extents(offset, length)

    def fence(self, exc: Fenced) -> None:
        """A newer writer owns the disk: fail every later call, reads included (the cache may
        hold bytes the new owner has overwritten), and stop uploading."""
        self._fenced = exc
        if self.mode == "readwrite":
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    @property
    def fenced(self) -> Fenced | None:
        return self._fenced

    def close(self) -> None:
        """Upload and flush what is dirty (best effort: a journal left behind is replayed at the
        next open), stop the uploader and close the files. Does not close the volume."""
        if self._closed:
            return
        self._closed = True
        if self._stop_uploader():
            with contextlib.suppress(BlockstoreError):
                self._sync()
        self._close_files()

    def abandon(self) -> None:
        """Stop without uploading anything, as a crash would (tests)."""
        if self._closed:
            return
        self._closed = True
        self._stop_uploader()
        self._close_files()

    def _stop_uploader(self) -> bool:
        """Stop the background uploader; False when there is none (modes other than
        readwrite)."""
        if self._uploader is None:
            return False
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._uploader.join()
        return True

    @property
    def dirty_bytes(self) -> int:
        return self.stats.dirty_bytes

    # --- reads ---------------------------------------------------------------------------------

    def _read_miss(self, buf: bytearray | memoryview, offset: int) -> None:
        n = len(buf)
        shift = self._shift
        first = offset >> shift
        last = (offset + n - 1) >> shift
        sequential = offset == self._last_read_end
        self._last_read_end = offset + n
        for _attempt in range(64):
            with self._lock:
                missing = [
                    b
                    for b in range(first, last + 1)
                    if not self._present[b] and not self._covered_locked(b, offset, n)
                ]
                if not missing:
                    # Present, or absent but wholly rewritten where asked: no fetch needed
                    # (this is what lets readwrite read its own writes while the store is down).
                    if os.preadv(self._fd, (buf,), offset) != n:
                        raise IntegrityError("short read from the host cache file")
                    return
                busy = next((self._filling[b] for b in missing if b in self._filling), None)
                if busy is None:
                    lo, hi = missing[0], missing[-1] + 1
                    if sequential:
                        # Read-ahead: carry on past the request while blocks are absent and
                        # no other fill is fetching them.
                        limit = min(self._nblocks, hi + (self.config.readahead >> shift))
                        while hi < limit and not self._present[hi] and hi not in self._filling:
                            hi += 1
                    gens = {b: self._gen.get(b, 0) for b in range(lo, hi)}
                    mine = {b: threading.Event() for b in range(lo, hi) if b not in self._filling}
                    self._filling.update(mine)
            if busy is not None:
                # Then look again: filled, or that fill failed. Never past this request's
                # deadline: the fill may have started long before it (blockstore/deadline.py).
                left = request_deadline.check(self._clock, "cache fill of another read")
                busy.wait(FILL_WAIT_SECONDS if left is None else min(FILL_WAIT_SECONDS, left))
                continue
            try:
                start = lo << shift
                end = min(self.size, hi << shift)
                tmp = bytearray(end - start)
                self.volume.readinto(start, memoryview(tmp))
                with self._lock:
                    self.stats.misses += 1
                    self.stats.readahead += max(0, hi - last - 1)
                    self._install_locked(start, tmp, gens)
                    served = self._serve_locked(buf, offset, tmp, start, gens)
                    self._make_room_locked()
                    if served:
                        return
            finally:
                with self._lock:
                    for b, ev in mine.items():
                        if self._filling.get(b) is ev:
                            del self._filling[b]
                        ev.set()
            # A write or an eviction raced with the fill on a block we still need: go again.
        raise Unavailable("cache blocks kept changing under a read; giving up")

    def _install_locked(self, start: int, tmp: bytearray, gens: dict[int, int]) -> None:
        """Put fetched blocks into the file, except where it already knows better."""
        bs, fd = self._bs, self._fd
        view = memoryview(tmp)
        for b, g in gens.items():
            if self._present[b] or self._gen.get(b, 0) != g:
                continue  # already filled, or a write/eviction made our copy stale
            rel = (b << self._shift) - start
            part = view[rel : rel + bs]
            if not part:
                continue
            gaps = self._gaps(b, len(part))
            for g0, g1 in gaps:
                os.pwrite(fd, part[g0:g1], (b << self._shift) + g0)
            self._partial.pop(b, None)
            self._present[b] = 1
            self._resident[b] = None
            self.stats.fills += 1

    def _covered_locked(self, b: int, offset: int, n: int) -> bool:
        """Whether block `b`'s partial writes cover its part of [offset, offset+n)."""
        bstart = b << self._shift
        s = max(offset, bstart) - bstart
        e = min(offset + n, bstart + self._bs) - bstart
        return any(i0 <= s and e <= i1 for i0, i1 in self._partial.get(b, ()))

    def _gaps(self, b: int, blen: int) -> list[tuple[int, int]]:
        """The parts of block `b` (relative, within blen) not covered by its partial writes."""
        ivs = self._partial.get(b)
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

    def _serve_locked(
        self,
        buf: bytearray | memoryview,
        offset: int,
        tmp: bytearray | None,
        start: int,
        gens: dict[int, int],
    ) -> bool:
        """Copy the request out of the file (present blocks) or the fetched bytes; False when a
        block is neither present nor fetched at its current generation."""
        n, shift, bs = len(buf), self._shift, self._bs
        first, last = offset >> shift, (offset + n - 1) >> shift
        if 0 not in self._present[first : last + 1]:
            if os.preadv(self._fd, (buf,), offset) != n:
                raise IntegrityError("short read from the host cache file")
            return True
        out = memoryview(buf)
        for b in range(first, last + 1):
            bstart = b << shift
            s = max(offset, bstart)
            e = min(offset + n, bstart + bs)
            dst = out[s - offset : e - offset]
            if self._present[b]:
                os.preadv(self._fd, (dst,), s)
                continue
            if tmp is None or gens.get(b) != self._gen.get(b, 0):
                return False
            dst[:] = tmp[s - start : e - start]
            for i0, i1 in self._partial.get(b, ()):  # writes the volume has not seen
                a, z = max(s, bstart + i0), min(e, bstart + i1)
                if a < z:
                    os.preadv(self._fd, (out[a - offset : z - offset],), a)
        return True

    def _make_room_locked(self) -> None:
        """Evict clean blocks, oldest first with a second chance, down to the capacity."""
        budget = 2 * len(self._resident)
        while len(self._resident) > self._capacity and budget > 0:
            budget -= 1
            b, _ = self._resident.popitem(last=False)
            if self._ref[b] or self._dirty.get(b):
                self._ref[b] = 0
                self._resident[b] = None
                continue
            self._present[b] = 0
            self._partial.pop(b, None)
            self._gen[b] = self._gen.get(b, 0) + 1
            self._evict_seq += 1  # before the punch: lock-free readers re-check this after
            punch_hole(self._fd, b << self._shift, self._bs)
            self.stats.evictions += 1

    # --- writes --------------------------------------------------------------------------------

    def _range_op(self, kind: int, offset: int, length: int, fua: bool) -> None:
        self._check(offset, length)
        if length == 0:
            return
        if self.mode == "readwrite":
            self._write_back(kind, offset, length, None, fua)
        else:
            self._write_through(kind, offset, length, None)

    def _volume_op(
        self, kind: int, offset: int, length: int, data: Buffer | None, durable: bool
    ) -> None:
        if kind == KIND_WRITE:
            assert data is not None
            self.volume.write(offset, data, durable=durable)
        elif kind == KIND_TRIM:
            self.volume.trim(offset, length, durable=durable)
        else:
            self.volume.zero(offset, length, durable=durable)

    def _write_through(self, kind: int, offset: int, n: int, data: Buffer | None) -> None:
        """none / readonly: durable in the store, then (readonly) the cache is updated."""
        if self.mode == "none":
            self._volume_op(kind, offset, n, data, True)
            return
        first, last = offset >> self._shift, (offset + n - 1) >> self._shift
        with self._lock:
            # New generations first, so that a fill already in flight cannot install old bytes.
            gens = {}
            for b in range(first, last + 1):
                gens[b] = self._gen[b] = self._gen.get(b, 0) + 1
        try:
            self._volume_op(kind, offset, n, data, True)
        except BaseException:
            with self._lock:
                for b in gens:
                    self._drop_locked(b)
            raise
        with self._lock:
            for b, g in gens.items():
                bstart = b << self._shift
                s, e = max(offset, bstart), min(offset + n, bstart + self._bs)
                if self._gen[b] != g:
                    # A concurrent write hit this block too; which landed last in the store is
                    # unknown, so the cache forgets the block rather than guess.
                    self._drop_locked(b)
                elif self._present[b] or (kind == KIND_WRITE and e - s == self._bs):
                    self._file_write_locked(kind, s, e, data, offset)
                    if not self._present[b]:
                        self._present[b] = 1
                        self._resident[b] = None
            self._make_room_locked()

    def _file_write_locked(
        self, kind: int, s: int, e: int, data: Buffer | None, offset: int
    ) -> None:
        if kind == KIND_WRITE:
            assert data is not None
            os.pwrite(self._fd, memoryview(data)[s - offset : e - offset], s)
        else:
            punch_hole(self._fd, s, e - s)

    def _drop_locked(self, b: int) -> None:
        self._gen[b] = self._gen.get(b, 0) + 1
        if self._present[b]:
            self._present[b] = 0
            self._evict_seq += 1
            self._resident.pop(b, None)
            punch_hole(self._fd, b << self._shift, self._bs)

    def _write_back(self, kind: int, offset: int, n: int, data: Buffer | None, fua: bool) -> None:
        """readwrite: into the cache file and the journal; durable later (or now, with FUA)."""
        assert self._journal is not None
        dcrc = zlib.crc32(data) if data is not None else 0
        cost = RECORD_HEADER + (n if data is not None else 0)
        self._reserve(cost)
        shift, bs = self._shift, self._bs
        with self._lock:
            self._seq += 1
            try:
                rec = self._journal.append(kind, self._seq, offset, data, n, dcrc)
            except BaseException:
                self._seq -= 1
                self.stats.dirty_bytes -= cost
                raise
            if data is not None:
                os.pwrite(self._fd, data, offset)
            else:
                punch_hole(self._fd, offset, n)
            first, last = offset >> shift, (offset + n - 1) >> shift
            for b in range(first, last + 1):
                self._gen[b] = self._gen.get(b, 0) + 1
                self._dirty[b] = self._dirty.get(b, 0) + 1
                if self._present[b]:
                    continue
                bstart = b << shift
                blen = min(bs, self.size - bstart)
                s, e = max(offset, bstart) - bstart, min(offset + n, bstart + bs) - bstart
                ivs = _merge(self._partial.get(b, []), s, e)
                if ivs[0] == (0, blen):
                    self._partial.pop(b, None)
                    self._present[b] = 1
                else:
                    self._partial[b] = ivs
                self._resident[b] = None
            self._pending.append(rec)
            # Wake the uploader only when it would not look by itself soon (see
            # `_upload_loop`): each wake-up cost a write+flush pair CPU the flush needed.
            wake = self.stats.dirty_bytes >= self.config.dirty_limit // 2
            if len(self._pending) == 1:
                self._pending_since = time.monotonic()
                wake = wake or self._uploader_asleep
            if wake:
                self._cond.notify_all()
            self._make_room_locked()
        if fua:
            self._sync()

    def _reserve(self, cost: int) -> None:
        """Wait for room under the dirty limit (bounded), then count `cost` as dirty."""
        limit = self.config.dirty_limit
        with self._cond:
            if self._error is not None:
                raise self._error
            if self.stats.dirty_bytes and self.stats.dirty_bytes + cost > limit:
                self.stats.write_waits += 1
                deadline = self._clock.monotonic() + self.config.write_wait_seconds
                left = request_deadline.remaining(self._clock)
                if left is not None:  # and never past the request's own deadline
                    deadline = min(deadline, self._clock.monotonic() + left)
                self._room_waiters += 1
                self._cond.notify_all()  # the uploader: send now
                try:
                    while self.stats.dirty_bytes and self.stats.dirty_bytes + cost > limit:
                        left = deadline - self._clock.monotonic()
                        if self._error is not None:
                            raise self._error
                        if left <= 0:
                            raise Unavailable(
                                f"host cache dirty limit ({limit} bytes) reached and the store "
                                "did not take the data in time (write-wait "
                                f"{self.config.write_wait_seconds:g} s or the request's deadline)"
                            )
                        self._cond.wait(left)
                finally:
                    self._room_waiters -= 1
            self.stats.dirty_bytes += cost

    # --- upload (readwrite) --------------------------------------------------------------------

    def _upload(self, target: int) -> None:
        """Apply pending records up to `target` to the volume, in order (holding _apply_lock)."""
        assert self._journal is not None
        shift = self._shift
        while True:
            with self._lock:
                if not self._pending or self._pending[0].seq > target:
                    return
                rec = self._pending[0]
            data = self._journal.read(rec) if rec.kind == KIND_WRITE else None
            # Re-applying a record after a failure is harmless: the same bytes land again.
            self._volume_op(rec.kind, rec.offset, rec.length, data, False)
            with self._lock:
                self._pending.popleft()
                self._unflushed.append(rec)
                self._uploaded_seq = rec.seq
                for b in range(rec.offset >> shift, ((rec.offset + rec.length - 1) >> shift) + 1):
                    left = self._dirty[b] - 1
                    if left:
                        self._dirty[b] = left
                    else:
                        del self._dirty[b]
                self.stats.uploads += 1

    def _sync(self) -> None:
        """Make every record appended so far durable: apply the ones not yet in the volume (in
        order), then volume.flush().

        Rounds overlap: the apply step is serialised, the volume flush is not. A flush that
        arrives while a round waits for its PUT applies only what that round did not cover
        (often nothing) and then waits in volume.flush(), which returns once every segment
        written before it is acknowledged: it joins the round in flight, and whatever it added
        goes out in the next segment at once (the volume pipelines PUTs), not after the round.
        Correct for any interleaving: volume.flush() covers every record applied before it was
        called, and the bookkeeping below only ever moves forward."""
        if self._error is not None:
            raise self._error
        with self._lock:
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
        self.volume.flush()
        assert self._journal is not None
        with self._cond:
            if target > self._durable_seq:
                freed = 0
                while self._unflushed and self._unflushed[0].seq <= target:
                    freed += self._unflushed.popleft().cost
                self._durable_seq = target
                self.stats.dirty_bytes -= freed
                self._journal.release(target)
            self.stats.syncs += 1
            if self._room_waiters:
                self._cond.notify_all()  # writers waiting for dirty room

    def _upload_loop(self) -> None:
        delay = 0.05
        cfg = self.config
        while not self._stop.is_set():
            with self._cond:
                # While writes keep coming, look every upload_delay instead of being woken by
                # each write that finds nothing pending: with a flush after every write (a
                # database's commits), that was a wake-up per write, and this thread took the
                # GIL in the middle of the write or the flush (25-30 us of a 4 KiB pair,
                # in-process). After a second with nothing to do, sleep until a write wakes us.
                idle_ticks = 0
                while not self._pending and not self._stop.is_set():
                    if cfg.upload_delay > 0 and idle_ticks * cfg.upload_delay < _IDLE_LOOK_SECONDS:
                        idle_ticks += 1
                        self._cond.wait(cfg.upload_delay)
                    else:
                        self._uploader_asleep = True
                        try:
                            self._cond.wait()
                        finally:
                            self._uploader_asleep = False
                # Hold back a moment: a flush right after a write then uploads the write
                # itself, in its own thread (no hand-off to this one and back), and writes
                # without flushes go up in fewer, larger rounds. Dirty data past half the
                # limit, or a writer waiting for room, does not wait.
                while (
                    self._pending
                    and not self._stop.is_set()
                    and self.stats.dirty_bytes < cfg.dirty_limit // 2
                    and not self._room_waiters
                ):
                    left = cfg.upload_delay - (time.monotonic() - self._pending_since)
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._pending:
                    continue
            if self._stop.is_set():
                return
            try:
                self._sync()
                delay = 0.05
            except Fenced as exc:
                self.fence(exc)  # a newer writer owns the disk: stop for good
                return
            except BlockstoreError:
                self.stats.upload_errors += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.upload_retry_max_delay)

    # --- open / close --------------------------------------------------------------------------

    def _replay(self) -> None:
        """A journal left by an earlier export: made durable if its epoch still held the log
        when this writer took it, else discarded (see the module docstring)."""
        assert self.dir is not None
        files = journal_files(self.dir)
        if not files:
            return
        records = read_journal(self.dir)
        owner = read_journal_epoch(self.dir)
        if records and not self.volume.writable:
            return  # a read-only export cannot store it: it stays for the next writer
        if records and (owner is None or owner != self.volume.prior_epoch):
            self.stats.journal_discarded = len(records)
        else:
            for kind, offset, length, data in records:
                self._volume_op(kind, offset, length, data, False)
            if records:
                self.volume.flush()
            self.stats.replayed = len(records)
        for n in files:
            os.unlink(self.dir / f"journal-{n:08d}")

    def _close_files(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check(self, offset: int, length: int) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._closed:
            raise InvalidArgument("host cache is closed")
        if (offset | length) & (SECTOR - 1):
            raise InvalidArgument(f"range {offset}+{length} is not in whole 512-byte sectors")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(f"range {offset}+{length} is outside the disk (size {self.size})")


def _merge(ivs: list[tuple[int, int]], s: int, e: int) -> list[tuple[int, int]]:
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
