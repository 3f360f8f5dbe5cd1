"""Chunk sealing (blockstore/crypto/seal.py): what is sealed opens; moved, swapped, replayed,
flipped or foreign-keyed chunks do not, and the bytes sealed never appear in the ciphertext."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.crypto.seal import TAG_BYTES, Sealer
from blockstore.errors import IntegrityError

CHUNK = 4096
KEY = os.urandom(32)


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(1, 5 * CHUNK), seq=st.integers(1, 2**40 - 1), epoch=st.integers(1, 2**32 - 1)
)
def test_what_is_sealed_opens_from_any_whole_chunk(size: int, seq: int, epoch: int) -> None:
    s = Sealer("d1", "k0123456789abcdef", KEY)
    data = os.urandom(size)
    sealed, tags = s.seal(seq, epoch, 7, 1 << 20, memoryview(data), CHUNK)
    ct = bytes(sealed)
    assert len(ct) == size and len(tags) == TAG_BYTES * -(-size // CHUNK)
    assert s.open(seq, epoch, 7, 1 << 20, 0, memoryview(ct), tags, CHUNK) == data
    if size > CHUNK:  # a read from the second chunk on opens just those
        rest = s.open(seq, epoch, 7, 1 << 20, 1, memoryview(ct)[CHUNK:], tags[TAG_BYTES:], CHUNK)
        assert rest == data[CHUNK:]


def test_moved_swapped_flipped_or_foreign_chunks_fail() -> None:
    pattern = b"secret pattern!!" * (2 * CHUNK // 16)
    s = Sealer("d1", "k0123456789abcdef", KEY)
    sealed, tags = s.seal(10, 3, 0, 0, memoryview(pattern), CHUNK)
    ct = bytes(sealed)
    assert b"secret pattern" not in ct
    ok = (10, 3, 0, 0, 0, memoryview(ct), tags, CHUNK)
    assert s.open(*ok) == pattern
    cases = {
        "another position": (11, 3, 0, 0, 0, memoryview(ct), tags, CHUNK),
        "another epoch": (10, 4, 0, 0, 0, memoryview(ct), tags, CHUNK),
        "another disk offset": (10, 3, 0, 4096, 0, memoryview(ct), tags, CHUNK),
        "another place in the segment": (10, 3, 1, 0, 0, memoryview(ct), tags, CHUNK),
        "chunks swapped": (
            10,
            3,
            0,
            0,
            0,
            memoryview(ct[CHUNK:] + ct[:CHUNK]),
            tags[TAG_BYTES:] + tags[:TAG_BYTES],
            CHUNK,
        ),
        "a bit flipped": (10, 3, 0, 0, 0, memoryview(bytes([ct[0] ^ 1]) + ct[1:]), tags, CHUNK),
    }
    for what, args in cases.items():
        try:
            s.open(*args)  # type: ignore[arg-type]
        except IntegrityError as exc:
            assert "fails to authenticate" in str(exc), what
        else:
            pytest.fail(f"{what}: opened")
    for other in (Sealer("d2", "k0123456789abcdef", KEY), Sealer("d1", "kffffffffffffffff", KEY),
                  Sealer("d1", "k0123456789abcdef", os.urandom(32))):  # fmt: skip
        with pytest.raises(IntegrityError):
            other.open(*ok)
