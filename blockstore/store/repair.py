"""`RepairingStore`: read repair of a geo-redundant disk's log from its secondary copy.

Place in the stack (blockstore/store/stack.py): ``Volume -> RepairingStore -> RetryingStore -> S3``,
with a second retrying stack for the secondary region. Only reads of segments and checkpoints
are touched; every other call goes to the primary unchanged.

How a bad object is noticed without changing the engine: the engine verifies every byte it
fetches, but by then the wrapper has already returned. So the wrapper verifies first, with the
same decoders (blockstore/format/):

- a *checkpoint* read whole is decoded (its body checksum covers everything);
- a *segment* read is checked against the segment's header, which the wrapper fetches once per
  segment (an LRU of headers; `segment_head.read_segment_head`, as the engine reads them) and
  verifies by its own checksum: every checksum chunk of a WRITE record lying wholly inside
  the fetched range is hashed. The engine always fetches whole chunks
  (docs/format.md), so a read the engine would reject is one the wrapper rejects first.

A missing object (NotFound) or one that fails verification is fetched whole from the secondary,
verified there too, served, and written back to the primary: created if absent (never racing a
writer's create-if-absent at that key), overwritten if corrupt (an atomic S3 replace, so the key
is never missing meanwhile). When the secondary does not have a good copy either, the primary's
answer (the NotFound, or the bad bytes, which the engine then rejects with IntegrityError) is
returned unchanged: this layer never makes a failure worse, and never returns unverified bytes
it fetched from the secondary.

Cost: one extra ranged GET per segment per process (the header, `HEADER_READ_BYTES` or more),
and one extra xxh3 pass over the bytes read.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from blockstore.errors import IntegrityError, NotFound, PreconditionFailed
from blockstore.format import keys
from blockstore.format.checkpoint import decode_checkpoint
from blockstore.format.segment import (
    WRITE,
    SegmentHeader,
    decode_segment_header,
    n_chunks,
    segment_header_length,
    verify_chunks,
)
from blockstore.store.base import Buffer, ObjectInfo, ObjectStore
from blockstore.store.segment_head import read_segment_head


@dataclass
class RepairStats:
    repaired_missing: int = 0
    repaired_corrupt: int = 0
    unrepairable: int = 0  # bad on the primary and no good copy on the secondary
    header_fetches: int = 0


def verify_segment(blob: bytes, key: str) -> SegmentHeader:
    """Decode a whole segment object and check every chunk of every WRITE record; raises
    IntegrityError. Used before a segment is copied or written back."""
    hdr = decode_segment_header(blob, key, len(blob))
    for rec in hdr.records:
        if rec.kind == WRITE:
            n = rec.stored_length
            data = memoryview(blob)[rec.data_off : rec.data_off + n]
            if len(data) != n or verify_chunks(rec, 0, data) is not None:
                raise IntegrityError(f"segment {key}: data does not match its checksums")
    return hdr


def verify_object(blob: bytes, key: str) -> None:
    """Verify a whole segment or checkpoint object (other keys are not checked)."""
    if keys.parse_segment_key(key) is not None:
        verify_segment(blob, key)
    elif keys.parse_checkpoint_key(key) is not None:
        decode_checkpoint(blob, key)


def _range_ok(hdr: SegmentHeader, start: int, data: bytes) -> bool:
    """Whether every checksum chunk wholly inside [start, start+len(data)) matches."""
    end = start + len(data)
    mv = memoryview(data)
    for rec in hdr.records:
        stored = rec.stored_length if rec.kind == WRITE else 0
        if rec.kind != WRITE or rec.data_off >= end or rec.data_off + stored <= start:
            continue
        first = 0 if rec.comp else max(0, -(-(start - rec.data_off) // rec.chunk))
        for c in range(first, n_chunks(rec.length, rec.chunk)):
            lo, hi = (rec.data_off + x for x in rec.stored_span(c, c + 1))
            if lo < start:
                continue
            if hi > end:
                break
            if verify_chunks(rec, c, mv[lo - start : hi - start]) is not None:
                return False
    return True


class RepairingStore(ObjectStore):
    """Reads segments and checkpoints from `primary`, repairing them from `secondary`."""

    def __init__(self, primary: ObjectStore, secondary: ObjectStore, max_headers: int = 256):
        self.primary = primary
        self.secondary = secondary
        self.stats = primary.stats
        self.repair_stats = RepairStats()
        self._headers: OrderedDict[str, SegmentHeader] = OrderedDict()
        self._max_headers = max_headers
        self._lock = threading.Lock()

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        is_seg = keys.parse_segment_key(key) is not None
        is_ckpt = not is_seg and keys.parse_checkpoint_key(key) is not None
        if not (is_seg or is_ckpt):
            return self.primary.get(key, start, length)
        try:
            data = self.primary.get(key, start, length)
        except NotFound:
            return self._repair(key, start, length, missing=True, original=None)
        if is_ckpt:
            if start == 0 and length is None:
                try:
                    decode_checkpoint(data, key)
                except IntegrityError:
                    return self._repair(key, start, length, missing=False, original=data)
            return data
        try:
            hdr = self._header(key)
        except IntegrityError:
            return self._repair(key, start, length, missing=False, original=data)
        except NotFound:  # deleted between the two GETs (GC): the engine decides
            return data
        if start < hdr.data_start:
            try:
                if start == 0 and len(data) >= segment_header_length(data, key):
                    decode_segment_header(data, key)
            except IntegrityError:
                return self._repair(key, start, length, missing=False, original=data)
        if length is not None and len(data) < length and start + len(data) < self._end(hdr):
            return self._repair(key, start, length, missing=False, original=data)
        if not _range_ok(hdr, start, data):
            return self._repair(key, start, length, missing=False, original=data)
        return data

    @staticmethod
    def _end(hdr: SegmentHeader) -> int:
        return hdr.data_start + hdr.data_len

    def _header(self, key: str) -> SegmentHeader:
        with self._lock:
            hdr = self._headers.get(key)
            if hdr is not None:
                self._headers.move_to_end(key)
                return hdr
        self.repair_stats.header_fetches += 1
        hdr = decode_segment_header(read_segment_head(self.primary, key), key)
        self._remember(key, hdr)
        return hdr

    def _remember(self, key: str, hdr: SegmentHeader) -> None:
        with self._lock:
            self._headers[key] = hdr
            while len(self._headers) > self._max_headers:
                self._headers.popitem(last=False)

    def _repair(
        self, key: str, start: int, length: int | None, *, missing: bool, original: bytes | None
    ) -> bytes:
        try:
            blob = self.secondary.get(key)
            verify_object(blob, key)
        except (NotFound, IntegrityError):
            self.repair_stats.unrepairable += 1
            if original is None:
                raise NotFound(f"object {key!r} does not exist (nor on the secondary)") from None
            return original
        # Write the good copy back. A missing key is created only if still absent, so a repair
        # can never take a log position from a writer; a corrupt one is replaced atomically.
        with contextlib.suppress(PreconditionFailed):
            self.primary.put(key, blob, if_none_match=missing)
        if missing:
            self.repair_stats.repaired_missing += 1
        else:
            self.repair_stats.repaired_corrupt += 1
        if keys.parse_segment_key(key) is not None:
            self._remember(key, decode_segment_header(blob, key))
        end = len(blob) if length is None else min(len(blob), start + length)
        return blob[start:end]

    # -- everything else goes to the primary ----------------------------------------------

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        return self.primary.put(key, data, if_none_match=if_none_match, if_match=if_match)

    def delete(self, key: str) -> None:
        with self._lock:
            self._headers.pop(key, None)
        self.primary.delete(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.primary.list(prefix, start_after)

    def head(self, key: str) -> ObjectInfo:
        return self.primary.head(key)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()
