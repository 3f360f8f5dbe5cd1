"""The on-store format: log segments and checkpoints (encode, decode, verify).

Sits between `volume.py` (which decides what goes in a segment and when) and the object store
(which only sees opaque bytes). docs/format.md describes the bytes; this module is the only code
that reads or writes them.

A segment is `prefix | header body | data`:

    prefix  = magic "BLKSEG01" | u16 version | u16 flags | u32 body length | u64 xxh3_64(body)
    body    = u64 seq | u32 epoch | u32 chunk | u16 len + disk id | u32 n | n records
    record  = u8 kind | u64 disk offset | u64 length | (WRITE only) u64 data offset | sums
    sums    = one little-endian u64 xxh3_64 per `chunk` bytes of the record's data (last short)

A segment with no records is a *fence*: a new writer's claim on a log position (docs/format.md).

Records apply in order. Data offsets in the body are relative to the end of the body; decoded
`Record.data_off` is absolute within the object so a read is one ranged GET. A checkpoint is
`magic "BLKCKP01" | u16 version | u16 flags | u32 0 | u64 xxh3_64(body) | u64 body length | body`
with the whole extent map, the size, the log's epoch and fence positions at that seq, and the
table of segments it references.

Guarantees: anything malformed (bad magic, unknown version, checksum mismatch, truncated, a
record pointing outside the object) raises `IntegrityError`; decoders never return partial
results. Data checksums are verified by `verify_chunks` on every byte fetched.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from blockstore.errors import IntegrityError

FORMAT_VERSION = 2  # 2: one segment key per seq, fences; checkpoints list fence seqs
SEG_MAGIC = b"BLKSEG01"
CKPT_MAGIC = b"BLKCKP01"

WRITE = 1
TRIM = 2
RESIZE = 3

_SEG_PREFIX = struct.Struct("<8sHHIQ")  # magic, version, flags, body length, xxh3 of body
SEG_PREFIX_LEN = _SEG_PREFIX.size
_SEG_FIXED = struct.Struct("<QIIH")  # seq, epoch, chunk, disk id length
_REC_HEAD = struct.Struct("<BQQ")  # kind, offset, length
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_CKPT_PREFIX = struct.Struct("<8sHHIQQ")  # magic, version, flags, reserved, xxh3, body length
_CKPT_FIXED = struct.Struct("<QIQIH")  # seq, epoch, size, chunk (unused, 0), disk id length
_CKPT_REC = struct.Struct("<IQQI")  # segment index, data offset, length, chunk
_CKPT_EXT = struct.Struct("<QQIQ")  # start, end, record index, delta

MAX_OFFSET = 1 << 62


def n_chunks(length: int, chunk: int) -> int:
    return -(-length // chunk)


class Record:
    """One log record. WRITE records also describe where their data lives.

    While a write is pending, `mem` holds its bytes and `seg_key` is empty; once its segment is
    encoded, `seg_key`, `data_off`, `chunk` and `sums` say where the bytes are in the store, and
    after the segment is acknowledged the volume drops `mem`.
    """

    __slots__ = ("chunk", "data_off", "kind", "length", "mem", "offset", "seg_key", "sums")

    def __init__(
        self,
        kind: int,
        offset: int,
        length: int,
        *,
        mem: bytes | None = None,
        seg_key: str = "",
        data_off: int = 0,
        chunk: int = 0,
        sums: bytes = b"",
    ) -> None:
        self.kind = kind
        self.offset = offset  # disk offset; the new size for RESIZE
        self.length = length
        self.mem = mem
        self.seg_key = seg_key
        self.data_off = data_off
        self.chunk = chunk
        self.sums = sums

    def __repr__(self) -> str:
        return (
            f"Record(kind={self.kind}, offset={self.offset}, length={self.length}, "
            f"seg={self.seg_key!r})"
        )


def _digests(mv: memoryview, chunk: int) -> bytes:
    n = n_chunks(len(mv), chunk)
    digest = xxhash.xxh3_64_intdigest
    return struct.pack(f"<{n}Q", *[digest(mv[i * chunk : (i + 1) * chunk]) for i in range(n)])


def chunk_sums(data: bytes | memoryview, chunk: int) -> bytes:
    """xxh3_64 of every `chunk` bytes of `data`, packed little-endian."""
    return _digests(memoryview(data), chunk)


def verify_chunks(rec: Record, first_chunk: int, data: bytes | memoryview) -> int | None:
    """Check `data` (the record's bytes from chunk `first_chunk` on) against the record's sums.

    Returns None when every chunk matches, else the record-relative byte offset of the first bad
    chunk. One checksum per chunk: a 4 KiB read of a 4 MiB extent verifies 4 KiB.
    """
    got = _digests(memoryview(data), rec.chunk)
    want = rec.sums[8 * first_chunk : 8 * first_chunk + len(got)]
    if got == want:
        return None
    for i in range(0, len(got), 8):
        if got[i : i + 8] != want[i : i + 8]:
            return (first_chunk + i // 8) * rec.chunk
    return None  # pragma: no cover - unreachable: the two differ somewhere


# --- segments -----------------------------------------------------------------------------


def encode_segment(
    key: str, disk_id: str, seq: int, epoch: int, chunk: int, records: Sequence[Record]
) -> bytes:
    """The segment object for `records` (in order). Fills in each WRITE record's `seg_key`,
    `data_off`, `chunk` and `sums`, so the records can go into the durable map once the PUT is
    acknowledged."""
    did = disk_id.encode()
    parts = [_SEG_FIXED.pack(seq, epoch, chunk, len(did)), did, _U32.pack(len(records))]
    rel = 0
    for rec in records:
        parts.append(_REC_HEAD.pack(rec.kind, rec.offset, rec.length))
        if rec.kind == WRITE:
            assert rec.mem is not None and len(rec.mem) == rec.length
            rec.sums = chunk_sums(rec.mem, chunk)
            rec.chunk = chunk
            parts.append(_U64.pack(rel))
            parts.append(rec.sums)
            rec.data_off = rel  # made absolute below, once the body length is known
            rel += rec.length
    body = b"".join(parts)
    data_start = SEG_PREFIX_LEN + len(body)
    prefix = _SEG_PREFIX.pack(
        SEG_MAGIC, FORMAT_VERSION, 0, len(body), xxhash.xxh3_64_intdigest(body)
    )
    out = [prefix, body]
    for rec in records:
        if rec.kind == WRITE:
            rec.data_off += data_start
            rec.seg_key = key
            assert rec.mem is not None
            out.append(rec.mem)
    return b"".join(out)


@dataclass
class SegmentHeader:
    seq: int
    epoch: int
    disk_id: str
    chunk: int
    records: list[Record]
    data_start: int
    data_len: int


def segment_header_length(prefix: bytes, key: str) -> int:
    """Total bytes of prefix + body, from the first `SEG_PREFIX_LEN` bytes of a segment."""
    if len(prefix) < SEG_PREFIX_LEN:
        raise IntegrityError(f"segment {key}: object is {len(prefix)} bytes, shorter than a header")
    magic, version, _flags, body_len, _sum = _SEG_PREFIX.unpack_from(prefix)
    if magic != SEG_MAGIC:
        raise IntegrityError(f"segment {key}: bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"segment {key}: unsupported format version {version}")
    return SEG_PREFIX_LEN + int(body_len)


def decode_segment_header(blob: bytes, key: str, object_size: int | None = None) -> SegmentHeader:
    """Decode and verify a segment header from the first bytes of the object (at least
    `segment_header_length` of them). `object_size`, when known, bounds the data records."""
    total = segment_header_length(blob, key)
    if len(blob) < total:
        raise IntegrityError(f"segment {key}: header truncated ({len(blob)} of {total} bytes)")
    _m, _v, _f, _body_len, body_sum = _SEG_PREFIX.unpack_from(blob)
    body = memoryview(blob)[SEG_PREFIX_LEN:total]
    if xxhash.xxh3_64_intdigest(body) != body_sum:
        raise IntegrityError(f"segment {key}: header checksum mismatch")
    try:
        seq, epoch, chunk, did_len = _SEG_FIXED.unpack_from(body, 0)
        pos = _SEG_FIXED.size
        disk_id = bytes(body[pos : pos + did_len]).decode()
        pos += did_len
        (n,) = _U32.unpack_from(body, pos)
        pos += 4
        if chunk <= 0:
            raise IntegrityError(f"segment {key}: chunk size {chunk}")
        records: list[Record] = []
        data_len = 0
        for _ in range(n):
            kind, offset, length = _REC_HEAD.unpack_from(body, pos)
            pos += _REC_HEAD.size
            if offset > MAX_OFFSET or length > MAX_OFFSET:
                raise IntegrityError(f"segment {key}: record offset/length out of range")
            if kind == WRITE:
                (rel,) = _U64.unpack_from(body, pos)
                pos += 8
                nsum = 8 * n_chunks(length, chunk)
                sums = bytes(body[pos : pos + nsum])
                if len(sums) != nsum:
                    raise IntegrityError(f"segment {key}: checksum list truncated")
                pos += nsum
                rec = Record(
                    WRITE,
                    offset,
                    length,
                    seg_key=key,
                    data_off=total + rel,
                    chunk=chunk,
                    sums=sums,
                )
                data_len = max(data_len, rel + length)
                records.append(rec)
            elif kind in (TRIM, RESIZE):
                records.append(Record(kind, offset, length))
            else:
                raise IntegrityError(f"segment {key}: unknown record kind {kind}")
        if pos != len(body):
            raise IntegrityError(f"segment {key}: {len(body) - pos} stray bytes in header")
    except (struct.error, UnicodeDecodeError) as exc:
        raise IntegrityError(f"segment {key}: malformed header ({exc})") from exc
    if object_size is not None and total + data_len > object_size:
        raise IntegrityError(
            f"segment {key}: records need {total + data_len} bytes, object has {object_size}"
        )
    return SegmentHeader(seq, epoch, disk_id, chunk, records, total, data_len)


# --- checkpoints --------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A decoded checkpoint: the durable state of a volume after applying segment `seq`."""

    disk_id: str
    seq: int
    epoch: int  # the log's epoch at `seq`: the highest epoch of any segment applied so far
    size: int
    starts: list[int]
    ends: list[int]
    vals: list[tuple[Record, int]]
    segments: dict[str, int]  # every segment key the map references -> its data bytes
    fences: list[int]  # seqs of the first segment of every epoch in the log (never deleted)


def encode_checkpoint(
    disk_id: str,
    seq: int,
    epoch: int,
    size: int,
    starts: list[int],
    ends: list[int],
    vals: list[tuple[Record, int]],
    segment_sizes: dict[str, int],
    fences: Sequence[int] = (),
) -> bytes:
    seg_index: dict[str, int] = {}
    rec_index: dict[int, int] = {}
    seg_parts: list[bytes] = []
    rec_parts: list[bytes] = []
    ext_parts: list[bytes] = []
    for s, e, (rec, delta) in zip(starts, ends, vals, strict=True):
        ri = rec_index.get(id(rec))
        if ri is None:
            si = seg_index.get(rec.seg_key)
            if si is None:
                si = seg_index[rec.seg_key] = len(seg_index)
                k = rec.seg_key.encode()
                seg_parts.append(
                    _U16.pack(len(k)) + k + _U64.pack(segment_sizes.get(rec.seg_key, 0))
                )
            ri = rec_index[id(rec)] = len(rec_index)
            rec_parts.append(_CKPT_REC.pack(si, rec.data_off, rec.length, rec.chunk) + rec.sums)
        ext_parts.append(_CKPT_EXT.pack(s, e, ri, delta))
    did = disk_id.encode()
    body = b"".join(
        [
            _CKPT_FIXED.pack(seq, epoch, size, 0, len(did)),
            did,
            _U32.pack(len(fences)),
            *(_U64.pack(f) for f in fences),
            _U32.pack(len(seg_parts)),
            *seg_parts,
            _U32.pack(len(rec_parts)),
            *rec_parts,
            _U64.pack(len(ext_parts)),
            *ext_parts,
        ]
    )
    prefix = _CKPT_PREFIX.pack(
        CKPT_MAGIC, FORMAT_VERSION, 0, 0, xxhash.xxh3_64_intdigest(body), len(body)
    )
    return prefix + body


def decode_checkpoint(blob: bytes, key: str) -> Checkpoint:
    if len(blob) < _CKPT_PREFIX.size:
        raise IntegrityError(f"checkpoint {key}: truncated ({len(blob)} bytes)")
    magic, version, _flags, _res, body_sum, body_len = _CKPT_PREFIX.unpack_from(blob)
    if magic != CKPT_MAGIC:
        raise IntegrityError(f"checkpoint {key}: bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"checkpoint {key}: unsupported format version {version}")
    body = memoryview(blob)[_CKPT_PREFIX.size :]
    if len(body) != body_len or xxhash.xxh3_64_intdigest(body) != body_sum:
        raise IntegrityError(f"checkpoint {key}: checksum or length mismatch")
    try:
        seq, epoch, size, _chunk, did_len = _CKPT_FIXED.unpack_from(body, 0)
        pos = _CKPT_FIXED.size
        disk_id = bytes(body[pos : pos + did_len]).decode()
        pos += did_len
        (nfence,) = _U32.unpack_from(body, pos)
        pos += 4
        fences = [_U64.unpack_from(body, pos + 8 * i)[0] for i in range(nfence)]
        pos += 8 * nfence
        (nseg,) = _U32.unpack_from(body, pos)
        pos += 4
        seg_keys: list[str] = []
        segments: dict[str, int] = {}
        for _ in range(nseg):
            (klen,) = _U16.unpack_from(body, pos)
            pos += 2
            k = bytes(body[pos : pos + klen]).decode()
            pos += klen
            (dlen,) = _U64.unpack_from(body, pos)
            pos += 8
            seg_keys.append(k)
            segments[k] = dlen
        (nrec,) = _U32.unpack_from(body, pos)
        pos += 4
        recs: list[Record] = []
        for _ in range(nrec):
            si, data_off, length, chunk = _CKPT_REC.unpack_from(body, pos)
            pos += _CKPT_REC.size
            if chunk <= 0:
                raise IntegrityError(f"checkpoint {key}: chunk size {chunk}")
            nsum = 8 * n_chunks(length, chunk)
            sums = bytes(body[pos : pos + nsum])
            pos += nsum
            recs.append(
                Record(
                    WRITE,
                    0,
                    length,
                    seg_key=seg_keys[si],
                    data_off=data_off,
                    chunk=chunk,
                    sums=sums,
                )
            )
        (next_,) = _U64.unpack_from(body, pos)
        pos += 8
        starts: list[int] = []
        ends: list[int] = []
        vals: list[tuple[Record, int]] = []
        end_pos = pos + next_ * _CKPT_EXT.size
        if end_pos != len(body):
            raise IntegrityError(f"checkpoint {key}: extent table length mismatch")
        prev_end = 0
        for s, e, ri, delta in _CKPT_EXT.iter_unpack(body[pos:end_pos]):
            rec = recs[ri]
            if s < prev_end or e <= s or delta + (e - s) > rec.length:
                raise IntegrityError(f"checkpoint {key}: extent [{s}, {e}) is inconsistent")
            prev_end = e
            starts.append(s)
            ends.append(e)
            vals.append((rec, delta))
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise IntegrityError(f"checkpoint {key}: malformed ({exc})") from exc
    return Checkpoint(disk_id, seq, epoch, size, starts, ends, vals, segments, fences)
