"""Extent map: every operation agrees with a per-sector reference array."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.engine.extentmap import ExtentMap

N = 64  # sectors in the model


def _expand(m: ExtentMap[str]) -> list[tuple[str, int] | None]:
    """What each sector maps to: (ref, byte within ref) or None."""
    out: list[tuple[str, int] | None] = [None] * N
    for s, e, ref, delta in m:
        for x in range(s, e):
            out[x] = (ref, delta + x - s)
    return out


def _check_invariants(m: ExtentMap[str]) -> None:
    starts, ends, _vals = m.lists()
    for i in range(len(starts)):
        assert starts[i] < ends[i]
        if i:
            assert ends[i - 1] <= starts[i]


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "clear", "remove"]),
        st.integers(0, N - 1),
        st.integers(1, N),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 100),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_reference(script: list[tuple[str, int, int, str, int]]) -> None:
    m: ExtentMap[str] = ExtentMap()
    ref: list[tuple[str, int] | None] = [None] * N
    for op, start, length, name, delta in script:
        end = min(N, start + length)
        if op == "set":
            m.set(start, end, name, delta)
            for x in range(start, end):
                ref[x] = (name, delta + x - start)
        elif op == "clear":
            m.clear(start, end)
            for x in range(start, end):
                ref[x] = None
        else:
            m.remove_where(start, end, name.__eq__)
            for x in range(start, end):
                cur = ref[x]
                if cur is not None and cur[0] == name:
                    ref[x] = None
        _check_invariants(m)
        assert _expand(m) == ref
    # lookup covers exactly the asked range, pieces agree with the reference
    for lo in range(0, N, 7):
        for hi in range(lo + 1, N + 1, 5):
            pieces = m.lookup(lo, hi)
            assert pieces[0][0] == lo and pieces[-1][1] == hi
            for (_s, e, _r, _d), (s2, _e2, _r2, _d2) in itertools.pairwise(pieces):
                assert e == s2
            for s, e, r, d in pieces:
                for x in range(s, e):
                    assert ref[x] == (None if r is None else (r, d + x - s))


def test_memory_follows_extents_not_size() -> None:
    m: ExtentMap[str] = ExtentMap()
    tib64 = 64 << 40
    m.set(0, 4096, "a")
    m.set(tib64 - 4096, tib64, "b")
    m.set(tib64 // 2, tib64 // 2 + (1 << 30), "c")
    assert len(m) == 3
    pieces = m.lookup(0, tib64)
    assert [p[2] for p in pieces] == ["a", None, "c", None, "b"]
    assert m.mapped_bytes() == 8192 + (1 << 30)


def test_split_shifts_delta() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(0, 100, "a", 10)
    m.clear(40, 60)
    assert list(m) == [(0, 40, "a", 10), (60, 100, "a", 70)]
    assert m.lookup(70, 80) == [(70, 80, "a", 80)]
