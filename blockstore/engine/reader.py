"""Reads: resolve a range against the volume's maps, then fetch and verify the stored pieces.

A read takes the volume lock only to resolve its range into pieces (pending overlay first,
durable map under its gaps); the bytes of a write not yet acknowledged are copied from memory,
holes are zeros, and stored pieces are fetched without the lock: one ranged GET per run of
pieces that lie close together in one segment, whole checksum chunks so each piece verifies on
its own, the GETs of one read in parallel (`READ_PARALLEL` at most).

Guarantees: every byte fetched is checked against its chunk checksum before it is returned, and
a sealed record's (an encrypted disk's) opened and authenticated under its key; a mismatch
counts `checksum_failures` and raises `IntegrityError`, never wrong data. Inside an
NBD request each GET carries the request's deadline (blockstore/deadline.py), also the GETs
handed to the read pool. Reads change no state, so a crash during one loses nothing.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from blockstore.crypto.seal import KEY_RAW
from blockstore.engine.state import Context, Piece
from blockstore.errors import IntegrityError, NotFound
from blockstore.format.codec import decompress
from blockstore.format.segment import WRITE, LogRecord, n_chunks, verify_chunks

READ_PARALLEL = 8  # ranged GETs of one read that may run at once
COALESCE_GAP = 64 << 10  # pieces of one segment closer than this share a ranged GET
_ZEROS = memoryview(bytes(1 << 20))

# A stored piece to fetch: (segment key, object start, object end, first chunk index, the
# record, the offset in the record, where the piece goes in the caller's buffer, its length).
_Span = tuple[str, int, int, int, LogRecord, int, int, int]


def zero_fill(dst: memoryview) -> None:
    n = len(dst)
    pos = 0
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        dst[pos : pos + k] = _ZEROS[:k]
        pos += k


class Reader:
    """The read side of one open volume."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self._pool: ThreadPoolExecutor | None = None  # made at the first multi-GET read
        self._pool_lock = threading.Lock()

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill `buf` with the bytes at `offset`; holes read as zeros."""
        buf = memoryview(buf)
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
        n = len(buf)
        stored: list[tuple[LogRecord, int, int, int]] = []
        for s, e, rec, delta in self._pieces(offset, n):
            dst = buf[s - offset : e - offset]
            if rec is None or rec.kind != WRITE:
                zero_fill(dst)
                continue
            mem = rec.mem  # read once: the committer drops it after the segment is acked
            if mem is not None:
                dst[:] = memoryview(mem)[delta : delta + (e - s)]
            else:
                stored.append((rec, delta, s - offset, e - s))
        if stored:
            self._fetch_all(buf, stored)
        with self.ctx.stats.lock:
            self.ctx.stats.reads += 1
            self.ctx.stats.bytes_read += n

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, is_hole) runs covering exactly [offset, offset+length)."""
        out: list[tuple[int, int, bool]] = []
        for s, e, rec, _d in self._pieces(offset, length):
            hole = rec is None or rec.kind != WRITE
            if out and out[-1][2] == hole and out[-1][0] + out[-1][1] == s:
                out[-1] = (out[-1][0], out[-1][1] + e - s, hole)
            else:
                out.append((s, e - s, hole))
        return out

    def _pieces(self, offset: int, length: int) -> list[Piece]:
        """The range checked, then resolved under the lock (pending overlay over durable)."""
        st = self.state
        st.check_range(offset, length)
        with st.lock:
            return st.resolve_locked(offset, offset + length)

    def verify(
        self,
        rec: LogRecord,
        first_chunk: int,
        data: memoryview,
        expect: int,
        in_place: bool = False,
    ) -> memoryview:
        """The record's plaintext from chunk `first_chunk` on, given `data`, its stored bytes:
        `data` itself for a plain record; for a sealed one, opened into a new buffer, or into
        `data` with `in_place` (for bytes no other piece verifies again). `IntegrityError`
        unless `data` is `expect` bytes matching the record's sums (and tags)."""
        bad = verify_chunks(rec, first_chunk, data) if len(data) == expect else -1
        if bad is not None:
            self._failed()
            where = "object too short" if bad == -1 else f"record byte {bad}"
            raise IntegrityError(
                f"disk {self.state.disk_id}: checksum mismatch in {rec.seg_key} ({where}); "
                "refusing to return wrong data"
            )
        if not (rec.seal or rec.comp):
            return data
        try:
            if rec.comp:
                return self._decompressed(rec, first_chunk, data)
            out = data if in_place else memoryview(bytearray(len(data)))
            sealer = self.ctx.keys.sealer(rec.seal[:KEY_RAW])
            sealer.open_record(rec.seal, first_chunk, data, out, rec.chunk)
            return out
        except IntegrityError as exc:
            self._failed()
            raise IntegrityError(f"disk {self.state.disk_id}: {rec.seg_key}: {exc}") from None

    def _decompressed(self, rec: LogRecord, first_chunk: int, data: memoryview) -> memoryview:
        """A compressed record's verified stored chunks from `first_chunk` on, opened (if
        sealed) and decompressed, one by one (blockstore/format/codec.py)."""
        stored = rec.stored_pieces(first_chunk, data)
        pieces: Sequence[bytes | memoryview] = stored
        if rec.seal:
            sealer = self.ctx.keys.sealer(rec.seal[:KEY_RAW])
            pieces = sealer.open_pieces(rec.seal, first_chunk, stored)
        chunk, codec = rec.chunk, rec.comp[0]
        plain = [
            decompress(codec, p, min(chunk, rec.length - (first_chunk + i) * chunk))
            for i, p in enumerate(pieces)
        ]
        return memoryview(b"".join(plain))

    def _failed(self) -> None:
        with self.ctx.stats.lock:
            self.ctx.stats.checksum_failures += 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _fetch_all(self, buf: memoryview, pieces: list[tuple[LogRecord, int, int, int]]) -> None:
        """Fetch stored pieces into `buf`, the groups of one read in parallel; every piece
        verified before the read returns."""
        groups = _group(pieces)
        if len(groups) == 1:
            self._fetch_group(buf, groups[0])
            return
        pool = self._read_pool()
        # Each GET carries the request's deadline along (blockstore/deadline.py): one queued
        # behind other reads' GETs starts no attempt past it.
        futures = [pool.submit(contextvars.copy_context().run, self._fetch_group, buf, g)
                   for g in groups[1:]]  # fmt: skip
        try:
            self._fetch_group(buf, groups[0])
        finally:
            for f in futures:
                f.exception()  # wait for all: none may write into the buffer after we return
        for f in futures:
            f.result()

    def _read_pool(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(  # the caller fetches one group too
                        READ_PARALLEL - 1, thread_name_prefix=f"seg-get-{self.state.disk_id}"
                    )
                pool = self._pool
        return pool

    def _fetch_group(self, buf: memoryview, group: list[_Span]) -> None:
        key = group[0][0]
        glo = group[0][1]
        ghi = max(x[2] for x in group)
        try:
            if _direct(group):
                # The GET is exactly the caller's pieces (whole chunks, back to back in the
                # object and in the buffer, e.g. an aligned read of records written in order):
                # the body lands in the caller's buffer and is verified there. On a mismatch
                # the read fails, so bad bytes in the buffer are never returned.
                pos = group[0][6]
                dst = buf[pos : pos + ghi - glo]
                got = self.ctx.store.get_into(key, glo, dst)
                for _key, lo, hi, c0, rec, _delta, _pos, _n in group:
                    # Back to back, never overlapping: a sealed piece opens where it landed.
                    piece = dst[lo - glo : min(hi, glo + got) - glo]
                    self.verify(rec, c0, piece, hi - lo, in_place=True)
                return
            data = memoryview(self.ctx.store.get(key, glo, ghi - glo))
        except NotFound:
            raise IntegrityError(
                f"segment {key} named by the extent map is missing (removed by GC while "
                "this read-only view was open past gc_min_age_seconds, or lost)"
            ) from None
        # Pieces of one record whose chunks overlap or touch (several live pieces in one
        # chunk, as small overwrites leave) are verified, and opened, once: as one run.
        i = 0
        while i < len(group):
            _key, lo, hi, c0, rec = group[i][:5]
            j = i + 1
            while j < len(group) and group[j][4] is rec and group[j][1] <= hi:
                hi = max(hi, group[j][2])
                j += 1
            part = self.verify(rec, c0, data[lo - glo : hi - glo], hi - lo)
            for _k, _lo, _hi, _c0, _rec, delta, pos, n in group[i:j]:
                skip = delta - c0 * rec.chunk
                buf[pos : pos + n] = part[skip : skip + n]
            i = j


def _direct(group: list[_Span]) -> bool:
    """Whether the group's GET can land in the caller's buffer as it is: every piece whole
    chunks, and each one next to the previous in the object and in the buffer."""
    prev_hi = prev_end = -1
    for _key, lo, hi, c0, rec, delta, pos, n in group:
        if rec.comp or delta != c0 * rec.chunk or n != hi - lo:
            return False
        if prev_hi >= 0 and (lo != prev_hi or pos != prev_end):
            return False
        prev_hi, prev_end = hi, pos + n
    return True


def _group(pieces: list[tuple[LogRecord, int, int, int]]) -> list[list[_Span]]:
    """Pieces as whole-chunk spans of their segments, sorted, and grouped into runs that lie
    within `COALESCE_GAP` of each other in one segment (one ranged GET per group)."""
    spans: list[_Span] = []
    for rec, delta, pos, n in pieces:
        c0 = delta // rec.chunk
        lo, hi = rec.stored_span(c0, n_chunks(delta + n, rec.chunk))
        lo, hi = rec.data_off + lo, rec.data_off + hi
        spans.append((rec.seg_key, lo, hi, c0, rec, delta, pos, n))
    spans.sort(key=lambda x: (x[0], x[1]))
    groups: list[list[_Span]] = []
    for sp in spans:
        g = groups[-1] if groups else None
        if g is not None and g[0][0] == sp[0] and sp[1] <= max(x[2] for x in g) + COALESCE_GAP:
            g.append(sp)
        else:
            groups.append([sp])
    return groups
