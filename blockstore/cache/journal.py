"""The write journal of a ``readwrite`` host cache: what was acknowledged and is not yet durable.

Place: under `cache/writeback.py`, which appends an entry for every write, trim and zero before
it acknowledges it, and releases entries once the store holds them. `cache/hostcache.py` replays
a journal it finds at open (`replay`), and the export supervisor (host/supervisor.py) counts what
one holds. This module owns the journal's files in the cache directory:

    journal-<n>      (8 digits) entries in acknowledgement order; n grows, oldest file first
    spare-<n>        a released file kept for reuse (first header zeroed; no replay reads it)
    journal.epoch    the writer epoch whose acknowledgements the journal holds

Entry states: *appended* (in the file, acknowledged, not in the volume) -> *applied* (handed to
the volume, not yet flushed) -> *durable* (a volume flush covered it; released: its file is
reused from its start if it is the one being appended to, else kept as a spare or deleted).

Invariants
- Every entry has a CRC of its header and a check of its data (xxh3_64, low 32 bits: a tenth
  of crc32's cost per MiB on this machine; journals of the first version, magic ``BSKJ``,
  carry a crc32 and still replay); seqs only grow within a journal.
  A reader stops at the first entry that is torn, corrupt or whose seq is not above the one
  before: the process died while appending it, so it (and anything after it) was never
  acknowledged.
- A reused file keeps its old entries behind the new ones until they are overwritten, but its
  first header is zeroed when it is released: a replay before the next append finds nothing,
  because entries already durable must never be applied again (another host may have written
  the disk since). Only the last file may have such a tail: a file is cut to its end before a
  later one is started.
- ``journal.epoch`` is written (fsync'd, renamed into place) before any entry of that epoch. A
  journal is replayed only when that epoch is the one the new writer took the log from
  (``volume.prior_epoch``): nobody wrote the disk in between, so its entries go on top of exactly
  the state they were acknowledged over. Any other journal was fenced and is discarded.

What a crash can lose: nothing acknowledged while the host survives (the entries are in the
page cache, which outlives the process); losing the host loses the entries written since the
last flush.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import xxhash

from blockstore.errors import IntegrityError
from blockstore.store.base import Buffer

KIND_WRITE, KIND_TRIM, KIND_ZERO = 1, 2, 3
_KINDS = (KIND_WRITE, KIND_TRIM, KIND_ZERO)
_MAGIC_CRC32 = 0x4A4B5342  # "BSKJ": the data check is zlib.crc32 (journals of version 1)
_MAGIC = 0x4B4B5342  # "BSKK": the data check is the low 32 bits of xxh3_64
# magic, kind, seq, offset, length, data check; then a crc of those 36 bytes.
_HEAD = struct.Struct("<IB3xQQQI")
_HCRC = struct.Struct("<I")
ENTRY_HEADER = _HEAD.size + _HCRC.size


def data_check(data: Buffer) -> int:
    """The check an entry of this version carries over its data."""
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF


_CHECKS: dict[int, Callable[[Buffer], int]] = {_MAGIC: data_check, _MAGIC_CRC32: zlib.crc32}

JOURNAL_EPOCH_FILE = "journal.epoch"  # the writer epoch whose acknowledgements the journal holds
_PREFIX = "journal-"
_SPARE = "spare-"  # a released journal file kept for reuse (never read by a replay)
_SPARES = 4


class VolumeOps(Protocol):
    """The volume calls a journal entry turns into (see `apply`)."""

    def write(self, offset: int, data: Buffer, *, durable: bool = False) -> None: ...

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None: ...

    def zero(self, offset: int, length: int, *, durable: bool = False) -> None: ...


def apply(
    volume: VolumeOps, kind: int, offset: int, length: int, data: Buffer | None, durable: bool
) -> None:
    """Do to the volume what one entry (or a write-through request) of `kind` says."""
    if kind == KIND_WRITE:
        assert data is not None
        volume.write(offset, data, durable=durable)
    elif kind == KIND_TRIM:
        volume.trim(offset, length, durable=durable)
    else:
        volume.zero(offset, length, durable=durable)


class JournalEntry(NamedTuple):
    """Where one appended entry is, and what it costs against the dirty limit."""

    seq: int
    kind: int
    offset: int
    length: int
    file: int  # journal file number
    pos: int  # where the data starts in that file
    cost: int  # bytes it counts against the dirty limit


def entry_cost(kind: int, length: int) -> int:
    """Bytes an entry takes in the journal (and against the dirty limit)."""
    return ENTRY_HEADER + (length if kind == KIND_WRITE else 0)


def journal_path(directory: Path, n: int) -> Path:
    return directory / f"{_PREFIX}{n:08d}"


def journal_files(directory: Path) -> list[int]:
    """The numbers of the journal files in `directory`, oldest first."""
    out = []
    for p in directory.glob(_PREFIX + "*"):
        with contextlib.suppress(ValueError):
            out.append(int(p.name.removeprefix(_PREFIX)))
    return sorted(out)


def journal_bytes(directory: Path) -> int:
    """Bytes of journal files in `directory` (0 when it does not exist)."""
    if not directory.is_dir():
        return 0
    return sum(journal_path(directory, n).stat().st_size for n in journal_files(directory))


def _header(kind: int, seq: int, offset: int, length: int, dcrc: int) -> bytes:
    head = _HEAD.pack(_MAGIC, kind, seq, offset, length, dcrc)
    return head + _HCRC.pack(zlib.crc32(head))


class Journal:
    """Append-only files ``journal-<n>``; entries in acknowledgement order.

    Callers serialise `append` (the write-back path holds the cache lock). See the module
    docstring for how released files are reused."""

    def __init__(self, directory: Path, file_size: int) -> None:
        self.dir = directory
        self.file_size = file_size
        self._fds: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}
        self._spares = sorted(directory.glob(_SPARE + "*"))  # released files kept for reuse
        self._current = max(journal_files(directory), default=0) + 1
        self._pos = 0
        self._open_current()

    def _open_current(self) -> None:
        """Start the next file: a spare renamed into place when there is one (its blocks are
        allocated and likely cached: appending to a new file cost 1.5x as much per MiB as
        overwriting one on this machine, docs/cache-measurements.md), else a new file."""
        path = journal_path(self.dir, self._current)
        if self._spares:
            os.replace(self._spares.pop(), path)  # its first header is zero: replays nothing
            self._fds[self._current] = os.open(path, os.O_RDWR)
        else:
            self._fds[self._current] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._last_seq[self._current] = 0
        self._pos = 0

    def append(
        self, kind: int, seq: int, offset: int, data: Buffer | None, length: int, dcrc: int
    ) -> JournalEntry:
        if self._pos >= self.file_size:
            os.ftruncate(self._fds[self._current], self._pos)  # no stale tail before a later file
            self._current += 1
            self._open_current()
        fd, pos = self._fds[self._current], self._pos
        head = _header(kind, seq, offset, length, dcrc)
        parts: list[Buffer] = [head] if data is None else [head, data]
        want = ENTRY_HEADER + (0 if data is None else length)
        if os.pwritev(fd, parts, pos) != want:
            raise OSError(f"short write to the write journal in {self.dir}")
        self._pos = pos + want
        self._last_seq[self._current] = seq
        return JournalEntry(seq, kind, offset, length, self._current, pos + ENTRY_HEADER, want)

    def read(self, entry: JournalEntry, skip: int = 0, length: int | None = None) -> bytes:
        """The entry's data, or `length` bytes of it from `skip` (a coalesced piece)."""
        want = entry.length - skip if length is None else length
        data = os.pread(self._fds[entry.file], want, entry.pos + skip)
        if len(data) != want:
            raise IntegrityError(f"write journal in {self.dir} is shorter than its index")
        return data

    def release(self, durable_seq: int) -> None:
        """Drop the entries that are all durable: the current file is reused from its start
        (emptying it with ftruncate made the next append allocate its blocks again: see
        docs/cache-measurements.md); older files become spares (up to `_SPARES`, renamed out
        of the journal's names) or are deleted. The first header of a file is zeroed before it
        is reused or kept, so that a replay before the next append finds nothing in it."""
        if self._pos and self._last_seq[self._current] <= durable_seq:
            os.pwrite(self._fds[self._current], bytes(ENTRY_HEADER), 0)
            self._pos = 0
        for n in sorted(self._fds):
            if n != self._current and self._last_seq[n] <= durable_seq:
                fd = self._fds.pop(n)
                del self._last_seq[n]
                path = journal_path(self.dir, n)
                keep = len(self._spares) < _SPARES
                if keep:
                    os.pwrite(fd, bytes(ENTRY_HEADER), 0)
                os.close(fd)
                if keep:
                    spare = self.dir / f"{_SPARE}{n:08d}"
                    os.replace(path, spare)
                    self._spares.append(spare)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def write_journal_epoch(directory: Path, epoch: int) -> None:
    """Say, durably and before any entry exists, which writer epoch the journal belongs to."""
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


def _entries_of(blob: bytes, last_seq: int, out: list[tuple[int, int, int, bytes | None]]) -> int:
    """Append the complete entries of one file to `out`; returns the last seq read, or -1 when
    the file ends in a torn or corrupt entry (nothing after it was acknowledged)."""
    pos = 0
    while pos + ENTRY_HEADER <= len(blob):
        head = blob[pos : pos + _HEAD.size]
        (hcrc,) = _HCRC.unpack_from(blob, pos + _HEAD.size)
        if zlib.crc32(head) != hcrc:
            return -1
        magic, kind, seq, offset, length, dcheck = _HEAD.unpack(head)
        if magic not in _CHECKS or seq <= last_seq or kind not in _KINDS:
            return -1
        pos += ENTRY_HEADER
        data: bytes | None = None
        if kind == KIND_WRITE:
            data = blob[pos : pos + length]
            if len(data) != length or _CHECKS[magic](data) != dcheck:
                return -1
            pos += length
        out.append((kind, offset, length, data))
        last_seq = seq
    return last_seq if pos == len(blob) else -1


def read_journal(directory: Path) -> list[tuple[int, int, int, bytes | None]]:
    """Every complete entry left in `directory`, in order: (kind, offset, length, data).

    Stops at the first torn or corrupt entry: it was being appended when the process died, so
    it (and anything after it) was never acknowledged.
    """
    out: list[tuple[int, int, int, bytes | None]] = []
    last_seq = 0
    for n in journal_files(directory):
        last_seq = _entries_of(journal_path(directory, n).read_bytes(), last_seq, out)
        if last_seq < 0:
            break
    return out


class ReplayVolume(VolumeOps, Protocol):
    @property
    def writable(self) -> bool: ...

    @property
    def prior_epoch(self) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class Replayed:
    """What `replay` did with the journal it found."""

    replayed: int = 0  # entries made durable
    discarded: int = 0  # entries of a fenced epoch's journal dropped


def replay(directory: Path, volume: ReplayVolume) -> Replayed:
    """A journal left by an earlier export: made durable if its epoch still held the log when
    this writer took it, else discarded; its files are then removed. A read-only volume cannot
    store it: then it is left for the next writer."""
    files = journal_files(directory)
    if not files:
        return Replayed()
    entries = read_journal(directory)
    owner = read_journal_epoch(directory)
    if entries and not volume.writable:
        return Replayed()
    if entries and (owner is None or owner != volume.prior_epoch):
        done = Replayed(discarded=len(entries))
    else:
        for kind, offset, length, data in entries:
            apply(volume, kind, offset, length, data, False)
        if entries:
            volume.flush()
        done = Replayed(replayed=len(entries))
    for n in files:
        os.unlink(journal_path(directory, n))
    return done
