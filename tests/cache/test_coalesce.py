"""Coalescing a round of journal entries (blockstore/cache/coalesce.py): what survives must
leave the disk exactly as the whole round does, and a group never grows past its limit."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.cache.coalesce import group_prefix, surviving, write_bytes
from blockstore.cache.journal import KIND_TRIM, KIND_WRITE, KIND_ZERO, JournalEntry

AREA = 64 * 1024

entries = st.lists(
    st.tuples(
        st.sampled_from([KIND_WRITE, KIND_WRITE, KIND_WRITE, KIND_TRIM, KIND_ZERO]),
        st.integers(0, AREA // 512 - 1),
        st.integers(1, 32),
    ),
    min_size=1,
    max_size=40,
)


def journal(spec: list[tuple[int, int, int]]) -> list[JournalEntry]:
    out = []
    for seq, (kind, first, n) in enumerate(spec, 1):
        offset, length = first * 512, min(n * 512, AREA - first * 512)
        out.append(JournalEntry(seq, kind, offset, length, 0, 0, length))
    return out


def fill(seq: int, n: int) -> bytes:
    return bytes([seq % 251 + 1]) * n


def apply_all(image: bytearray, run: list[JournalEntry]) -> None:
    for e in run:
        image[e.offset : e.offset + e.length] = (
            fill(e.seq, e.length) if e.kind == KIND_WRITE else bytes(e.length)
        )


@settings(max_examples=300, deadline=None)
@given(entries)
def test_the_surviving_pieces_leave_the_disk_as_the_whole_round(
    spec: list[tuple[int, int, int]],
) -> None:
    run = journal(spec)
    before = bytes(range(256)) * (AREA // 256)
    whole, coalesced = bytearray(before), bytearray(before)
    apply_all(whole, run)
    pieces, sent = surviving(run)
    for piece in pieces:
        e, n = piece.entry, piece.end - piece.start
        coalesced[piece.start : piece.end] = fill(e.seq, n) if e.kind == KIND_WRITE else bytes(n)
    assert coalesced == whole
    # Pieces never overlap, stay inside their entry, and keep journal order.
    spans = sorted((p.start, p.end) for p in pieces)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert all(p.entry.offset <= p.start < p.end <= p.entry.offset + p.entry.length for p in pieces)
    assert [p.entry.seq for p in pieces] == sorted(p.entry.seq for p in pieces)
    assert sent == sum(p.end - p.start for p in pieces if p.entry.kind == KIND_WRITE)
    assert sent <= write_bytes(run)


@settings(max_examples=300, deadline=None)
@given(entries, st.integers(512, AREA))
def test_a_group_holds_the_longest_prefix_whose_writes_fit(
    spec: list[tuple[int, int, int]], limit: int
) -> None:
    run = journal(spec)
    k = group_prefix(run, limit)

    def union(prefix: list[JournalEntry]) -> int:
        covered = bytearray(AREA)
        for e in prefix:
            if e.kind == KIND_WRITE:
                covered[e.offset : e.offset + e.length] = b"\1" * e.length
        return sum(covered)

    assert 1 <= k <= len(run)
    assert k == 1 or union(run[:k]) <= limit
    assert k == len(run) or union(run[: k + 1]) > limit
    assert surviving(run[:k])[1] <= union(run[:k])  # a later trim can drop some
