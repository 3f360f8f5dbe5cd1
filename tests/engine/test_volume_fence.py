"""Fencing and the one log rule (blockstore/engine/fence.py), under torn PUTs and writers that keep
writing.

- A writer whose own segment PUT left an empty object resumes by itself in its own epoch, with
  no acknowledged write lost, but never once a newer epoch was claimed (in memory and on the
  real SeaweedFS).
- The three-writer interleaving of issue #14 (a torn PUT, a fence past it, a writer opening
  from a listing taken before that fence) keeps every acknowledged write.
- A property test drives three writers over one in-memory store with torn data and fence PUTs
  and stale listings, and checks that every acknowledged write survives (for readers, and after
  a further writer's checkpoint) and that no write refused with `Fenced` is ever visible.
- A new writer fences an old writer that keeps writing, and the old one's next commit fails.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from blockstore.engine.fence import FENCE_SPAN, FENCE_WINDOW, LogRule
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import BlockstoreError, Fenced, Unavailable
from blockstore.format import keys
from blockstore.format.segment import WRITE, LogRecord, SegmentHeader
from blockstore.store.base import ObjectInfo, ObjectStore
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore
from blockstore.store.retry import RetryConfig, RetryingStore

KiB = 4096 // 4
BLOCK = 4096
SEG = keys.segment_prefix("d")


def cfg(**kw: object) -> VolumeConfig:
    base: dict[str, object] = {"gc_interval_seconds": 0, "checkpoint_every_segments": 10**6}
    base.update(kw)
    return VolumeConfig(**base)  # type: ignore[arg-type]


def block(tag: int) -> bytes:
    return tag.to_bytes(4, "little") * (BLOCK // 4)


def read_all(store: ObjectStore, n_blocks: int) -> bytes:
    r = Volume.open(store, "d", writable=False, config=cfg())
    try:
        return r.read(0, n_blocks * BLOCK)
    finally:
        r.close()


class FrozenListing(ObjectStore):
    """Serves LISTs of the log (segments, checkpoints) from a copy taken earlier: a LIST that
    was answered before other writers' PUTs landed. Everything else goes to `inner`."""

    def __init__(self, inner: ObjectStore, frozen: dict[str, list[ObjectInfo]]) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.frozen = frozen
        self.thawed = False

    @staticmethod
    def take(store: ObjectStore) -> dict[str, list[ObjectInfo]]:
        return {p: list(store.list(p)) for p in (SEG, keys.checkpoint_prefix("d"))}

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, start, length)

    def put(self, key: str, data: bytes | bytearray | memoryview, **kw: object) -> str:  # type: ignore[override]
        return self.inner.put(key, data, **kw)  # type: ignore[arg-type]

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        if self.thawed or prefix not in self.frozen:
            return self.inner.list(prefix, start_after)
        return iter([o for o in self.frozen[prefix] if start_after is None or o.key > start_after])


# -- the rule itself --------------------------------------------------------------------------


def hdr(seq: int, epoch: int, data: bool = True) -> SegmentHeader:
    recs = [LogRecord(WRITE, 0, 512, data_off=0)] if data else []
    return SegmentHeader(seq, epoch, "d", 4096, recs, 0, 512 if data else 0)


def test_the_log_rule() -> None:
    r = LogRule()
    assert r.judge(1, hdr(1, 1, data=False))  # epoch 1's first fence
    assert not r.judge(2, None)  # torn inside the span: harmless
    assert r.judge(FENCE_SPAN + 1, hdr(FENCE_SPAN + 1, 1))  # data, run whole
    t = FENCE_SPAN + 2
    assert not r.judge(t, None)  # torn outside the span: breaks the run
    assert r.broken_at == t
    assert not r.judge(t + 1, hdr(t + 1, 1))  # data after it: void
    assert not r.judge(t + 2, hdr(t + 2, 1, data=False))  # a fence inside its window: void
    assert not r.judge(t + 3, None)  # another torn one: still broken at t
    assert r.judge(t + FENCE_WINDOW, hdr(t + FENCE_WINDOW, 1, data=False))  # resume fence
    assert r.broken_at == 0
    assert r.judge(t + FENCE_WINDOW + 1, hdr(t + FENCE_WINDOW + 1, 1))
    u = t + 20
    assert not r.judge(u, None)  # broken again, and a newer epoch's fence takes the log
    assert r.judge(u + 1, hdr(u + 1, 2, data=False))
    assert (r.epoch, r.fences, r.broken_at) == (2, [1, u + 1], 0)
    assert not r.judge(u + 2, hdr(u + 2, 1))  # an older epoch's late PUT: void
    assert not r.judge(u + 3, None)  # torn inside epoch 2's span: harmless
    assert r.broken_at == 0


# -- item 7: a writer's own torn PUT ---------------------------------------------------------


def _resume_scenario(base: ObjectStore, faulty_of: Callable[[ObjectStore], ObjectStore]) -> None:
    Volume.create(base, "d", 1 << 20)
    faulty = FaultyStore(base)
    v = Volume.open(faulty_of(faulty), "d", config=cfg())
    v.write(0, block(1), durable=True)
    faulty.tear(SEG)  # the next segment PUT dies mid-body and leaves an empty object
    try:
        v.write(BLOCK, block(2), durable=True)
    except Unavailable:
        v.write(2 * BLOCK, block(3), durable=True)  # resumes and re-sends block 2's batch
    else:
        v.write(2 * BLOCK, block(3), durable=True)  # RetryingStore: resumed within the write
    assert v.stats.log_resumes == 1
    assert v.read(0, 3 * BLOCK) == block(1) + block(2) + block(3)
    # More writes, in flight together, after the resume.
    for i in range(4, 12):
        v.write((i - 1) * BLOCK, block(i))
    v.flush()
    v.abandon()  # no checkpoint: readers judge the torn run and the resume fence themselves
    want = b"".join(block(i) for i in range(1, 12))
    assert read_all(base, 11) == want
    w = Volume.open(base, "d", config=cfg())  # a later writer fences past it all
    w.write(11 * BLOCK, block(12), durable=True)
    w.close()
    assert read_all(base, 12) == want + block(12)


@pytest.mark.parametrize("retrying", [False, True])
def test_a_writer_resumes_past_its_own_torn_put(retrying: bool) -> None:
    def wrap(s: ObjectStore) -> ObjectStore:
        return RetryingStore(s, RetryConfig(deadline_seconds=5)) if retrying else s

    _resume_scenario(MemoryStore(), wrap)


def test_a_writer_resumes_past_its_own_torn_put_on_seaweedfs(
    s3_store_factory: Callable[..., ObjectStore],
) -> None:
    _resume_scenario(s3_store_factory("torn-resume"), lambda s: s)


def test_pipelined_batches_after_a_torn_one_keep_their_order() -> None:
    """Batches t (torn), t+1, t+2 in flight, all overwriting one block: after the resume they
    are re-sent in order, so the last value wins, for this writer and for every reader."""
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    faulty = FaultyStore(store)
    v = Volume.open(faulty, "d", config=cfg(max_inflight_segments=4, segment_max_bytes=4096))
    v.write(0, block(1), durable=True)
    faulty.tear(SEG)
    for i in range(2, 8):
        v.write(0, block(i))  # one full batch each
    with pytest.raises(Unavailable):
        v.flush()
    v.flush()
    assert v.stats.log_resumes == 1
    assert v.read(0, BLOCK) == block(7)
    v.abandon()
    assert read_all(store, 1) == block(7)


def test_a_writer_never_resumes_once_a_newer_epoch_is_claimed() -> None:
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    faulty = FaultyStore(store)
    v = Volume.open(faulty, "d", config=cfg())
    v.write(0, block(1), durable=True)
    faulty.tear(SEG)
    with pytest.raises(Unavailable):
        v.write(BLOCK, block(2), durable=True)
    store.put(keys.epoch_key("d", v.epoch + 1), b"", if_none_match=True)  # authorised elsewhere
    with pytest.raises(Fenced):
        v.flush()
    with pytest.raises(Fenced):
        v.write(2 * BLOCK, block(3), durable=True)
    assert v.stats.log_resumes == 0
    v.abandon()
    w = Volume.open(store, "d", config=cfg())
    assert w.read(0, 3 * BLOCK) == block(1) + bytes(2 * BLOCK)
    w.close()


def test_a_writer_that_cannot_list_epochs_does_not_resume() -> None:
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    faulty = FaultyStore(store)
    v = Volume.open(faulty, "d", config=cfg())
    v.write(0, block(1), durable=True)
    faulty.tear(SEG)
    with pytest.raises(Unavailable):
        v.write(BLOCK, block(2), durable=True)
    faulty.add(FaultRule(op="list", key_contains="/epoch/"))
    with pytest.raises(Fenced):
        v.flush()
    v.abandon()


def test_a_newer_openers_torn_fence_at_our_next_position_fences_us() -> None:
    """A newer opener's fence PUT died mid-body at the older writer's next data position (and
    the opener died). The older writer meets an empty object there, as if its own PUT had torn,
    but must not resume: a newer epoch was claimed. Nothing it wrote after is visible."""
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    w1 = Volume.open(store, "d", config=cfg())
    w1.write(0, block(1), durable=True)
    nxt = max(p[1] for k in store.raw() if (p := keys.parse_segment_key(k))) + 1
    f2 = FaultyStore(store)
    f2.add(FaultRule(op="put", key_contains=keys.segment_key("d", nxt), torn=True))
    with pytest.raises(Unavailable):
        Volume.open(f2, "d", config=cfg())  # dies: its fence at nxt is torn
    with pytest.raises(Fenced):
        w1.write(BLOCK, block(2), durable=True)
    assert w1.stats.log_resumes == 0
    w1.abandon()
    assert read_all(store, 2) == block(1) + bytes(BLOCK)
    w3 = Volume.open(store, "d", config=cfg())
    assert w3.read(0, 2 * BLOCK) == block(1) + bytes(BLOCK)
    w3.close()


# -- item 5: three writers and a torn PUT ----------------------------------------------------


def test_a_writer_opening_from_a_listing_before_a_fence_past_a_torn_put_keeps_its_writes() -> None:
    """W1's PUT at L+1 is torn; W2 fences past it and acknowledges M; W3 opens from a listing
    taken before W2's fence, and checkpoints. M must survive, for W3 and for every reader."""
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    f1 = FaultyStore(store)
    w1 = Volume.open(f1, "d", config=cfg())
    w1.write(0, block(1), durable=True)
    f1.tear(SEG)
    with pytest.raises(Unavailable):
        w1.write(BLOCK, block(2), durable=True)  # torn at L+1
    early = FrozenListing.take(store)
    w2 = Volume.open(store, "d", config=cfg())
    w2.write(2 * BLOCK, block(3), durable=True)  # M
    w3_store = FrozenListing(store, early)
    w3 = Volume.open(w3_store, "d", config=cfg())
    w3_store.thawed = True
    assert w3.read(2 * BLOCK, BLOCK) == block(3)
    w3.close()  # checkpoint
    assert read_all(store, 3)[2 * BLOCK :] == block(3)
    assert read_all(store, 1) == block(1)
    with pytest.raises(Fenced):
        w2.write(3 * BLOCK, block(4), durable=True)
    with pytest.raises(Fenced):
        w1.flush()  # W1 may not resume: newer epochs exist
    w1.abandon()
    w2.abandon()


TEARS = [0, 0, 0, 0, 0, 1, 2, FENCE_SPAN - 1, FENCE_SPAN, FENCE_SPAN + 1]
WRITER_PLAN = st.tuples(
    st.booleans(),  # stale: its LISTs are answered as of just before the previous opener
    st.sampled_from(TEARS),  # > 0: its fence PUT that far past the log's end is torn
    # writes: (by_older, torn, burst); a burst is three pipelined writes and a flush
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=3),
    st.booleans(),  # checkpoint at the end of its turn
)


class ThreeWriters:
    """Three writers opened in epoch order over one in-memory store, each behind its own fault
    wrapper: torn data PUTs, torn fence PUTs (a dying opener), and openers whose LISTs were
    answered before the previous opener fenced (the race of issue #14). Between openings the
    newest writer, or the one before it, writes. Every write goes to its own block, so its
    visibility says everything: acknowledged ones must stay visible, to readers, to the newest
    writer and after a later writer's checkpoint; ones refused with `Fenced`, never."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        Volume.create(self.store, "d", 1 << 20)
        self.writers: list[tuple[Volume, FaultyStore]] = []
        self.acked: set[int] = set()  # blocks whose write was acknowledged
        self.refused: set[int] = set()  # blocks whose write raised Fenced
        self.unknown: dict[int, list[int]] = {}  # id(volume) -> blocks with no answer yet
        self.next_block = 0

    def top_seq(self) -> int:
        return max((p[1] for k in self.store.raw() if (p := keys.parse_segment_key(k))), default=0)

    def open(self, listing: dict[str, list[ObjectInfo]] | None, tear: int) -> None:
        faulty = FaultyStore(self.store)
        store: ObjectStore = faulty if listing is None else FrozenListing(faulty, listing)
        if tear:
            faulty.add(
                FaultRule(op="put", key_contains=keys.segment_key("d", self.top_seq() + tear),
                          torn=True)
            )  # fmt: skip
        try:
            v = Volume.open(
                store, "d", config=cfg(max_inflight_segments=2, segment_max_bytes=BLOCK)
            )
        except (Unavailable, Fenced):
            return  # a dying opener: its fences stay behind
        if isinstance(store, FrozenListing):
            store.thawed = True
        faulty.heal()
        self.writers.append((v, faulty))
        self.unknown[id(v)] = []

    def write(self, by_older: bool, torn: bool, burst: bool) -> None:
        if not self.writers:
            return
        v, faulty = self.writers[-2 if by_older and len(self.writers) > 1 else -1]
        pending = self.unknown[id(v)]
        if torn:
            faulty.tear(SEG)
        try:
            if not burst:
                blk = self.next_block
                self.next_block += 1
                try:
                    v.write(blk * BLOCK, block(blk + 1), durable=True)
                except Fenced:
                    self.refused.add(blk)  # its segment is past the fence, or never sent
                    return
                except BlockstoreError:
                    pending.append(blk)
                    return
                self.acked.add(blk)
            else:
                for _ in range(3):  # one batch each, two PUTs in flight at a time
                    blk = self.next_block
                    self.next_block += 1
                    try:
                        v.write(blk * BLOCK, block(blk + 1))
                    except Fenced:
                        self.refused.add(blk)  # refused before it joined a batch
                        return
                    pending.append(blk)
                try:
                    v.flush()
                except BlockstoreError:
                    return  # some of the burst may have landed before a fence: unknown
            self.acked.update(pending)  # a durable write or flush covers every earlier one
            pending.clear()
        finally:
            faulty.heal()

    def checkpoint(self) -> None:
        if self.writers:
            with contextlib.suppress(BlockstoreError):
                self.writers[-1][0].checkpoint()

    def check(self, data: bytes, *, refused: bool = True) -> None:
        for blk in self.acked:
            assert data[blk * BLOCK : (blk + 1) * BLOCK] == block(blk + 1), f"lost block {blk}"
        for blk in self.refused if refused else ():
            assert data[blk * BLOCK : (blk + 1) * BLOCK] == bytes(BLOCK), f"fenced {blk} seen"

    def check_all(self) -> None:
        n = max(self.next_block, 1)
        self.check(read_all(self.store, n))
        if self.writers:
            # Its own refused writes stay in its overlay (read-your-writes): acked ones only.
            self.check(self.writers[-1][0].read(0, n * BLOCK), refused=False)

    def finish(self) -> None:
        for v, _f in self.writers:
            v.abandon()
        last = Volume.open(self.store, "d", config=cfg())  # takes the log and checkpoints
        self.check(last.read(0, max(self.next_block, 1) * BLOCK))
        last.close()
        self.check(read_all(self.store, max(self.next_block, 1)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WRITER_PLAN, min_size=3, max_size=3))
def test_three_writers_with_torn_puts(
    plan: list[tuple[bool, int, list[tuple[bool, bool, bool]], bool]],
) -> None:
    note(f"plan (stale, tear, [(by_older, torn, burst)], checkpoint) per writer: {plan!r}")
    m = ThreeWriters()
    before_previous: dict[str, list[ObjectInfo]] | None = None
    for stale, tear, writes, checkpoint in plan:
        now = FrozenListing.take(m.store)
        m.open(before_previous if stale else None, tear)
        before_previous = now
        m.check_all()
        for by_older, torn, burst in writes:
            m.write(by_older, torn, burst)
            m.check_all()
        if checkpoint:
            m.checkpoint()
            m.check_all()
    m.finish()


# -- item 2: fencing a writer that keeps writing ----------------------------------------------


class SlowStore(MemoryStore):
    """A memory store whose PUTs take `delay` seconds: writers overlap like on a network."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def put(self, key: str, data: bytes | bytearray | memoryview, **kw: object) -> str:  # type: ignore[override]
        time.sleep(self.delay)
        return super().put(key, data, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["memory", "seaweedfs"])
def test_a_new_writer_fences_a_writer_that_keeps_writing(
    where: str, request: pytest.FixtureRequest
) -> None:
    """An old writer does 4 KiB durable writes at QD8 with every PUT slot it may have; a new
    writer opens meanwhile: it returns in bounded time, the old writer's next commit fails with
    `Fenced`, and every write the old writer acknowledged is in the new writer's view."""
    store: ObjectStore = (
        SlowStore(0.002) if where == "memory" else request.getfixturevalue("s3_store_factory")()
    )
    Volume.create(store, "d", 64 << 20)
    old = Volume.open(store, "d", config=cfg(max_inflight_segments=FENCE_WINDOW))
    acked: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(lane: int) -> None:
        i = lane
        while not stop.is_set():
            try:
                old.write(i * BLOCK, block(i + 1), durable=True)
            except Fenced:
                return
            except BaseException as exc:
                errors.append(exc)
                return
            acked.append(i)
            i += 8

    threads = [threading.Thread(target=writer, args=(lane,)) for lane in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    new = Volume.open(store, "d", config=cfg())
    took = time.monotonic() - t0
    with pytest.raises(Fenced):
        old.write(0, b"x" * BLOCK, durable=True)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert took < 5
    data = new.read(0, (max(acked) + 1) * BLOCK)
    for i in acked:
        assert data[i * BLOCK : (i + 1) * BLOCK] == block(i + 1)
    new.close()
    old.abandon()
    r = Volume.open(store, "d", writable=False, config=cfg())  # and so does every reader
    data = r.read(0, (max(acked) + 1) * BLOCK)
    assert all(data[i * BLOCK : (i + 1) * BLOCK] == block(i + 1) for i in acked)
    r.close()


def test_a_replica_judges_a_torn_run_and_a_resume_like_the_primary() -> None:
    """The replicator copies torn (empty) segment objects as they are, so the secondary's log
    reads the same, past the torn position and the writer's resume."""
    from blockstore.geo.replicator import DiskReplicator

    primary, secondary = MemoryStore(), MemoryStore()
    Volume.create(primary, "d", 1 << 20)
    faulty = FaultyStore(primary)
    v = Volume.open(faulty, "d", config=cfg())
    v.write(0, block(1), durable=True)
    faulty.tear(SEG)
    with pytest.raises(Unavailable):
        v.write(BLOCK, block(2), durable=True)
    v.write(2 * BLOCK, block(3), durable=True)
    v.abandon()
    rep = DiskReplicator(primary, secondary, "d")
    try:
        stats = rep.run_once()
        assert stats.errors == 0, stats.last_error
    finally:
        rep.close()
    assert read_all(secondary, 3) == read_all(primary, 3) == block(1) + block(2) + block(3)
