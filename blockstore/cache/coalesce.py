"""Coalescing a run of journal entries: inside one upload round, the later write wins.

Why this is safe: the write-back keeps the store a prefix of the writes (cache/writeback.py).
A run of entries that goes up as *one* segment is atomic (one create-if-absent PUT: the store
holds all of it or none), so the store moves from the state before the run straight to the
state after it; both are prefixes. Inside such a run, the bytes that a later entry of the same
run overwrites or trims never need to leave the host.

Why it matters: a stream rewriting a hot area (a 1 MiB sequential job over 32 MiB, a
database's log, a file system's journal) used to send every byte it wrote, so it ran at the
store's PUT speed once the dirty limit was reached (0.05x the minimal plugin in issue #18's
run). Coalesced, a round of 256 MiB of journal over a 32 MiB area sends 32 MiB, and the dirty
count (cache/writeback.py) counts that area once.

Place: pure functions over `JournalEntry`s, called by `WriteBack._upload`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from blockstore.cache.journal import KIND_WRITE, JournalEntry


class Piece(NamedTuple):
    """The part [start, end) (disk offsets) of `entry` that no later entry of its run covers."""

    entry: JournalEntry
    start: int
    end: int


class Cover:
    """A set of byte ranges, kept as sorted disjoint intervals; adding a range returns the
    parts of it that were not in the set yet. O(log n) to find, Python work per interval
    touched, never per byte or block."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, s: int, t: int) -> list[tuple[int, int]]:
        starts, ends = self.starts, self.ends
        i = bisect_right(ends, s)  # the first interval that ends after s
        j, cur = i, s
        gaps: list[tuple[int, int]] = []
        while j < len(starts) and starts[j] < t:
            if starts[j] > cur:
                gaps.append((cur, starts[j]))
            cur = max(cur, ends[j])
            j += 1
        if cur < t:
            gaps.append((cur, t))
        if i < j:  # merge [s, t) with the intervals it overlaps
            starts[i:j] = [min(s, starts[i])]
            ends[i:j] = [max(t, ends[j - 1])]
        else:
            starts.insert(i, s)
            ends.insert(i, t)
        return gaps


def surviving(run: Sequence[JournalEntry]) -> tuple[list[Piece], int]:
    """The pieces of `run` (entries in journal order) that no later entry of the run covers,
    in journal order (ascending within an entry), and how many bytes of WRITE data they hold.

    Applied in that order they leave the disk exactly as applying every entry of the run does:
    a dropped byte is covered by a later entry, whose piece over it survives (or is itself
    covered by a still later one). Walks the run newest first."""
    cover = Cover()
    out: list[Piece] = []
    data_bytes = 0
    for entry in reversed(run):
        if entry.length <= 0:
            continue
        gaps = cover.add(entry.offset, entry.offset + entry.length)
        for a, b in reversed(gaps):
            out.append(Piece(entry, a, b))
            if entry.kind == KIND_WRITE:
                data_bytes += b - a
    out.reverse()
    return out, data_bytes


def group_prefix(run: Sequence[JournalEntry], limit: int) -> int:
    """How many leading entries of `run` (at least one) a coalesced segment of at most `limit`
    data bytes can hold: what survives of a prefix is at most the union of its writes (less
    where a later trim drops some), and the union only grows along the run."""
    cover = Cover()
    union = 0
    for k, entry in enumerate(run):
        if entry.kind == KIND_WRITE and entry.length > 0:
            union += sum(b - a for a, b in cover.add(entry.offset, entry.offset + entry.length))
            if union > limit:
                return max(k, 1)
    return len(run)


def small_prefix(run: Sequence[JournalEntry], limit: int) -> int:
    """How many leading entries of `run` hold at most `limit` bytes of WRITE data together
    (0 when the first one alone holds more)."""
    total = 0
    for k, entry in enumerate(run):
        if entry.kind == KIND_WRITE:
            total += entry.length
            if total > limit:
                return k
    return len(run)


def write_bytes(run: Sequence[JournalEntry]) -> int:
    """Bytes of WRITE data in `run`, as the journal holds them."""
    return sum(e.length for e in run if e.kind == KIND_WRITE)
