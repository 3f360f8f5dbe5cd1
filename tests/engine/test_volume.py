"""Volume engine on the in-memory store: data path, durability, crashes, fencing, corruption,
snapshots, clones, changed ranges and GC."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from blockstore.clock import FakeClock
from blockstore.engine.fence import FENCE_SPAN
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import (
    Conflict,
    Fenced,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from blockstore.format import keys
from blockstore.format.segment import decode_segment_header
from blockstore.store.base import Buffer, ObjectStore
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore

KiB = 1024
MiB = 1024 * KiB


def cfg(**kw: object) -> VolumeConfig:
    base: dict[str, object] = {"gc_interval_seconds": 0, "commit_delay": 3600.0}
    base.update(kw)
    return VolumeConfig(**base)  # type: ignore[arg-type]


def new_volume(
    store: ObjectStore | None = None, size: int = 1 * MiB, disk: str = "d1", **kw: object
) -> tuple[ObjectStore, Volume]:
    store = store or MemoryStore()
    Volume.create(store, disk, size)
    return store, Volume.open(store, disk, config=cfg(**kw))


def reader(store: ObjectStore, disk: str = "d1") -> Volume:
    return Volume.open(store, disk, writable=False, config=cfg())


# --- data path ----------------------------------------------------------------------------


def test_write_read_holes_and_reopen() -> None:
    store, v = new_volume(segment_max_bytes=64 * KiB, checkpoint_every_segments=3)
    assert v.read(0, 8192) == bytes(8192)
    a, b = os.urandom(12 * KiB), os.urandom(4 * KiB)
    v.write(4096, a)
    v.write(8192, b)  # overlaps the middle of a
    want = bytearray(1 * MiB)
    want[4096 : 4096 + len(a)] = a
    want[8192 : 8192 + len(b)] = b
    assert v.read(0, 1 * MiB) == want  # read-your-writes before any flush
    v.flush()
    assert v.read(0, 1 * MiB) == want  # now from the store
    v.trim(8192, 1024)
    want[8192 : 8192 + 1024] = bytes(1024)
    big = os.urandom(300 * KiB)  # spans several segments
    v.write(512 * KiB, big)
    want[512 * KiB : 512 * KiB + len(big)] = big
    assert v.extents(0, 16 * KiB) == [
        (0, 4096, True),
        (4096, 4096, False),
        (8192, 1024, True),
        (9216, 7168, False),
    ]
    v.close()
    r = reader(store)
    assert r.read(0, 1 * MiB) == want
    assert r.stats.segments_replayed < v.stats.segments_written  # a checkpoint was used
    ext = r.extents(0, 1 * MiB)
    assert sum(n for _o, n, _h in ext) == 1 * MiB
    assert all(want[o : o + n] == bytes(n) for o, n, hole in ext if hole)


def test_readinto_fills_caller_buffer() -> None:
    _store, v = new_volume()
    data = os.urandom(8192)
    v.write(4096, data)
    v.flush()
    buf = bytearray(b"\xff" * 16384)
    v.readinto(0, memoryview(buf))
    assert buf == bytes(4096) + data + bytes(4096)
    v.close()


def test_multi_extent_read_coalesces_gets_per_segment() -> None:
    """A read that alternates between two segments (every other 4 KiB overwritten later) costs
    one ranged GET per segment, not one per extent, and returns the right bytes; a flipped byte
    in one of the pieces is still caught."""
    store, v = new_volume(size=1 * MiB, segment_max_bytes=1 * MiB)
    base = os.urandom(256 * KiB)
    v.write(0, base, durable=True)
    want = bytearray(base)
    for off in range(0, 256 * KiB, 8 * KiB):
        piece = os.urandom(4096)
        v.write(off, piece)
        want[off : off + 4096] = piece
    v.flush()
    v.close()
    r = reader(store)
    gets = r.stats.gets
    assert r.read(0, 256 * KiB) == want
    assert r.stats.gets - gets == 2
    gets = r.stats.gets
    assert r.read(4 * KiB, 200 * KiB) == want[4 * KiB : 204 * KiB]  # unaligned to the pattern
    assert r.stats.gets - gets == 2
    raw = store.raw()  # type: ignore[attr-defined]
    first = data_segments(raw)[0]
    blob = bytearray(raw[first])
    blob[-3 * 4096 + 10] ^= 1  # inside the base write's chunk at 244 KiB, which is not overwritten
    raw[first] = bytes(blob)
    with pytest.raises(IntegrityError, match="checksum"):
        r.read(0, 256 * KiB)
    assert r.read(0, 240 * KiB) == want[: 240 * KiB]


def test_a_write_group_is_one_segment_whatever_its_size() -> None:
    """The write-back's coalesced rounds rely on it: a group goes up as one PUT (all or
    nothing), even past segment_max_bytes, and writes around it keep their own batches."""
    store, v = new_volume(size=1 * MiB, segment_max_bytes=16 * KiB)
    v.write(0, b"a" * 4096)
    parts = [os.urandom(8 * KiB) for _ in range(10)]  # 80 KiB: five times segment_max_bytes
    v.write_group([(i * 8 * KiB, 8 * KiB, p) for i, p in enumerate(parts)] + [(0, 4096, None)])
    v.write(96 * KiB, b"b" * 4096)
    v.flush()
    raw = store.raw()  # type: ignore[attr-defined]
    assert len(data_segments(raw)) == 3
    v.close()
    r = reader(store)
    assert r.read(0, 4096) == bytes(4096)  # the group's hole after its own write
    assert r.read(4096, 76 * KiB) == b"".join(parts)[4096:]
    assert r.read(96 * KiB, 4096) == b"b" * 4096


def test_read_of_many_segments_fetches_them_in_parallel() -> None:
    """Pieces from many segments are fetched concurrently (at most a few at once), and a store
    error in one of them fails the whole read without leaving anything half-written behind."""
    store = SlowGetStore()
    Volume.create(store, "d1", MiB)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=4096))
    want = os.urandom(64 * KiB)
    for off in range(0, 64 * KiB, 4096):
        v.write(off, want[off : off + 4096])  # each fills a segment
    v.close()
    r = reader(store)
    assert r.read(0, 64 * KiB) == want
    assert 1 < store.max_concurrent <= 8
    store.fail_next = True
    with pytest.raises(Unavailable):
        r.read(0, 64 * KiB)
    assert r.read(0, 64 * KiB) == want


class SlowGetStore(MemoryStore):
    """GETs of segment data take a little while and are counted while in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight = 0
        self.max_concurrent = 0
        self.fail_next = False
        self._count_lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if "/seg/" not in key or start == 0:
            return super().get(key, start, length)  # headers at open
        with self._count_lock:
            self.inflight += 1
            self.max_concurrent = max(self.max_concurrent, self.inflight)
            fail, self.fail_next = self.fail_next, False
        try:
            time.sleep(0.01)
            if fail:
                raise Unavailable("injected")
            return super().get(key, start, length)
        finally:
            with self._count_lock:
                self.inflight -= 1


@pytest.mark.parametrize(
    ("offset", "length", "needle"),
    [
        (1, 512, "offset 1"),
        (512, 100, "length 100"),
        (-512, 512, "offset -512"),
        (1 * MiB, 512, "past the end"),
        ((1 << 63) - 512, 512, "past the end"),
    ],
)
def test_bad_ranges_are_invalid_argument(offset: int, length: int, needle: str) -> None:
    _store, v = new_volume()
    for call in (
        lambda: v.read(offset, length),
        lambda: v.write(offset, bytes(max(length, 0))),
        lambda: v.trim(offset, length),
        lambda: v.extents(offset, length),
    ):
        with pytest.raises(InvalidArgument, match=needle):
            call()
    v.close()


def test_create_open_destroy_errors() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidArgument):
        Volume.create(store, "Bad_Name", MiB)
    with pytest.raises(InvalidArgument, match="size 1000"):
        Volume.create(store, "d1", 1000)
    with pytest.raises(NotFound):
        Volume.open(store, "d1", config=cfg())
    Volume.create(store, "d1", MiB)
    with pytest.raises(Conflict):
        Volume.create(store, "d1", MiB)
    Volume.destroy(store, "d1")
    assert not store.raw()
    with pytest.raises(NotFound):
        Volume.destroy(store, "d1")


def test_resize_grow_shrink_is_ordered_and_persistent() -> None:
    store, v = new_volume(size=64 * KiB)
    v.write(60 * KiB, b"a" * 4096)
    with pytest.raises(Conflict, match="allow_shrink"):
        v.resize(32 * KiB)
    with pytest.raises(InvalidArgument):
        v.resize(32 * KiB + 1)
    v.resize(128 * KiB)
    v.write(100 * KiB, b"b" * 4096)
    v.resize(32 * KiB, allow_shrink=True)
    with pytest.raises(InvalidArgument):
        v.read(32 * KiB, 512)
    v.resize(128 * KiB)  # grown again: the dropped tail reads as zeros
    assert v.read(0, 128 * KiB) == bytes(128 * KiB)
    v.flush()
    assert v.read(0, 128 * KiB) == bytes(128 * KiB)
    v.write(0, b"c" * 512, durable=True)
    v.abandon()
    r = reader(store)
    assert r.size == 128 * KiB
    assert r.read(0, 128 * KiB) == b"c" * 512 + bytes(128 * KiB - 512)


def test_unflushed_writes_are_not_durable_and_flush_makes_them_so() -> None:
    store, v = new_volume()
    v.write(0, b"x" * 4096)
    assert reader(store).read(0, 4096) == bytes(4096)  # still in the open batch
    v.flush()
    assert reader(store).read(0, 4096) == b"x" * 4096
    v.write(4096, b"y" * 4096, durable=True)
    assert reader(store).read(4096, 4096) == b"y" * 4096
    v.close()


class SlowStore(MemoryStore):
    """PUTs take a while, so concurrent durable writers pile up behind one."""

    def put(self, key: str, data: Buffer, **kw: object) -> str:
        if "/seg/" in key:
            time.sleep(0.05)
        return super().put(key, data, **kw)  # type: ignore[arg-type]


def test_concurrent_durable_writers_share_puts() -> None:
    store = SlowStore()
    _s, v = new_volume(store, max_inflight_segments=1)
    n = 16
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            barrier.wait()
            v.write(i * 4096, bytes([i]) * 4096, durable=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert v.stats.segments_written < n  # group commit: fewer PUTs than durable writes
    r = reader(store)
    for i in range(n):
        assert r.read(i * 4096, 4096) == bytes([i]) * 4096
    v.close()


def test_writes_arriving_while_every_put_slot_is_busy_share_the_next_segment() -> None:
    store = RaceStore()
    Volume.create(store, "d1", MiB)
    v = Volume.open(store, "d1", config=cfg(max_inflight_segments=1))
    release = store.hold(is_seg(FENCE_SPAN + 1))
    threads = [
        threading.Thread(
            target=v.write, args=(i * 4096, bytes([i]) * 4096), kwargs={"durable": True}
        )
        for i in range(6)
    ]
    threads[0].start()
    while v.stats.writes < 1:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while v.stats.writes < 6:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(10)
    assert v.stats.segments_written == 2  # the held one, then one for the five that waited
    assert reader(store).read(0, 6 * 4096) == b"".join(bytes([i]) * 4096 for i in range(6))
    v.close()


def test_store_outage_fails_flush_then_recovers() -> None:
    inner = MemoryStore()
    store = FaultyStore(inner)
    _s, v = new_volume(store)
    store.add(FaultRule(op="put", key_contains="/seg/", times=1))
    v.write(0, b"q" * 4096)
    with pytest.raises(Unavailable):
        v.flush()
    assert v.read(0, 4096) == b"q" * 4096  # still readable from memory
    v.flush()  # asked again: the queued segment is re-sent
    assert reader(inner).read(0, 4096) == b"q" * 4096
    # a lost reply: the PUT landed, the writer did not hear back; the re-send must not fail
    store.add(FaultRule(op="put", key_contains="/seg/", times=1, apply_before=False))
    v.write(4096, b"r" * 4096)
    with pytest.raises(Unavailable):
        v.flush()
    v.flush()
    assert reader(inner).read(4096, 4096) == b"r" * 4096
    v.close()


# --- crashes ------------------------------------------------------------------------------


def _crash_scenario(
    store: ObjectStore, flushed: dict[int, bytes], written: dict[int, list[bytes]]
) -> None:
    """Writes, flushes, a checkpoint and a close; records what each flush made durable.
    `written[sector]` lists every value written to a sector in order, `flushed[sector]` the
    value a completed flush covered."""
    rng = random.Random(7)
    v = Volume.open(
        store, "d1", config=cfg(segment_max_bytes=16 * KiB, checkpoint_every_segments=2)
    )
    try:
        for round_ in range(4):
            for _ in range(6):
                sector = rng.randrange(64)
                value = bytes([round_ * 16 + rng.randrange(16)]) * 512
                v.write(sector * 512, value)
                written.setdefault(sector, []).append(value)
            if round_ == 2:
                v.checkpoint()
            else:
                v.flush()
            for sector, values in written.items():
                flushed[sector] = values[-1]
        v.close()
    finally:
        v.abandon()


def _check_after_crash(
    store: ObjectStore, flushed: dict[int, bytes], written: dict[int, list[bytes]]
) -> None:
    r = reader(store)
    for sector in range(64):
        got = r.read(sector * 512, 512)
        values = written.get(sector, [])
        if sector in flushed:
            # the flushed value or a later one; never an older one, never garbage
            later = values[values.index(flushed[sector]) :]
            assert got in later, f"sector {sector} lost a flushed write"
        else:
            assert got in [bytes(512), *values]


@pytest.mark.parametrize("before", [True, False], ids=["crash-before-op", "crash-after-op"])
def test_crash_at_every_store_call_keeps_flushed_writes(before: bool) -> None:
    """Cut the store at each call in turn (open, segment PUTs, fence checks, checkpoint,
    close); the reopened volume holds every flushed write."""
    k = 0
    while True:
        inner = MemoryStore()
        Volume.create(inner, "d1", 32 * KiB)
        store = FaultyStore(inner)
        store.add(FaultRule(op="*", after=k, crash=True, apply_before=before))
        flushed: dict[int, bytes] = {}
        written: dict[int, list[bytes]] = {}
        try:
            _crash_scenario(store, flushed, written)
            completed = True
        except Unavailable:
            completed = False
        _check_after_crash(inner, flushed, written)
        # the crashed volume can be opened as a writer again and used
        v = Volume.open(inner, "d1", config=cfg())
        v.write(0, b"z" * 512, durable=True)
        v.close()
        if completed:
            break
        k += 1
    assert k > 12  # the sweep really went through the whole scenario


def test_abandon_drops_unflushed_only() -> None:
    store, v = new_volume()
    v.write(0, b"a" * 4096)
    v.flush()
    v.write(0, b"b" * 4096)
    v.write(8192, b"c" * 4096)
    v.abandon()
    r = reader(store)
    assert r.read(0, 4096) == b"a" * 4096
    assert r.read(8192, 4096) == bytes(4096)


def test_a_big_map_is_checkpointed_less_often() -> None:
    """A checkpoint costs in proportion to the map: with many extents the interval stretches
    to one segment per `checkpoint_extents_per_segment` extents (up to the max); a small map
    keeps `checkpoint_every_segments`."""
    store, v = new_volume(
        size=4 * MiB,
        checkpoint_every_segments=4,
        checkpoint_extents_per_segment=4,
        checkpoint_max_segments=32,
    )

    def checkpoints_after(segments: int, offset: Callable[[int], int]) -> int:
        before = v.stats.checkpoints_written
        for i in range(segments):
            v.write(offset(i), b"y" * 4096, durable=True)
            time.sleep(0.005)  # the committer thread writes checkpoints: let it run
        return v.stats.checkpoints_written - before

    assert checkpoints_after(32, lambda i: 0) >= 6  # a small map: every 4 segments
    for b in range(0, 1024, 2):  # 512 extents with holes between them
        v.write(b * 4096, b"x" * 4096)
    v.flush()
    # The same extents rewritten: the interval is min(32, 512 // 4) = 32 segments.
    assert 1 <= checkpoints_after(64, lambda i: i * 8192) <= 2
    v.close()
    r = reader(store)
    assert r.read(0, 4096) == b"y" * 4096 and r.read(4096, 4096) == bytes(4096)


class SlowHeaderStore(MemoryStore):
    """GETs of segment headers (at offset 0) take 2 ms and count how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self._count_lock = threading.Lock()
        self.running = 0
        self.most = 0

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if "/seg/" not in key or start != 0:
            return super().get(key, start, length)
        with self._count_lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.002)
            return super().get(key, start, length)
        finally:
            with self._count_lock:
                self.running -= 1


def test_replay_fetches_segment_headers_in_parallel() -> None:
    """Opening replays every segment after the checkpoint; their headers are fetched ahead in
    parallel (one GET after another made a long log slow to open), applied in log order."""
    store = SlowHeaderStore()
    Volume.create(store, "d1", 1 * MiB)
    v = Volume.open(store, "d1", config=cfg(checkpoint_every_segments=10**6))
    for i in range(60):
        v.write((i % 16) * 4096, bytes([i]) * 4096, durable=True)
    v.abandon()  # no checkpoint on the way out
    store.most = 0
    r = reader(store)
    assert r.stats.segments_replayed >= 60  # and the fence
    assert store.most > 4
    last = {i % 16: i for i in range(60)}
    assert r.read(0, 16 * 4096) == b"".join(bytes([last[b]]) * 4096 for b in range(16))


def test_corrupt_newest_checkpoint_is_an_error_not_silent_loss() -> None:
    store, v = new_volume()
    v.write(0, b"a" * 4096)
    v.checkpoint()
    v.close()
    raw = store.raw()  # type: ignore[attr-defined]
    ck = max(k for k in raw if "/ckpt/" in k)
    raw[ck] = raw[ck][:-1] + bytes([raw[ck][-1] ^ 1])
    with pytest.raises(IntegrityError):
        reader(store)


# --- fencing ------------------------------------------------------------------------------


def test_second_writer_fences_the_first() -> None:
    store, v1 = new_volume()
    v1.write(0, b"1" * 4096, durable=True)
    v2 = Volume.open(store, "d1", config=cfg())
    assert v2.epoch > v1.epoch
    assert v2.read(0, 4096) == b"1" * 4096
    v1.write(4096, b"L" * 4096)  # lands in v1's batch; its commit must fail
    with pytest.raises(Fenced):
        v1.flush()
    with pytest.raises(Fenced):
        v1.write(8192, b"M" * 512)
    v2.write(0, b"2" * 4096, durable=True)
    r = reader(store)
    assert r.read(0, 8192) == b"2" * 4096 + bytes(4096)  # v1's late write never appears
    v1.abandon()
    v2.close()
    assert reader(store).read(4096, 4096) == bytes(4096)


def seg_epoch(key: str, data: Buffer) -> int:
    return decode_segment_header(bytes(data), key).epoch


def data_segments(raw: dict[str, bytes]) -> list[str]:
    """Segment keys that hold records (not fences), in log order."""
    raw = dict(raw)  # a copy: a volume still open may write a checkpoint meanwhile
    return sorted(k for k in raw if "/seg/" in k and decode_segment_header(raw[k], k).records)


class RaceStore(MemoryStore):
    """A MemoryStore whose PUTs can be intercepted: `on_put(pred, fn)` runs `fn` just before the
    first PUT for which `pred(key, data)` holds (once); `hold(pred)` makes matching PUTs wait
    until the returned event is set, and records in `landed` every key stored."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[tuple[Callable[[str, Buffer], bool], Callable[[], None]]] = []
        self._after: list[tuple[Callable[[str, Buffer], bool], Callable[[], None]]] = []
        self._holds: list[tuple[Callable[[str, Buffer], bool], threading.Event]] = []
        self.landed: list[str] = []
        self.landed_cv = threading.Condition()

    def on_put(
        self, pred: Callable[[str, Buffer], bool], fn: Callable[[], None], *, after: bool = False
    ) -> None:
        (self._after if after else self._hooks).append((pred, fn))

    def hold(self, pred: Callable[[str, Buffer], bool]) -> threading.Event:
        ev = threading.Event()
        self._holds.append((pred, ev))
        return ev

    def wait_landed(self, key: str) -> None:
        with self.landed_cv:
            assert self.landed_cv.wait_for(lambda: key in self.landed, timeout=10)

    def put(self, key: str, data: Buffer, **kw: object) -> str:
        for i, (pred, fn) in enumerate(self._hooks):
            if pred(key, data):
                del self._hooks[i]
                fn()
                break
        for pred, ev in list(self._holds):
            if pred(key, data):
                assert ev.wait(10)
        try:
            return super().put(key, data, **kw)  # type: ignore[arg-type]
        finally:
            with self.landed_cv:
                self.landed.append(key)
                self.landed_cv.notify_all()
            for i, (pred, fn) in enumerate(self._after):
                if pred(key, data):
                    del self._after[i]
                    fn()
                    break


def is_seg(seq: int, epoch: int | None = None) -> Callable[[str, Buffer], bool]:
    """Matches the PUT of segment `seq` (by the writer of `epoch`, when given)."""
    suffix = f"/seg/{seq:016x}"

    def pred(key: str, data: Buffer) -> bool:
        return key.endswith(suffix) and (epoch is None or seg_epoch(key, data) == epoch)

    return pred


@pytest.mark.parametrize(
    ("moment", "expect"),
    [
        ("before-claim", "acked"),  # the old writer's segment is in the new writer's listing
        ("before-first-fence", "acked"),  # it takes the position the new writer wanted first
        ("before-window-fence", "fenced"),  # the new writer's first fence is already there
    ],
)
def test_old_writer_racing_a_new_open(moment: str, expect: str) -> None:
    """The old writer commits at a chosen moment inside the new writer's open. Whatever it
    acknowledges, the new writer and every later reader see; once the new writer's first fence
    exists, it acknowledges nothing more and its late write is never visible."""
    box: dict[str, Volume] = {}
    outcome: list[str] = []

    def old_writer_commits() -> None:
        box["v1"].write(4096, b"L" * 4096)
        try:
            box["v1"].flush()
            outcome.append("acked")
        except Fenced:
            outcome.append("fenced")

    store = RaceStore()
    Volume.create(store, "d1", MiB)
    v1 = box["v1"] = Volume.open(store, "d1", config=cfg())
    v1.write(0, b"1" * 4096, durable=True)
    nxt = v1.stats.segments_written + FENCE_SPAN + 1  # the old writer's next position
    new_epoch = v1.epoch + 1
    if moment == "before-claim":
        store.on_put(lambda k, _d: "/epoch/" in k, old_writer_commits)
    elif moment == "before-first-fence":
        store.on_put(is_seg(nxt, new_epoch), old_writer_commits)
    else:
        store.on_put(is_seg(nxt + 1, new_epoch), old_writer_commits)
    v2 = Volume.open(store, "d1", config=cfg())
    assert outcome == [expect]
    late = b"L" * 4096 if expect == "acked" else bytes(4096)
    assert v2.read(0, 8192) == b"1" * 4096 + late
    v2.write(8192, b"2" * 4096, durable=True)
    v2.close()
    r = reader(store)
    assert r.read(0, 12 * KiB) == b"1" * 4096 + late + b"2" * 4096
    v1.abandon()


def test_old_writer_pipelining_k_and_k1_while_new_writer_fences_k() -> None:
    """The old writer has seq k and k+1 in flight; k+1 lands, k is delayed. The new writer sees
    the gap at k and fences it; k+1 (already there) is void. The old writer's k then gets 412
    and it stops with Fenced; nobody ever sees k or k+1, and the new writer goes on past them."""
    store = RaceStore()
    Volume.create(store, "d1", MiB)
    v1 = Volume.open(store, "d1", config=cfg(max_inflight_segments=2, segment_max_bytes=4096))
    v1.write(0, b"1" * 4096, durable=True)
    k = FENCE_SPAN + 2
    release_k = store.hold(is_seg(k, v1.epoch))
    v1.write(4096, b"K" * 4096)  # fills a batch: seq k, sealed at once
    v1.write(8192, b"J" * 4096)  # seq k + 1
    store.wait_landed(keys.segment_key("d1", k + 1))
    flush_result: list[str] = []

    def flush_v1() -> None:
        try:
            v1.flush()
            flush_result.append("acked")
        except Fenced:
            flush_result.append("fenced")

    t = threading.Thread(target=flush_v1)
    t.start()
    v2 = Volume.open(store, "d1", config=cfg())
    assert v2.stats.segments_void == 1  # k + 1, met by the window fence
    release_k.set()
    t.join(10)
    assert flush_result == ["fenced"]
    assert seg_epoch(keys.segment_key("d1", k), store.raw()[keys.segment_key("d1", k)]) == v2.epoch
    assert v2.read(0, 12 * KiB) == b"1" * 4096 + bytes(8192)
    v2.write(4096, b"2" * 4096, durable=True)
    v2.close()
    for view in (reader(store), Volume.open(store, "d1", config=cfg())):
        assert view.read(0, 12 * KiB) == b"1" * 4096 + b"2" * 4096 + bytes(4096)
        view.close()
    v1.abandon()


@pytest.mark.parametrize("lands", ["before-window-fence", "after-window-fence"])
def test_new_writers_next_seq_taken_by_stale_old_segment(lands: str) -> None:
    """The old writer's PUT at k+1 (the position after the new writer's first fence at k) lands
    just before the new writer's fence there, or right after it. Before: the new writer's fence
    gets 412, finds an older epoch's segment after its own fence, counts it void and carries on.
    After: the old writer's PUT gets 412 and it is Fenced. Either way k+1 is never applied."""
    store = RaceStore()
    Volume.create(store, "d1", MiB)
    v1 = Volume.open(store, "d1", config=cfg(max_inflight_segments=2, segment_max_bytes=4096))
    v1.write(0, b"1" * 4096, durable=True)
    k = FENCE_SPAN + 2
    release_k = store.hold(is_seg(k, v1.epoch))
    release_k1 = store.hold(is_seg(k + 1, v1.epoch))
    key_k1 = keys.segment_key("d1", k + 1)
    v1.write(4096, b"K" * 4096)
    v1.write(8192, b"J" * 4096)
    if lands == "before-window-fence":

        def let_k1_land() -> None:
            release_k1.set()
            store.wait_landed(key_k1)

        store.on_put(is_seg(k + 1, v1.epoch + 1), let_k1_land)
    v2 = Volume.open(store, "d1", config=cfg())
    if lands == "after-window-fence":
        release_k1.set()  # its PUT meets the new writer's fence at k + 1
    release_k.set()
    with pytest.raises(Fenced):
        v1.flush()
    stored_k1 = store.raw()[key_k1]
    if lands == "before-window-fence":
        assert seg_epoch(key_k1, stored_k1) == v1.epoch
        assert v2.stats.segments_void == 1
    else:
        assert seg_epoch(key_k1, stored_k1) == v2.epoch
    v2.write(8192, b"2" * 4096, durable=True)
    assert v2.read(0, 12 * KiB) == b"1" * 4096 + bytes(4096) + b"2" * 4096
    v2.close()
    assert reader(store).read(0, 12 * KiB) == b"1" * 4096 + bytes(4096) + b"2" * 4096
    v1.abandon()


def test_a_newer_writers_fence_stops_an_opening_writer() -> None:
    """Two writers open at once: the one that meets the other's newer fence fails with Fenced
    instead of writing after it."""
    store = RaceStore()
    Volume.create(store, "d1", MiB)
    Volume.open(store, "d1", config=cfg()).close()
    box: dict[str, Volume] = {}

    def newer_opens() -> None:
        box["v3"] = Volume.open(store, "d1", config=cfg())

    # v2 claims epoch 2 and lists; before its first fence, v3 claims 3 and fences everything.
    store.on_put(lambda k, d: "/seg/" in k and seg_epoch(k, d) == 2, newer_opens)
    with pytest.raises(Fenced):
        Volume.open(store, "d1", config=cfg())
    v3 = box["v3"]
    v3.write(0, b"3" * 4096, durable=True)
    v3.close()
    assert reader(store).read(0, 4096) == b"3" * 4096


def test_writer_that_claimed_first_but_lists_after_a_newer_writer_fenced_stops() -> None:
    """v2 claims epoch 2; before it lists the log, v3 claims 3 and fences. v2 must not fence
    and write after v3's fence with its older epoch (all of it would be void, and acknowledged
    writes would be lost): it fails with Fenced."""
    store = RaceStore()
    Volume.create(store, "d1", MiB)
    Volume.open(store, "d1", config=cfg()).close()
    box: dict[str, Volume] = {}

    def newer_opens() -> None:
        box["v3"] = Volume.open(store, "d1", config=cfg())

    store.on_put(lambda k, _d: k.endswith("/epoch/00000002"), newer_opens, after=True)
    with pytest.raises(Fenced):
        Volume.open(store, "d1", config=cfg())
    assert box["v3"].epoch == 3
    box["v3"].write(0, b"3" * 4096, durable=True)
    box["v3"].close()
    assert reader(store).read(0, 4096) == b"3" * 4096


def test_gc_never_deletes_fences() -> None:
    """Fences stay when GC deletes everything else below the checkpoint: a fenced writer that
    retries a PUT at that position must keep getting 412."""
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 64 * KiB)
    Volume.open(store, "d1", config=cfg(), clock=clock).close()
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=4096), clock=clock)
    for i in range(8):
        v.write(0, bytes([i]) * 4096)
    v.flush()
    for _ in range(2):
        v.gc()
        clock.advance(v.config.gc_min_age_seconds + 1)
    v.gc()
    raw = store.raw()
    firsts = [keys.segment_key("d1", 1), keys.segment_key("d1", FENCE_SPAN + 1)]
    assert all(f in raw for f in firsts)
    segs = [k for k in raw if "/seg/" in k]
    assert len(segs) <= 3  # the two first fences and the live segment
    assert v.read(0, 4096) == bytes([7]) * 4096
    v.close()


def test_acknowledged_write_of_old_writer_survives_new_open() -> None:
    """The old writer's segment is acknowledged just before the new claim: the new writer's
    listing must include it."""
    store = MemoryStore()
    Volume.create(store, "d1", MiB)
    v1 = Volume.open(store, "d1", config=cfg())
    v1.write(0, b"A" * 4096, durable=True)
    v2 = Volume.open(store, "d1", config=cfg())
    assert v2.read(0, 4096) == b"A" * 4096
    v1.abandon()
    v2.close()


# --- corruption ---------------------------------------------------------------------------


def test_flipped_data_byte_is_detected() -> None:
    store, v = new_volume(checksum_chunk=4096)
    data = os.urandom(64 * KiB)
    v.write(0, data, durable=True)
    raw = store.raw()  # type: ignore[attr-defined]
    (seg,) = data_segments(raw)
    blob = bytearray(raw[seg])
    blob[-1000] ^= 0x01  # inside the last 4 KiB chunk of the data
    raw[seg] = bytes(blob)
    assert v.read(0, 4096) == data[:4096]  # other chunks still verify
    with pytest.raises(IntegrityError, match="checksum"):
        v.read(60 * KiB, 4096)
    assert v.stats.checksum_failures == 1
    v.close()
    r = reader(store)
    with pytest.raises(IntegrityError):
        r.read(0, 64 * KiB)
    assert r.stats.checksum_failures == 1


def test_records_back_to_back_are_one_get_into_the_buffer_and_each_verifies() -> None:
    """Two writes of one segment, next to each other on the disk and in the object: one read
    of both is one ranged GET that lands in the caller's buffer; a flipped bit in the second
    record still fails the read (each record's chunks verify against its own sums)."""
    store, v = new_volume(checksum_chunk=4096)
    a, b = os.urandom(64 * KiB), os.urandom(64 * KiB)
    v.write(0, a)
    v.write(64 * KiB, b)
    v.flush()
    v.close()
    r = reader(store)
    gets = r.stats.gets
    assert r.read(0, 128 * KiB) == a + b
    assert r.stats.gets - gets == 1
    raw = store.raw()  # type: ignore[attr-defined]
    (seg,) = data_segments(raw)
    blob = bytearray(raw[seg])
    blob[-5] ^= 0x04  # in the second record's last chunk
    raw[seg] = bytes(blob)
    with pytest.raises(IntegrityError, match="checksum"):
        r.read(0, 128 * KiB)
    assert r.stats.checksum_failures == 1
    assert r.read(0, 64 * KiB) == a


def test_flipped_header_byte_fails_open() -> None:
    store, v = new_volume()
    v.write(0, b"x" * 4096, durable=True)
    v.abandon()  # no checkpoint: opening must replay the segment
    raw = store.raw()  # type: ignore[attr-defined]
    (seg,) = data_segments(raw)
    blob = bytearray(raw[seg])
    blob[30] ^= 0x10
    raw[seg] = bytes(blob)
    with pytest.raises(IntegrityError):
        reader(store)


# --- snapshots, clones, changed ranges ------------------------------------------------------


def test_snapshot_is_frozen_and_clone_diverges() -> None:
    store, v = new_volume(size=256 * KiB)
    v.write(0, b"a" * 8192)
    s1 = v.create_snapshot("s1")
    assert (s1.name, s1.disk_id, s1.size) == ("s1", "d1", 256 * KiB)
    with pytest.raises(Conflict):
        v.create_snapshot("s1")
    v.write(4096, b"b" * 8192)
    snap = Volume.open_snapshot(store, "d1", "s1", config=cfg())
    assert snap.read(0, 16384) == b"a" * 8192 + bytes(8192)
    with pytest.raises(Conflict):
        snap.write(0, b"x" * 512)
    Volume.create(store, "c1", 0, source=("d1", "s1"))
    c = Volume.open(store, "c1", config=cfg())
    assert c.size == 256 * KiB
    assert c.read(0, 16384) == b"a" * 8192 + bytes(8192)
    c.write(0, b"c" * 4096, durable=True)
    assert v.read(0, 4096) == b"a" * 4096  # the source is untouched
    assert v.read(4096, 8192) == b"b" * 8192
    assert c.read(0, 16384) == b"c" * 4096 + b"a" * 4096 + bytes(8192)
    c.close()
    assert reader(store, "c1").read(0, 8192) == b"c" * 4096 + b"a" * 4096
    assert [s.name for s in v.list_snapshots()] == ["s1"]
    with pytest.raises(Conflict, match="c1"):
        v.delete_snapshot("s1")
    with pytest.raises(Conflict, match="c1"):
        Volume.destroy(store, "d1")
    Volume.destroy(store, "c1")
    v.delete_snapshot("s1")
    assert v.list_snapshots() == []
    with pytest.raises(NotFound):
        Volume.open_snapshot(store, "d1", "s1")
    v.close()
    Volume.destroy(store, "d1")
    assert not store.raw()  # type: ignore[attr-defined]


def test_clone_of_clone_and_larger_clone() -> None:
    store, v = new_volume(size=64 * KiB)
    v.write(0, b"a" * 4096)
    v.create_snapshot("s")
    Volume.create(store, "c1", 128 * KiB, source=("d1", "s"))
    c1 = Volume.open(store, "c1", config=cfg())
    assert c1.size == 128 * KiB
    c1.write(100 * KiB, b"x" * 4096)
    c1.create_snapshot("t")
    with pytest.raises(InvalidArgument):
        Volume.create(store, "c2", 64 * KiB, source=("c1", "t"))
    Volume.create(store, "c2", 0, source=("c1", "t"))
    c2 = Volume.open(store, "c2", config=cfg())
    assert c2.read(0, 4096) == b"a" * 4096
    assert c2.read(100 * KiB, 4096) == b"x" * 4096
    for vol in (v, c1, c2):
        vol.close()


def test_changed_ranges() -> None:
    _store, v = new_volume(size=1 * MiB)
    v.write(0, b"a" * 8192)
    v.write(512 * KiB, b"a" * 4096)
    v.create_snapshot("s1")
    v.write(4096, b"b" * 4096)
    v.trim(512 * KiB, 4096)
    v.write(900 * KiB, b"c" * 1024)
    v.create_snapshot("s2")
    v.write(0, b"d" * 512)
    assert v.changed_ranges(None, "s1") == [(0, 8192), (512 * KiB, 512 * KiB + 4096)]
    assert v.changed_ranges("s1", "s2") == [
        (4096, 8192),
        (512 * KiB, 512 * KiB + 4096),
        (900 * KiB, 900 * KiB + 1024),
    ]
    assert v.changed_ranges("s2") == [(0, 512)]
    assert v.changed_ranges("s2", "s2") == []
    v.close()


# --- garbage collection -------------------------------------------------------------------


def test_gc_bounds_space_under_random_overwrite() -> None:
    clock = FakeClock()
    store = MemoryStore()
    size = 2 * MiB
    Volume.create(store, "d1", size)
    v = Volume.open(
        store,
        "d1",
        config=cfg(segment_max_bytes=128 * KiB, checkpoint_every_segments=16),
        clock=clock,
    )
    rng = random.Random(1)
    model = bytearray(size)
    for i in range(6000):
        off = rng.randrange(size // 4096) * 4096
        data = rng.randbytes(4096)
        v.write(off, data)
        model[off : off + 4096] = data
        if i % 64 == 63:
            v.flush()
    v.flush()
    before = v.stored_bytes()
    assert before > 4 * size  # lots of garbage before GC
    for _ in range(3):
        v.gc()
        clock.advance(v.config.gc_min_age_seconds + 1)
    result = v.gc()
    assert result.objects_deleted > 0 or v.stats.gc_objects_deleted > 0
    live = v.live_bytes()
    assert v.stored_bytes() < 2 * live
    assert v.read(0, size) == model
    v.close()
    r = reader(store)
    assert r.read(0, size) == model


def test_gc_merges_small_segments_in_disk_order() -> None:
    """4 KiB durable writes in random order leave one segment per write; GC merges them, in
    disk order, so that a sequential read of the region costs a few GETs instead of one per
    write. Only segments older than gc_merge_min_age_seconds are merged; merged segments are
    not merged again."""
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 4 * MiB)
    v = Volume.open(store, "d1", config=cfg(), clock=clock)
    rng = random.Random(2)
    model = bytearray(4 * MiB)
    for block in rng.sample(range(256), 256):  # every 4 KiB of the first MiB, shuffled
        data = rng.randbytes(4096)
        v.write(block * 4096, data, durable=True)
        model[block * 4096 : (block + 1) * 4096] = data

    def gets_to_read_first_mib() -> int:
        r = reader(store)
        before = store.stats.gets
        assert r.read(0, MiB) == model[:MiB]
        gets = store.stats.gets - before
        r.close()
        return gets

    assert gets_to_read_first_mib() >= 200  # about one GET per write
    assert v.gc().segments_compacted == 0  # too young: might still be rewritten
    clock.advance(v.config.gc_merge_min_age_seconds + 1)
    result = v.gc()
    assert result.segments_compacted == 256 and result.bytes_rewritten == MiB
    assert gets_to_read_first_mib() <= 2
    assert v.gc().segments_compacted == 0  # a merged segment is not small: left alone
    assert v.read(0, 4 * MiB) == model
    v.close()


def test_gc_lays_a_randomly_overwritten_area_out_in_disk_order() -> None:
    """The common life of a VM disk: written sequentially once, then most of it overwritten by
    4 KiB durable writes in random order. GC rewrites the sparse sequential segments and merges
    the small ones together, in disk order: every MiB reads with one or two GETs again (not one
    per write), and the merged segments hold few, long records."""
    clock = FakeClock()
    store = MemoryStore()
    area = 6 * MiB
    Volume.create(store, "d1", area)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=MiB), clock=clock)
    rng = random.Random(3)
    model = bytearray(rng.randbytes(area))
    v.write(0, bytes(model))
    v.flush()
    blocks = area // 4096
    for block in rng.sample(range(blocks), blocks * 3 // 4):
        data = rng.randbytes(4096)
        v.write(block * 4096, data, durable=True)
        model[block * 4096 : (block + 1) * 4096] = data
    before_gc = set(data_segments(store.raw()))

    def gets_per_mib() -> list[int]:
        r = reader(store)
        gets = []
        for off in range(0, area, MiB):
            before = store.stats.gets
            assert r.read(off, MiB) == model[off : off + MiB]
            gets.append(store.stats.gets - before)
        r.close()
        return gets

    assert min(gets_per_mib()) > 100
    clock.advance(v.config.gc_merge_min_age_seconds + 1)
    result = v.gc()
    assert result.bytes_rewritten == area
    assert max(gets_per_mib()) <= 2
    merged = [k for k in data_segments(store.raw()) if k not in before_gc]
    records = [len(decode_segment_header(store.raw()[k], k).records) for k in merged]
    assert len(merged) <= area // MiB + 1 and sum(records) <= 2 * len(merged)
    assert v.read(0, area) == model
    v.close()


def test_gc_fetches_each_segment_once_even_when_scattered() -> None:
    """A sparse segment whose live pieces lie all over the disk would fall into every batch of
    a disk-order pass; GC keeps it together and fetches it once. Every segment of the pass is
    fetched exactly once."""
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 8 * MiB)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=256 * KiB), clock=clock)
    rng = random.Random(4)
    blocks = rng.sample(range(2048), 200)
    for b in blocks[:60]:  # one segment of 60 blocks scattered over 8 MiB
        v.write(b * 4096, rng.randbytes(4096))
    v.flush()
    for b in blocks[:40] + blocks[60:]:  # 2/3 of it overwritten, and more small writes
        v.write(b * 4096, rng.randbytes(4096), durable=True)
    model = v.read(0, 8 * MiB)
    clock.advance(v.config.gc_merge_min_age_seconds + 1)
    gets = store.stats.gets
    result = v.gc()
    assert result.bytes_rewritten == 200 * 4096  # in several batches of 256 KiB
    assert result.segments_compacted == 1 + 180
    # One GET per segment, and one for the disk's retention setting (engine/points.py).
    assert store.stats.gets - gets == result.segments_compacted + 1
    assert v.read(0, 8 * MiB) == model
    v.close()
    assert reader(store).read(0, 8 * MiB) == model


def test_gc_waits_min_age_and_keeps_snapshots() -> None:
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 256 * KiB)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=32 * KiB), clock=clock)
    old = os.urandom(256 * KiB)
    v.write(0, old)
    v.create_snapshot("keep")
    new = os.urandom(256 * KiB)
    v.write(0, new)
    v.flush()
    v.gc()
    clock.advance(10_000)
    v.gc()
    snap = Volume.open_snapshot(store, "d1", "keep", config=cfg())
    assert snap.read(0, 256 * KiB) == old  # the snapshot still holds its segments
    with_snapshot = v.stored_bytes()
    assert with_snapshot > 2 * 256 * KiB
    v.delete_snapshot("keep")
    r1 = v.gc()
    assert r1.objects_deleted == 0 and r1.objects_waiting > 0  # too young to delete yet
    clock.advance(v.config.gc_min_age_seconds + 1)
    r2 = v.gc()
    assert r2.objects_deleted > 0
    assert v.stored_bytes() < with_snapshot - 200 * KiB
    assert v.read(0, 256 * KiB) == new
    v.close()
    assert reader(store).read(0, 256 * KiB) == new


def test_source_gc_keeps_what_a_clone_needs() -> None:
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 64 * KiB)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=16 * KiB), clock=clock)
    base = os.urandom(64 * KiB)
    v.write(0, base)
    v.create_snapshot("s")
    Volume.create(store, "c1", 0, source=("d1", "s"))
    v.write(0, os.urandom(64 * KiB))
    v.flush()
    for _ in range(3):
        v.gc()
        clock.advance(1000)
    c = Volume.open(store, "c1", config=cfg(), clock=clock)
    assert c.read(0, 64 * KiB) == base
    c.write(0, b"z" * 4096)
    for _ in range(3):
        c.gc()
        clock.advance(1000)
    assert c.read(0, 64 * KiB) == b"z" * 4096 + base[4096:]
    # the clone's GC touched only its own objects: the source snapshot still reads whole
    assert Volume.open_snapshot(store, "d1", "s", config=cfg()).read(0, 64 * KiB) == base
    c.close()
    v.close()


def test_gc_compaction_never_overwrites_newer_writes() -> None:
    """A live extent GC copies may be overwritten (or trimmed) while GC runs; the newer data
    must win."""
    clock = FakeClock()
    store = MemoryStore()
    Volume.create(store, "d1", 256 * KiB)
    v = Volume.open(store, "d1", config=cfg(segment_max_bytes=1 * MiB), clock=clock)
    for i in range(8):
        v.write(i * 8192, bytes([i + 1]) * 8192)
    v.flush()  # one segment, eight extents
    for i in range(6):
        v.write(i * 8192, b"n" * 8192)
    v.flush()  # the first segment is now 25% live: a compaction candidate
    v.write(6 * 8192, b"P" * 8192)  # pending, not flushed, over a live extent of it
    v.trim(7 * 8192, 4096)  # pending trim over the other one
    result = v.gc()
    assert result.segments_compacted >= 1
    want = b"n" * 6 * 8192 + b"P" * 8192 + bytes(4096) + bytes([8]) * 4096
    assert v.read(0, 8 * 8192) == want
    v.close()
    assert reader(store).read(0, 8 * 8192) == want


def test_many_threads_read_their_writes_while_committing() -> None:
    """nbdkit calls from many threads: each thread owns a region, writes, reads back at once
    (from memory or from the store, whichever the committer has reached) and flushes now and
    then; the small commit delay keeps the committer sealing batches underneath."""
    store = MemoryStore()
    Volume.create(store, "d1", 4 * MiB)
    v = Volume.open(
        store,
        "d1",
        config=VolumeConfig(gc_interval_seconds=0, commit_delay=0.0002, segment_max_bytes=32 * KiB),
    )
    errors: list[BaseException] = []
    finals: dict[int, bytes] = {}

    def worker(t: int) -> None:
        rng = random.Random(t)
        base = t * 512 * KiB
        region = bytearray(512 * KiB)
        try:
            for i in range(300):
                off = rng.randrange(0, 512 * KiB // 4096) * 4096
                data = rng.randbytes(4096 * rng.randint(1, 4))[: 512 * KiB - off]
                v.write(base + off, data, durable=(i % 50 == 0))
                region[off : off + len(data)] = data
                if i % 7 == 0:
                    v.trim(base + off, 4096)
                    region[off : off + 4096] = bytes(4096)
                if i % 10 == 0:
                    assert v.read(base, 512 * KiB) == region
                if i % 40 == 0:
                    v.flush()
            v.flush()
            finals[t] = bytes(region)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    v.close()
    r = reader(store)
    for t, region in finals.items():
        assert r.read(t * 512 * KiB, 512 * KiB) == region


def test_a_fenced_writer_closes_at_once() -> None:
    """close() after Fenced must not wait for the refused segment (it never will be stored);
    an export of a fenced disk is stopped with SIGTERM and must exit promptly."""
    store, old = new_volume()
    old.write(0, b"x" * 4096, durable=True)
    new = Volume.open(store, "d1", config=cfg())
    with pytest.raises(Fenced):
        old.write(0, b"y" * 4096, durable=True)
    done = threading.Event()
    threading.Thread(target=lambda: (old.close(), done.set()), daemon=True).start()
    assert done.wait(10), "close() of a fenced writer hangs"
    assert new.read(0, 4096) == b"x" * 4096
    new.close()


def _requests(store: MemoryStore) -> int:
    s = store.stats
    return s.gets + s.puts + s.lists + s.heads + s.deletes


def test_background_gc_of_an_idle_volume_sends_no_requests() -> None:
    """Issue #21: once a pass finds nothing to do and nothing waits, the passes that follow
    without a write in between are skipped (no store request), until `gc_idle_interval_seconds`
    has passed; a write makes them run again."""
    store = MemoryStore()
    Volume.create(store, "d1", 4 * MiB)
    config = cfg(gc_interval_seconds=0.02, gc_min_age_seconds=0.0, gc_idle_interval_seconds=3600)
    v = Volume.open(store, "d1", config=config)
    v.write(0, b"x" * 4096, durable=True)
    deadline = time.monotonic() + 5
    while v.stats.gc_passes < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a pass in flight ends
    passes, before = v.stats.gc_passes, _requests(store)
    time.sleep(0.3)  # fifteen intervals
    assert (v.stats.gc_passes, _requests(store)) == (passes, before)
    v.write(4096, b"y" * 4096, durable=True)
    deadline = time.monotonic() + 5
    while v.stats.gc_passes == passes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert v.stats.gc_passes > passes
    v.close()
