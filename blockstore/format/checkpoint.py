"""The checkpoint format: a volume's whole durable state at one log position (encode, decode).

A checkpoint is

    prefix   magic "BLKCKP01" | u16 version | u16 flags | u32 0 | u64 xxh3_64(body) | u64 length
    body     u64 seq | u32 epoch | u64 size | u32 0 | u16 len + disk id
             u32 n | n fence seqs:  u64
             u32 n | n segments:    u16 len + key | u64 data bytes
             u32 n | n records:     u32 segment index | u64 data offset | u64 length | u32 chunk
                                    | sums
             u64 n | n extents:     u64 start | u64 end | u32 record index | u64 delta

that is the whole extent map, the size, the log's epoch and fence positions at that seq, and the
table of segments it references (docs/format.md, "Checkpoints"). Every record is a WRITE as
stored (`LogRecord` with the segment key, absolute data offset, chunk and checksums).

Version 3 (a map with sealed or compressed records): every record also carries `u32 len + seal`
and `u32 len + comp` (its `LogRecord.seal` and `.comp`, each empty where it does not apply).
With the flag `SEALED` (an encrypted disk's) the body ends with the data key's id (8 bytes) and
a 16-byte tag authenticating the rest (blockstore/crypto/seal.py), so an edited map fails to
open rather than serving older records.

Guarantees: the body checksum covers everything; anything malformed raises `IntegrityError`,
and `decode_checkpoint` never returns a partial map.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from blockstore.crypto.seal import KEY_RAW, MAC_BYTES, Sealer
from blockstore.errors import IntegrityError
from blockstore.format.segment import (
    FORMAT_VERSION,
    SEALED,
    SEALED_VERSION,
    SUM_LEN,
    U16,
    U32,
    U64,
    WRITE,
    Cursor,
    LogRecord,
    n_chunks,
)

CKPT_MAGIC = b"BLKCKP01"

_CKPT_PREFIX = struct.Struct("<8sHHIQQ")  # magic, version, flags, reserved, xxh3, body length
_CKPT_FIXED = struct.Struct("<QIQIH")  # seq, epoch, size, chunk (unused, 0), disk id length
_CKPT_REC = struct.Struct("<IQQI")  # segment index, data offset, length, chunk
_CKPT_EXT = struct.Struct("<QQIQ")  # start, end, record index, delta


@dataclass
class Checkpoint:
    """A decoded checkpoint: the durable state of a volume after applying segment `seq`."""

    disk_id: str
    seq: int
    epoch: int  # the log's epoch at `seq`: the highest epoch of any segment applied so far
    size: int
    starts: list[int]
    ends: list[int]
    vals: list[tuple[LogRecord, int]]
    segments: dict[str, int]  # every segment key the map references -> its data bytes
    fences: list[int]  # seqs of the first segment of every epoch in the log (never deleted)
    key_raw: bytes = b""  # sealed: the key it is authenticated under, its tag, what it covers
    mac: bytes = b""
    signed: bytes = b""


def encode_checkpoint(
    disk_id: str,
    seq: int,
    epoch: int,
    size: int,
    starts: list[int],
    ends: list[int],
    vals: list[tuple[LogRecord, int]],
    segment_sizes: dict[str, int],
    fences: Sequence[int] = (),
    sealer: Sealer | None = None,
) -> bytes:
    """The checkpoint object: version 3 when authenticated under `sealer` or when any record
    is sealed or compressed, else version 2."""
    extended = sealer is not None or any(rec.comp or rec.seal for rec, _d in vals)
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
                seg_parts.append(U16.pack(len(k)) + k + U64.pack(segment_sizes.get(rec.seg_key, 0)))
            ri = rec_index[id(rec)] = len(rec_index)
            part = _CKPT_REC.pack(si, rec.data_off, rec.length, rec.chunk) + rec.sums
            if extended:
                part += U32.pack(len(rec.seal)) + rec.seal + U32.pack(len(rec.comp)) + rec.comp
            rec_parts.append(part)
        ext_parts.append(_CKPT_EXT.pack(s, e, ri, delta))
    did = disk_id.encode()
    body = b"".join(
        [
            _CKPT_FIXED.pack(seq, epoch, size, 0, len(did)),
            did,
            U32.pack(len(fences)),
            *(U64.pack(f) for f in fences),
            U32.pack(len(seg_parts)),
            *seg_parts,
            U32.pack(len(rec_parts)),
            *rec_parts,
            U64.pack(len(ext_parts)),
            *ext_parts,
        ]
    )
    version = SEALED_VERSION if extended else FORMAT_VERSION
    flags = SEALED if sealer is not None else 0
    if sealer is not None:
        body += sealer.key_raw
        body += sealer.mac(_signed(version, flags, body))
    prefix = _CKPT_PREFIX.pack(
        CKPT_MAGIC, version, flags, 0, xxhash.xxh3_64_intdigest(body), len(body)
    )
    return prefix + body


def _signed(version: int, flags: int, body: bytes | memoryview) -> bytes:
    return CKPT_MAGIC + U16.pack(version) + U16.pack(flags) + bytes(body)


def decode_checkpoint(blob: bytes, key: str) -> Checkpoint:
    """Decode and verify a whole checkpoint object; raises `IntegrityError`."""
    body, version, flags = _verified_body(blob, key)
    sealed = flags == SEALED
    bad_flags = flags not in (0, SEALED) or (sealed and version != SEALED_VERSION)
    if bad_flags or (sealed and len(body) < KEY_RAW + MAC_BYTES):
        raise IntegrityError(f"checkpoint {key}: version {version} with flags {flags}")
    kraw, mac, signed = b"", b"", b""
    if sealed:
        mac, signed = bytes(body[-MAC_BYTES:]), _signed(version, flags, body[:-MAC_BYTES])
        kraw, body = bytes(body[-MAC_BYTES - KEY_RAW : -MAC_BYTES]), body[: -MAC_BYTES - KEY_RAW]
    cur = Cursor(body)
    try:
        seq, epoch, size, _chunk, did_len = cur.unpack(_CKPT_FIXED)
        disk_id = cur.take(did_len).decode()
        fences = [cur.read_int(U64) for _ in range(cur.read_int(U32))]
        seg_keys, segments = _decode_segments(cur)
        extended = version == SEALED_VERSION
        recs = [_decode_record(cur, key, seg_keys, extended) for _ in range(cur.read_int(U32))]
        starts, ends, vals = _decode_extents(cur, key, recs)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise IntegrityError(f"checkpoint {key}: malformed ({exc})") from exc
    return Checkpoint(
        disk_id, seq, epoch, size, starts, ends, vals, segments, fences, kraw, mac, signed
    )


def _verified_body(blob: bytes, key: str) -> tuple[memoryview, int, int]:
    """The body of a checkpoint object, its version and flags, after its prefix, version,
    length and checksum are checked."""
    if len(blob) < _CKPT_PREFIX.size:
        raise IntegrityError(f"checkpoint {key}: truncated ({len(blob)} bytes)")
    magic, version, flags, _res, body_sum, body_len = _CKPT_PREFIX.unpack_from(blob)
    if magic != CKPT_MAGIC:
        raise IntegrityError(f"checkpoint {key}: bad magic {magic!r}")
    if version not in (FORMAT_VERSION, SEALED_VERSION):
        raise IntegrityError(f"checkpoint {key}: unsupported format version {version}")
    body = memoryview(blob)[_CKPT_PREFIX.size :]
    if len(body) != body_len or xxhash.xxh3_64_intdigest(body) != body_sum:
        raise IntegrityError(f"checkpoint {key}: checksum or length mismatch")
    return body, version, flags


def _decode_segments(cur: Cursor) -> tuple[list[str], dict[str, int]]:
    """The segment table: keys in index order, and key -> data bytes."""
    seg_keys: list[str] = []
    segments: dict[str, int] = {}
    for _ in range(cur.read_int(U32)):
        k = cur.take(cur.read_int(U16)).decode()
        seg_keys.append(k)
        segments[k] = cur.read_int(U64)
    return seg_keys, segments


def _decode_record(cur: Cursor, key: str, seg_keys: list[str], extended: bool) -> LogRecord:
    """One entry of the record table: a WRITE as stored (its disk offset lives in the extents)."""
    si, data_off, length, chunk = cur.unpack(_CKPT_REC)
    if chunk <= 0:
        raise IntegrityError(f"checkpoint {key}: chunk size {chunk}")
    sums = cur.take(SUM_LEN * n_chunks(length, chunk))
    seal = cur.take(cur.read_int(U32)) if extended else b""
    comp = cur.take(cur.read_int(U32)) if extended else b""
    if comp and len(comp) != 1 + 4 * n_chunks(length, chunk):
        raise IntegrityError(f"checkpoint {key}: chunk length list of the wrong size")
    return LogRecord(
        WRITE, 0, length, seg_key=seg_keys[si], data_off=data_off, chunk=chunk, sums=sums,
        seal=seal, comp=comp,
    )  # fmt: skip


def _decode_extents(
    cur: Cursor, key: str, recs: list[LogRecord]
) -> tuple[list[int], list[int], list[tuple[LogRecord, int]]]:
    """The extent table, which must fill the rest of the body, sorted and inside its records."""
    n_extents = cur.read_int(U64)
    end_pos = cur.pos + n_extents * _CKPT_EXT.size
    if end_pos != len(cur.buf):
        raise IntegrityError(f"checkpoint {key}: extent table length mismatch")
    starts: list[int] = []
    ends: list[int] = []
    vals: list[tuple[LogRecord, int]] = []
    prev_end = 0
    for s, e, ri, delta in _CKPT_EXT.iter_unpack(cur.buf[cur.pos : end_pos]):
        rec = recs[ri]
        if s < prev_end or e <= s or delta + (e - s) > rec.length:
            raise IntegrityError(f"checkpoint {key}: extent [{s}, {e}) is inconsistent")
        prev_end = e
        starts.append(s)
        ends.append(e)
        vals.append((rec, delta))
    return starts, ends, vals
