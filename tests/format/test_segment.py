"""Segment and checkpoint format: round trips, and every kind of damage is an IntegrityError."""

from __future__ import annotations

import os

import pytest

from blockstore.errors import IntegrityError
from blockstore.format.checkpoint import decode_checkpoint, encode_checkpoint
from blockstore.format.segment import (
    RESIZE,
    SEG_PREFIX_LEN,
    TRIM,
    WRITE,
    LogRecord,
    decode_segment_header,
    encode_segment,
    segment_header_length,
    verify_chunks,
)

KEY = "disks/d/seg/0000000000000007-00000003"


def _segment() -> tuple[bytes, list[LogRecord], list[bytes]]:
    datas = [os.urandom(4096 * 3 + 512), os.urandom(512)]
    recs = [
        LogRecord(WRITE, 8192, len(datas[0]), mem=datas[0]),
        LogRecord(TRIM, 0, 4096),
        LogRecord(WRITE, 1 << 40, len(datas[1]), mem=datas[1]),
        LogRecord(RESIZE, 2 << 40, 0),
    ]
    blob = encode_segment(KEY, "d", 7, 3, 4096, recs)
    return blob, recs, datas


def test_round_trip() -> None:
    blob, recs, datas = _segment()
    assert segment_header_length(blob[:SEG_PREFIX_LEN], KEY) < len(blob)
    hdr = decode_segment_header(blob, KEY, len(blob))
    assert (hdr.seq, hdr.epoch, hdr.disk_id, hdr.chunk) == (7, 3, "d", 4096)
    assert [(r.kind, r.offset, r.length) for r in hdr.records] == [
        (r.kind, r.offset, r.length) for r in recs
    ]
    w0, w1 = hdr.records[0], hdr.records[2]
    assert blob[w0.data_off : w0.data_off + w0.length] == datas[0]
    assert blob[w1.data_off : w1.data_off + w1.length] == datas[1]
    assert w0.data_off == recs[0].data_off and w0.sums == recs[0].sums
    assert hdr.data_len == len(datas[0]) + len(datas[1])
    # chunk verification: whole record, and from chunk 2 on
    assert verify_chunks(w0, 0, datas[0]) is None
    assert verify_chunks(w0, 2, datas[0][8192:]) is None
    bad = bytearray(datas[0])
    bad[4096 + 5] ^= 1
    assert verify_chunks(w0, 0, bytes(bad)) == 4096


@pytest.mark.parametrize("pos", [0, 9, 12, 20, 30, 40, 60])
def test_header_damage_is_detected(pos: int) -> None:
    blob, _recs, _datas = _segment()
    damaged = bytearray(blob)
    damaged[pos] ^= 0x40
    with pytest.raises(IntegrityError):
        decode_segment_header(bytes(damaged), KEY, len(blob))


def test_truncated_and_garbage() -> None:
    blob, _recs, _datas = _segment()
    with pytest.raises(IntegrityError):
        decode_segment_header(blob[:10], KEY)
    with pytest.raises(IntegrityError):
        decode_segment_header(blob[: SEG_PREFIX_LEN + 5], KEY)
    with pytest.raises(IntegrityError):
        # the header is fine but the object is too short for the data it describes
        decode_segment_header(blob, KEY, len(blob) - 1)
    with pytest.raises(IntegrityError):
        decode_segment_header(os.urandom(4096), KEY)


def test_checkpoint_round_trip_and_damage() -> None:
    _blob, recs, _datas = _segment()
    w0, w1 = recs[0], recs[2]
    starts, ends, vals = (
        [8192, 12288, 1 << 40],
        [10240, 20992, (1 << 40) + 512],
        [
            (w0, 0),
            (w0, 4096),
            (w1, 0),
        ],
    )
    ck = encode_checkpoint("d", 7, 3, 2 << 40, starts, ends, vals, {KEY: 99})
    out = decode_checkpoint(ck, "k")
    assert (out.disk_id, out.seq, out.epoch, out.size) == ("d", 7, 3, 2 << 40)
    assert out.starts == starts and out.ends == ends
    assert [(r.seg_key, r.data_off, r.length, r.sums, d) for r, d in out.vals] == [
        (r.seg_key, r.data_off, r.length, r.sums, d) for r, d in vals
    ]
    assert out.vals[0][0] is out.vals[1][0]  # one record shared by its extents
    assert out.segments == {KEY: 99}
    for pos in (0, 9, 30, len(ck) // 2, len(ck) - 1):
        damaged = bytearray(ck)
        damaged[pos] ^= 1
        with pytest.raises(IntegrityError):
            decode_checkpoint(bytes(damaged), "k")
    with pytest.raises(IntegrityError):
        decode_checkpoint(ck[:-3], "k")
