"""The segment format: log records, their checksums, and the segment codec (encode, decode).

Sits between the engine (blockstore/engine/, which decides what goes in a segment and when) and
the object store (which only sees opaque bytes). docs/format.md describes the bytes; this module
and `checkpoint.py` beside it are the only code that reads or writes them.

A segment is `prefix | header body | data`:

    prefix  = magic "BLKSEG01" | u16 version | u16 flags | u32 body length | u64 xxh3_64(body)
    body    = u64 seq | u32 epoch | u32 chunk | u16 len + disk id | u32 n | n records
    record  = u8 kind | u64 disk offset | u64 length | (WRITE only) u64 data offset | sums
    sums    = one little-endian u64 xxh3_64 per `chunk` bytes of the record's data (last short)

A segment with no records is a *fence*: a new writer's claim on a log position (docs/format.md).

Version 3 is version 2 with the `SEALED` flag (an encrypted disk's segments, fences included):
the body holds the data key's id (8 bytes) after the disk id, every WRITE record its chunks'
AES-GCM tags after its sums (which are then of the ciphertext, so integrity is checked without
the key), and the body ends with a 16-byte tag authenticating the whole header
(blockstore/crypto/seal.py). Decoding checks integrity only; `check_header` (with the keys)
authenticity. Plain disks write version 2, so old readers read them unchanged.

Records apply in order. Data offsets in the body are relative to the end of the body; decoded
`LogRecord.data_off` is absolute within the object so a read is one ranged GET.

Guarantees: anything malformed (bad magic, unknown version, checksum mismatch, truncated, a
record pointing outside the object) raises `IntegrityError`; decoders never return partial
results. Data checksums are verified by `verify_chunks` on every byte fetched.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from blockstore.crypto.seal import KEY_RAW, MAC_BYTES, SEAL_INFO, TAG_BYTES, Sealer
from blockstore.errors import IntegrityError

FORMAT_VERSION = 2  # 2: one segment key per seq, fences; checkpoints list fence seqs
SEALED_VERSION = 3  # 3: version 2, sealed (flag SEALED): an encrypted disk's objects
SEALED = 1  # prefix flag
SEG_MAGIC = b"BLKSEG01"

WRITE = 1
TRIM = 2
RESIZE = 3

_SEG_PREFIX = struct.Struct("<8sHHIQ")  # magic, version, flags, body length, xxh3 of body
SEG_PREFIX_LEN = _SEG_PREFIX.size
_SEG_FIXED = struct.Struct("<QIIH")  # seq, epoch, chunk, disk id length
_REC_HEAD = struct.Struct("<BQQ")  # kind, offset, length
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
U16 = struct.Struct("<H")
SUM_LEN = U64.size  # one xxh3_64 per checksum chunk

MAX_OFFSET = 1 << 62


def n_chunks(length: int, chunk: int) -> int:
    return -(-length // chunk)


class LogRecord:
    """One record of the segment log (WRITE, TRIM or RESIZE). WRITE records also describe
    where their data lives.

    While a write is pending, `mem` holds its bytes and `seg_key` is empty; once its segment is
    encoded, `seg_key`, `data_off`, `chunk` and `sums` say where the bytes are in the store, and
    after the segment is acknowledged the volume drops `mem`.
    """

    __slots__ = (
        "chunk",
        "data_off",
        "kind",
        "length",
        "mem",
        "offset",
        "seal",
        "seg_key",
        "sums",
    )

    def __init__(
        self,
        kind: int,
        offset: int,
        length: int,
        *,
        mem: bytes | memoryview | None = None,
        seg_key: str = "",
        data_off: int = 0,
        chunk: int = 0,
        sums: bytes = b"",
        seal: bytes = b"",
    ) -> None:
        self.kind = kind
        self.offset = offset  # disk offset; the new size for RESIZE
        self.length = length
        self.mem = mem
        self.seg_key = seg_key
        self.data_off = data_off
        self.chunk = chunk
        self.sums = sums
        # Sealed records (an encrypted disk's): `SEAL_INFO` then one AES-GCM tag per chunk;
        # `sums` are then of the ciphertext. Empty for a plain record.
        self.seal = seal

    def __repr__(self) -> str:
        return (
            f"LogRecord(kind={self.kind}, offset={self.offset}, length={self.length}, "
            f"seg={self.seg_key!r})"
        )


def encoded_size(kind: int, length: int, chunk: int) -> int:
    """Bytes a record adds to its segment: its header entry and, for a WRITE, its data offset,
    checksums and data (a sealed record's tags, 0.4% more, are not counted). The engine
    closes a batch on this count."""
    if kind == WRITE:
        return _REC_HEAD.size + U64.size + SUM_LEN * n_chunks(length, chunk) + length
    return _REC_HEAD.size


def fence_sizes(disk_id: str) -> tuple[int, int]:
    """The sizes of a fence of `disk_id` (no records), plain and sealed. A record adds 17
    bytes or more, so no segment that holds records has either size."""
    plain = SEG_PREFIX_LEN + _SEG_FIXED.size + len(disk_id.encode()) + U32.size
    return plain, plain + KEY_RAW + MAC_BYTES


class Cursor:
    """Reads fields in order from a decoded body. A struct read past the end raises
    `struct.error`; `take` past the end returns fewer bytes (the caller checks where the format
    requires it). The decoders turn both into `IntegrityError`."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out

    def read_int(self, st: struct.Struct) -> int:
        return int(self.unpack(st)[0])

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def left(self) -> int:
        return len(self.buf) - self.pos


def _digests(mv: memoryview, chunk: int) -> bytes:
    n = n_chunks(len(mv), chunk)
    digest = xxhash.xxh3_64_intdigest
    return struct.pack(f"<{n}Q", *[digest(mv[i * chunk : (i + 1) * chunk]) for i in range(n)])


def chunk_sums(data: bytes | memoryview, chunk: int) -> bytes:
    """xxh3_64 of every `chunk` bytes of `data`, packed little-endian."""
    return _digests(memoryview(data), chunk)


def verify_chunks(rec: LogRecord, first_chunk: int, data: bytes | memoryview) -> int | None:
    """Check `data` (the record's bytes from chunk `first_chunk` on) against the record's sums.

    Returns None when every chunk matches, else the record-relative byte offset of the first bad
    chunk. One checksum per chunk: a 4 KiB read of a 4 MiB extent verifies 4 KiB.
    """
    got = _digests(memoryview(data), rec.chunk)
    want = rec.sums[SUM_LEN * first_chunk : SUM_LEN * first_chunk + len(got)]
    if got == want:
        return None
    for i in range(0, len(got), SUM_LEN):
        if got[i : i + SUM_LEN] != want[i : i + SUM_LEN]:
            return (first_chunk + i // SUM_LEN) * rec.chunk
    return None  # pragma: no cover - unreachable: the two differ somewhere


# --- encoding -----------------------------------------------------------------------------


def encode_segment(
    key: str,
    disk_id: str,
    seq: int,
    epoch: int,
    chunk: int,
    records: Sequence[LogRecord],
    sealer: Sealer | None = None,
) -> bytes:
    """The segment object for `records` (in order), sealed under `sealer` if given. Fills in
    each WRITE record's `seg_key`, `data_off`, `chunk` and `sums` (and `seal`), so the records
    can go into the durable map once the PUT is acknowledged."""
    did = disk_id.encode()
    parts = [_SEG_FIXED.pack(seq, epoch, chunk, len(did)), did]
    if sealer is not None:
        parts.append(sealer.key_raw)
    parts.append(U32.pack(len(records)))
    data: list[bytes | memoryview] = []
    rel = index = 0
    for rec in records:
        parts.append(_REC_HEAD.pack(rec.kind, rec.offset, rec.length))
        if rec.kind != WRITE:
            continue
        assert rec.mem is not None and len(rec.mem) == rec.length
        stored: bytes | memoryview = rec.mem
        if sealer is not None:
            stored, tags = sealer.seal(seq, epoch, index, rec.offset, memoryview(rec.mem), chunk)
            rec.seal = sealer.info(seq, epoch, index, rec.offset) + tags
            index += n_chunks(rec.length, chunk)
        rec.sums = chunk_sums(stored, chunk)
        rec.chunk = chunk
        parts += [U64.pack(rel), rec.sums]
        if sealer is not None:
            parts.append(rec.seal[SEAL_INFO.size :])
        rec.data_off = rel  # made absolute below, once the body length is known
        rel += rec.length
        data.append(stored)
    version, flags = FORMAT_VERSION, 0
    if sealer is not None:
        version, flags = SEALED_VERSION, SEALED
        parts.append(sealer.mac(_signed(version, flags, b"".join(parts))))
    body = b"".join(parts)
    data_start = SEG_PREFIX_LEN + len(body)
    prefix = _SEG_PREFIX.pack(SEG_MAGIC, version, flags, len(body), xxhash.xxh3_64_intdigest(body))
    for rec in records:
        if rec.kind == WRITE:
            rec.data_off += data_start
            rec.seg_key = key
    return b"".join([prefix, body, *data])


def _signed(version: int, flags: int, body: bytes | memoryview) -> bytes:
    """What a sealed header's tag authenticates: the version, the flags and the body before
    the tag (so a sealed header cannot pass for a plain one)."""
    return SEG_MAGIC + U16.pack(version) + U16.pack(flags) + bytes(body)


# --- decoding -----------------------------------------------------------------------------


@dataclass
class SegmentHeader:
    seq: int
    epoch: int
    disk_id: str
    chunk: int
    records: list[LogRecord]
    data_start: int
    data_len: int
    key_raw: bytes = b""  # sealed: the data key's id; its tag and what the tag authenticates
    mac: bytes = b""
    signed: bytes = b""

    @property
    def sealed(self) -> bool:
        return bool(self.key_raw)


def segment_header_length(prefix: bytes, key: str) -> int:
    """Total bytes of prefix + body, from the first `SEG_PREFIX_LEN` bytes of a segment."""
    if len(prefix) < SEG_PREFIX_LEN:
        raise IntegrityError(f"segment {key}: object is {len(prefix)} bytes, shorter than a header")
    magic, version, _flags, body_len, _sum = _SEG_PREFIX.unpack_from(prefix)
    if magic != SEG_MAGIC:
        raise IntegrityError(f"segment {key}: bad magic {magic!r}")
    if version not in (FORMAT_VERSION, SEALED_VERSION):
        raise IntegrityError(f"segment {key}: unsupported format version {version}")
    return SEG_PREFIX_LEN + int(body_len)


def decode_segment_header(blob: bytes, key: str, object_size: int | None = None) -> SegmentHeader:
    """Decode and verify a segment header from the first bytes of the object (at least
    `segment_header_length` of them). `object_size`, when known, bounds the data records."""
    total = segment_header_length(blob, key)
    if len(blob) < total:
        raise IntegrityError(f"segment {key}: header truncated ({len(blob)} of {total} bytes)")
    _m, version, flags, _body_len, body_sum = _SEG_PREFIX.unpack_from(blob)
    body = memoryview(blob)[SEG_PREFIX_LEN:total]
    if xxhash.xxh3_64_intdigest(body) != body_sum:
        raise IntegrityError(f"segment {key}: header checksum mismatch")
    sealed = version == SEALED_VERSION
    if sealed != (flags == SEALED):
        raise IntegrityError(f"segment {key}: version {version} with flags {flags}")
    mac, signed = b"", b""
    if sealed:
        if len(body) < MAC_BYTES:
            raise IntegrityError(f"segment {key}: sealed header too short")
        mac, signed = bytes(body[-MAC_BYTES:]), _signed(version, flags, body[:-MAC_BYTES])
        body = body[:-MAC_BYTES]
    cur = Cursor(body)
    try:
        seq, epoch, chunk, did_len = cur.unpack(_SEG_FIXED)
        disk_id = cur.take(did_len).decode()
        kraw = cur.take(KEY_RAW) if sealed else b""
        n = cur.read_int(U32)
        if chunk <= 0:
            raise IntegrityError(f"segment {key}: chunk size {chunk}")
        records = _decode_records(cur, key, n, chunk, total, (kraw, seq, epoch))
        if cur.left():
            raise IntegrityError(f"segment {key}: {cur.left()} stray bytes in header")
    except (struct.error, UnicodeDecodeError) as exc:
        raise IntegrityError(f"segment {key}: malformed header ({exc})") from exc
    data_len = max((r.data_off - total + r.length for r in records if r.kind == WRITE), default=0)
    if object_size is not None and total + data_len > object_size:
        raise IntegrityError(
            f"segment {key}: records need {total + data_len} bytes, object has {object_size}"
        )
    return SegmentHeader(seq, epoch, disk_id, chunk, records, total, data_len, kraw, mac, signed)


def _decode_records(
    cur: Cursor, key: str, n: int, chunk: int, data_start: int, seal: tuple[bytes, int, int]
) -> list[LogRecord]:
    """The `n` records of a header; sealed ones (`seal[0]`, the key id, not empty) with their
    seal info: key, epoch, position, first chunk index in the segment, disk offset."""
    kraw, seq, epoch = seal
    records: list[LogRecord] = []
    index = 0
    for _ in range(n):
        rec = _decode_record(cur, key, chunk, data_start)
        if kraw and rec.kind == WRITE:
            nch = n_chunks(rec.length, chunk)
            tags = cur.take(TAG_BYTES * nch)
            if len(tags) != TAG_BYTES * nch:
                raise IntegrityError(f"segment {key}: tag list truncated")
            rec.seal = SEAL_INFO.pack(kraw, epoch, seq, index, rec.offset) + tags
            index += nch
        records.append(rec)
    return records


def _decode_record(cur: Cursor, key: str, chunk: int, data_start: int) -> LogRecord:
    """One record of a segment header; a WRITE's data offset made absolute (+ `data_start`)."""
    kind, offset, length = cur.unpack(_REC_HEAD)
    if offset > MAX_OFFSET or length > MAX_OFFSET:
        raise IntegrityError(f"segment {key}: record offset/length out of range")
    if kind in (TRIM, RESIZE):
        return LogRecord(kind, offset, length)
    if kind != WRITE:
        raise IntegrityError(f"segment {key}: unknown record kind {kind}")
    rel = cur.read_int(U64)
    nsum = SUM_LEN * n_chunks(length, chunk)
    sums = cur.take(nsum)
    if len(sums) != nsum:
        raise IntegrityError(f"segment {key}: checksum list truncated")
    return LogRecord(
        WRITE, offset, length, seg_key=key, data_off=data_start + rel, chunk=chunk, sums=sums
    )
