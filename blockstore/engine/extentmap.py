"""A sorted map of non-overlapping byte extents: `[start, end) -> (ref, delta)`.

The volume keeps two of these: the durable map (where the newest acknowledged copy of every byte
lives in the store) and the pending overlay (writes and trims that are not acknowledged yet).
`ref` is whatever the caller stores (a segment record); `delta` is the offset of the extent's
first byte within that record, so splitting an extent only shifts `delta` and never copies `ref`.
Ranges that are absent are holes.

Representation: three parallel Python lists (starts, ends, values) searched with `bisect`.
Memory is proportional to the number of extents, not to the disk size (a 64 TiB disk with ten
extents is ten list entries); a lookup is one bisect plus a slice; an update is one bisect and
one list splice (a memmove, which stays cheap into the millions of extents). No method loops
per 512-byte block. Not thread-safe: the volume holds its lock around every call.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# A piece handed out by lookup: (start, end, ref or None for a hole, delta).
Piece = tuple[int, int, "T | None", int]


class ExtentMap(Generic[T]):
    """Non-overlapping extents; see the module docstring."""

    __slots__ = ("_ends", "_starts", "_vals")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._vals: list[tuple[T, int]] = []

    @classmethod
    def from_sorted(
        cls, starts: list[int], ends: list[int], vals: list[tuple[T, int]]
    ) -> ExtentMap[T]:
        """Build from already sorted, non-overlapping lists (a decoded checkpoint); the lists
        are taken over, not copied."""
        m: ExtentMap[T] = cls()
        m._starts, m._ends, m._vals = starts, ends, vals
        return m

    def copy(self) -> ExtentMap[T]:
        return ExtentMap.from_sorted(self._starts[:], self._ends[:], self._vals[:])

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int, T, int]]:
        for s, e, (ref, delta) in zip(self._starts, self._ends, self._vals, strict=True):
            yield s, e, ref, delta

    def lists(self) -> tuple[list[int], list[int], list[tuple[T, int]]]:
        """The raw lists (read-only by convention), for encoders that want speed."""
        return self._starts, self._ends, self._vals

    def mapped_bytes(self) -> int:
        return sum(self._ends) - sum(self._starts)

    def _overlap(self, start: int, end: int) -> tuple[int, int]:
        """Index range [i, j) of extents overlapping [start, end)."""
        i = bisect_right(self._ends, start)  # first extent whose end > start
        j = bisect_left(self._starts, end)  # first extent whose start >= end
        return i, j

    def set(self, start: int, end: int, ref: T | None, delta: int = 0) -> None:
        """Make [start, end) map to (ref, delta), or become a hole when `ref` is None."""
        if start >= end:
            return
        starts, ends, vals = self._starts, self._ends, self._vals
        i, j = self._overlap(start, end)
        new_s: list[int] = []
        new_e: list[int] = []
        new_v: list[tuple[T, int]] = []
        if i < j and starts[i] < start:
            # Keep the left part of the first overlapping extent.
            new_s.append(starts[i])
            new_e.append(start)
            new_v.append(vals[i])
        if ref is not None:
            new_s.append(start)
            new_e.append(end)
            new_v.append((ref, delta))
        if i < j and ends[j - 1] > end:
            # Keep the right part of the last overlapping extent, its delta shifted.
            r, d = vals[j - 1]
            new_s.append(end)
            new_e.append(ends[j - 1])
            new_v.append((r, d + (end - starts[j - 1])))
        starts[i:j] = new_s
        ends[i:j] = new_e
        vals[i:j] = new_v

    def clear(self, start: int, end: int) -> None:
        """Make [start, end) a hole."""
        self.set(start, end, None)

    def lookup(self, start: int, end: int) -> list[Piece[T]]:
        """Pieces covering exactly [start, end) in order, holes included as (s, e, None, 0)."""
        starts, ends, vals = self._starts, self._ends, self._vals
        i, j = self._overlap(start, end)
        out: list[Piece[T]] = []
        pos = start
        for k in range(i, j):
            s, e = starts[k], ends[k]
            ref, delta = vals[k]
            if s > pos:
                out.append((pos, s, None, 0))
            elif s < pos:
                delta += pos - s
                s = pos
            e = min(e, end)
            out.append((s, e, ref, delta))
            pos = e
        if pos < end:
            out.append((pos, end, None, 0))
        return out

    def remove_where(self, start: int, end: int, pred: Callable[[T], bool]) -> None:
        """Make holes of the parts of [start, end) whose ref satisfies `pred`."""
        i, j = self._overlap(start, end)
        victims = [
            (max(self._starts[k], start), min(self._ends[k], end))
            for k in range(i, j)
            if pred(self._vals[k][0])
        ]
        for s, e in victims:
            self.clear(s, e)
