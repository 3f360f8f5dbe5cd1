"""The thrasher's checker (bench/thrash.py, `Disk.verify`) on hand-made disk images, no servers:
it must report a lost acknowledged write, a visible fenced or discarded write, bytes no one
wrote, and a readwrite disk that is not a prefix after a force-attach; and it must accept what
the durability contract allows (unacknowledged writes either way, unflushed readwrite writes
after a prefix)."""

from __future__ import annotations

from pathlib import Path

from bench.thrash import ACKED, FAILED, SECTOR, Disk, EventLog, Session, sector_bytes

NSECT = 64


def disk(tmp_path: Path) -> Disk:
    return Disk("d0", 0x5EED, NSECT * SECTOR, "none", EventLog(tmp_path / "events.jsonl"))


def session(mode: str) -> Session:
    return Session(1, "a", mode, None, "/nowhere")


def write(d: Disk, sess: Session, first: int, n: int, state: str = ACKED, fua: bool = False) -> int:
    w = d.issue(first, n, sess, fua)
    if state == ACKED:
        d.acked(w, sess)
    else:
        d.failed(w, sess, "EIO")
    return w.wid


def image(d: Disk, shown: list[int]) -> bytes:
    """The disk as if the writes `shown` (in order) had landed."""
    img = bytearray(NSECT * SECTOR)
    for wid in shown:
        w = d.writes[wid]
        for s in range(w.first, w.first + w.n):
            img[s * SECTOR : (s + 1) * SECTOR] = sector_bytes(d.tag, wid, s)
    return bytes(img)


def test_every_acknowledged_write_there_passes(tmp_path: Path) -> None:
    d, s = disk(tmp_path), session("none")
    a, b = write(d, s, 0, 8), write(d, s, 4, 8)
    c = write(d, s, 20, 2, state=FAILED)  # may or may not have landed
    for shown in ([a, b], [a, b, c]):
        f = d.verify(image(d, shown), lossy=False, cycle=1)
        assert not (f.lost or f.fenced or f.garbage), f


def test_a_lost_acknowledged_write_is_reported(tmp_path: Path) -> None:
    d, s = disk(tmp_path), session("none")
    a, b = write(d, s, 0, 8), write(d, s, 4, 8)
    f = d.verify(image(d, [a]), lossy=False, cycle=1)
    assert set(f.lost) == {b} and len(f.lost[b]) == 8
    f = d.verify(image(d, [b, a]), lossy=False, cycle=1)  # older data over newer: lost too
    assert set(f.lost) == {b} and f.lost[b] == [4, 5, 6, 7]


def test_bytes_no_one_wrote_are_reported(tmp_path: Path) -> None:
    d, s = disk(tmp_path), session("none")
    a = write(d, s, 0, 4)
    img = bytearray(image(d, [a]))
    img[1 * SECTOR + 100] ^= 0xFF  # torn filler
    img[2 * SECTOR : 3 * SECTOR] = sector_bytes(d.tag, a, 9)  # right write, wrong sector
    img[40 * SECTOR : 41 * SECTOR] = sector_bytes(d.tag, 999, 40)  # never issued
    f = d.verify(bytes(img), lossy=False, cycle=1)
    assert len(f.garbage) == 3, f.garbage


def test_writes_issued_after_the_fence_must_not_show(tmp_path: Path) -> None:
    d, s = disk(tmp_path), session("readwrite")
    a = write(d, s, 0, 4)
    s.fenced_at = 1.0
    late = write(d, s, 8, 4)  # acknowledged from the fenced host's journal
    f = d.verify(image(d, [a, late]), lossy=False, cycle=1)
    assert set(f.fenced) == {late}
    assert not f.lost  # a fenced write is never required


def test_readwrite_after_a_force_attach_may_lose_unflushed_writes_as_a_prefix(
    tmp_path: Path,
) -> None:
    d, s = disk(tmp_path), session("readwrite")
    a = write(d, s, 0, 4)
    d.flushed(a, s)
    b, c, e = write(d, s, 8, 4), write(d, s, 16, 4), write(d, s, 24, 4)
    f = d.verify(image(d, [a, b]), lossy=True, cycle=1)  # prefix up to b: allowed
    assert not (f.lost or f.fenced or f.garbage) and f.k == b and f.discarded == 2
    # c and e were discarded: seen later, they are resurrected writes
    f = d.verify(image(d, [a, b, c]), lossy=False, cycle=2)
    assert set(f.fenced) == {c}
    assert e not in f.fenced


def test_readwrite_not_a_prefix_or_below_the_flush_is_reported(tmp_path: Path) -> None:
    d, s = disk(tmp_path), session("readwrite")
    a = write(d, s, 0, 4)
    b = write(d, s, 8, 4)
    d.flushed(b, s)
    c, e = write(d, s, 16, 4), write(d, s, 24, 4)
    f = d.verify(image(d, [a]), lossy=True, cycle=1)  # the flush covered b
    assert set(f.lost) == {b}
    d2, s2 = disk(tmp_path), session("readwrite")
    a = write(d2, s2, 0, 4)
    c, e = write(d2, s2, 16, 4), write(d2, s2, 24, 4)
    f = d2.verify(image(d2, [a, e]), lossy=True, cycle=1)  # e without c: a mix
    assert set(f.lost) == {c} and f.k == e


def test_fua_and_none_mode_acknowledgements_are_durable_across_a_force_attach(
    tmp_path: Path,
) -> None:
    d, rw, none = disk(tmp_path), session("readwrite"), session("none")
    a = write(d, rw, 0, 4, fua=True)
    b = write(d, none, 8, 4)
    c = write(d, rw, 16, 4)  # unflushed: may go
    f = d.verify(image(d, [b]), lossy=True, cycle=1)
    assert set(f.lost) == {a}
    assert c not in f.lost


def test_a_fenced_flush_is_judged_by_its_own_session_only(tmp_path: Path) -> None:
    """Long run of 2026-11-30, cycle 161: a flush that session 119 got acknowledged just as
    the force-attach returned was reported for fenced writes of session 24, long before."""
    d = disk(tmp_path)
    old, s = session("readwrite"), Session(2, "a", "none", None, "/nowhere")
    old.fenced_at = 1.0
    write(d, old, 0, 4)  # an old session's fenced write, acknowledged from its journal
    a = write(d, s, 8, 4)
    s.fenced_at = 2.0
    d.flushed(a, s)
    assert not d.violations, d.violations
    late = write(d, s, 16, 4)  # acknowledged after the fence in none: reported
    assert d.violations and str(late) in d.violations[0]
    d.violations.clear()
    d.flushed(late, s)
    assert d.violations and str(late) in d.violations[0]
