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

Version 3 is version 2 with flags. `SEALED` (an encrypted disk's segments, fences included):
the body holds the data key's id (8 bytes) after the disk id, every WRITE record its chunks'
AES-GCM tags after its sums (which are then of the stored bytes, so integrity is checked
without the key), and the body ends with a 16-byte tag authenticating the whole header
(blockstore/crypto/seal.py). `COMPRESSED` (a compressed disk's): every WRITE record then ends
with `u8 codec` and, unless it is 0 (stored as it is), each chunk's stored length (u32): chunks
are compressed one by one (blockstore/format/codec.py), before sealing. Decoding checks
integrity only; `DiskKeys.check` (with the keys) authenticity. Plain disks write version 2, so
old readers read them unchanged.

Records apply in order. Data offsets in the body are relative to the end of the body; decoded
`LogRecord.data_off` is absolute within the object so a read is one ranged GET.

Guarantees: anything malformed (bad magic, unknown version, checksum mismatch, truncated, a
record pointing outside the object) raises `IntegrityError`; decoders never return partial
results. Data checksums are verified by `verify_chunks` on every byte fetched.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from blockstore.crypto.seal import KEY_RAW, MAC_BYTES, SEAL_INFO, TAG_BYTES, Sealer
from blockstore.errors import IntegrityError
from blockstore.format.codec import compress
from blockstore.format.cursor import Cursor

FORMAT_VERSION = 2  # 2: one segment key per seq, fences; checkpoints list fence seqs
SEALED_VERSION = 3  # 3: version 2 with flags: an encrypted or compressed disk's objects
SEALED = 1  # prefix flags
COMPRESSED = 2
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
        "_offs",
        "chunk",
        "comp",
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
        comp: bytes = b"",
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
        # Compressed records: u8 codec, then each chunk's stored length (u32); empty for a
        # record stored as it is (chunk c at c * chunk, `chunk` bytes long).
        self.comp = comp
        self._offs: list[int] | None = None

    def stored_span(self, c0: int, c1: int) -> tuple[int, int]:
        """Where the stored bytes of chunks [c0, c1) lie, relative to `data_off`."""
        if not self.comp:
            return c0 * self.chunk, min(c1 * self.chunk, self.length)
        offs = self._offsets()
        return offs[c0], offs[min(c1, len(offs) - 1)]

    @property
    def stored_length(self) -> int:
        return self.stored_span(0, n_chunks(self.length, self.chunk))[1]

    def _offsets(self) -> list[int]:
        if self._offs is None:
            lens = struct.unpack_from(f"<{n_chunks(self.length, self.chunk)}I", self.comp, 1)
            self._offs = [0, *itertools.accumulate(lens)]
        return self._offs

    def stored_pieces(self, first_chunk: int, data: memoryview) -> list[memoryview]:
        """`data` (the stored bytes from chunk `first_chunk` on) cut into its chunks."""
        if not self.comp:
            chunk = self.chunk
            return [data[i : i + chunk] for i in range(0, len(data), chunk)]
        offs = self._offsets()
        base = offs[first_chunk]
        out = []
        for c in range(first_chunk, len(offs) - 1):
            if offs[c] - base >= len(data):
                break
            out.append(data[offs[c] - base : offs[c + 1] - base])
        return out

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
    mv = memoryview(data)
    if rec.comp:
        digest = xxhash.xxh3_64_intdigest
        pieces = rec.stored_pieces(first_chunk, mv)
        got = struct.pack(f"<{len(pieces)}Q", *[digest(p) for p in pieces])
    else:
        got = _digests(mv, rec.chunk)
    want = rec.sums[SUM_LEN * first_chunk : SUM_LEN * first_chunk + len(got)]
    if got == want:
        return None
    for i in range(0, len(got), SUM_LEN):
        if got[i : i + SUM_LEN] != want[i : i + SUM_LEN]:
            return (first_chunk + i // SUM_LEN) * rec.chunk  # in plain bytes
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
    codec: int = 0,
) -> bytes:
    """The segment object for `records` (in order), compressed with `codec` and sealed under
    `sealer` if given. Fills in each WRITE record's `seg_key`, `data_off`, `chunk`, `sums`
    (and `comp`, `seal`), so the records can go into the durable map once the PUT is
    acknowledged."""
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
        stored = _store(rec, chunk, codec, sealer, (seq, epoch, index))
        index += n_chunks(rec.length, chunk)
        parts += [U64.pack(rel), rec.sums]
        if sealer is not None:
            parts.append(rec.seal[SEAL_INFO.size :])
        if codec:
            parts.append(rec.comp or b"\0")
        rec.data_off = rel  # made absolute below, once the body length is known
        rel += len(stored)
        data.append(stored)
    flags = (SEALED if sealer is not None else 0) | (COMPRESSED if codec else 0)
    version = SEALED_VERSION if flags else FORMAT_VERSION
    if sealer is not None:
        parts.append(sealer.mac(_signed(version, flags, b"".join(parts))))
    body = b"".join(parts)
    data_start = SEG_PREFIX_LEN + len(body)
    prefix = _SEG_PREFIX.pack(SEG_MAGIC, version, flags, len(body), xxhash.xxh3_64_intdigest(body))
    for rec in records:
        if rec.kind == WRITE:
            rec.data_off += data_start
            rec.seg_key = key
    return b"".join([prefix, body, *data])


def _store(
    rec: LogRecord, chunk: int, codec: int, sealer: Sealer | None, at: tuple[int, int, int]
) -> bytes | memoryview:
    """A WRITE record's bytes as stored: each chunk compressed (when the record then takes
    less room), then sealed; its `chunk`, `comp`, `seal` and `sums` set to match. `at`: the
    position, epoch, and index in the segment of the record's first chunk."""
    assert rec.mem is not None and len(rec.mem) == rec.length
    mem = memoryview(rec.mem)
    rec.chunk, rec.comp, rec.seal, rec._offs = chunk, b"", b"", None  # a batch sent again
    stored: bytes | memoryview = mem
    pieces: list[bytes | memoryview] = []
    if codec:
        pieces = [compress(codec, mem[i : i + chunk]) for i in range(0, len(mem), chunk)]
        lens = [len(p) for p in pieces]
        if sum(lens) < len(mem):
            rec.comp = bytes([codec]) + struct.pack(f"<{len(lens)}I", *lens)
            stored = b"".join(pieces)
    if sealer is not None:
        seq, epoch, index = at
        if rec.comp:
            stored, tags = sealer.seal_pieces(seq, epoch, index, rec.offset, pieces)
        else:
            stored, tags = sealer.seal(seq, epoch, index, rec.offset, mem, chunk)
        rec.seal = sealer.info(seq, epoch, index, rec.offset) + tags
    if rec.comp:
        rec.sums = b"".join(U64.pack(xxhash.xxh3_64_intdigest(p))
                            for p in rec.stored_pieces(0, memoryview(stored)))  # fmt: skip
    else:
        rec.sums = chunk_sums(stored, chunk)
    return stored


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
    def plain_len(self) -> int:
        """The bytes the WRITE records hold, uncompressed (`data_len` is what they take in
        the object): what GC weighs live bytes against."""
        return sum(r.length for r in self.records if r.kind == WRITE)


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
    if (version == FORMAT_VERSION and flags) or (
        version == SEALED_VERSION and (not flags or flags & ~(SEALED | COMPRESSED))
    ):
        raise IntegrityError(f"segment {key}: version {version} with flags {flags}")
    sealed = bool(flags & SEALED)
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
        records = _decode_records(cur, key, n, chunk, total, (kraw, seq, epoch), flags)
        if cur.left():
            raise IntegrityError(f"segment {key}: {cur.left()} stray bytes in header")
    except (struct.error, UnicodeDecodeError) as exc:
        raise IntegrityError(f"segment {key}: malformed header ({exc})") from exc
    data_len = max(
        (r.data_off - total + r.stored_length for r in records if r.kind == WRITE), default=0
    )
    if object_size is not None and total + data_len > object_size:
        raise IntegrityError(
            f"segment {key}: records need {total + data_len} bytes, object has {object_size}"
        )
    return SegmentHeader(seq, epoch, disk_id, chunk, records, total, data_len, kraw, mac, signed)


def _decode_records(
    cur: Cursor,
    key: str,
    n: int,
    chunk: int,
    data_start: int,
    seal: tuple[bytes, int, int],
    flags: int,
) -> list[LogRecord]:
    """The `n` records of a header; sealed ones (`seal[0]`, the key id, not empty) with their
    seal info (key, epoch, position, first chunk index in the segment, disk offset), and with
    `COMPRESSED` in `flags` each WRITE's codec and stored chunk lengths."""
    kraw, seq, epoch = seal
    records: list[LogRecord] = []
    index = 0
    for _ in range(n):
        rec = _decode_record(cur, key, chunk, data_start)
        if rec.kind != WRITE:
            records.append(rec)
            continue
        nch = n_chunks(rec.length, chunk)
        if kraw:
            tags = cur.take(TAG_BYTES * nch)
            if len(tags) != TAG_BYTES * nch:
                raise IntegrityError(f"segment {key}: tag list truncated")
            rec.seal = SEAL_INFO.pack(kraw, epoch, seq, index, rec.offset) + tags
            index += nch
        if flags & COMPRESSED and cur.take(1) != b"\0":
            cur.pos -= 1
            rec.comp = cur.take(1 + 4 * nch)
            if len(rec.comp) != 1 + 4 * nch:
                raise IntegrityError(f"segment {key}: chunk length list truncated")
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
