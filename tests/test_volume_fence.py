"""Fencing and the one log rule (blockstore/fence.py), under torn PUTs and writers that keep
writing.

- A writer whose own segment PUT left an empty object resumes by itself in its own epoch, with
  no acknowledged write lost, but never once a newer epoch was claimed (in memory and on the
  real SeaweedFS).
- The three-writer interleaving of issue #14 (a torn PUT, a fence past it, a writer opening
  from a listing taken before that fence) keeps every acknowledged write.
- A stateful test drives three writers over one in-memory store with torn data and fence PUTs
  and stale listings, and checks that every acknowledged write survives (for readers, and after
  a further writer's checkpoint) and that no write refused with `Fenced` is ever visible.
- A new writer fences an old writer that keeps writing, and the old one's next commit fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from blockstore import keys
from blockstore.errors import BlockstoreError, Fenced, Unavailable
from blockstore.faults import FaultRule, FaultyStore
from blockstore.fence import FENCE_SPAN, FENCE_WINDOW
from blockstore.objectstore import MemoryStore, ObjectInfo, ObjectStore
from blockstore.retry import RetryConfig, RetryingStore
from blockstore.volume import Volume, VolumeConfig

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


class ThreeWriters(RuleBasedStateMachine):
    """Up to three writers, opened in epoch order over one in-memory store, each behind its own
    fault wrapper; torn data PUTs, torn fence PUTs (a dying opener) and openers whose LISTs
    were answered at an earlier moment. Every write goes to its own block, so its visibility
    says everything: acknowledged ones must be visible, ones refused with `Fenced` never."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        Volume.create(self.store, "d", 1 << 20)
        self.writers: list[tuple[Volume, FaultyStore] | None] = []
        self.acked: set[int] = set()  # blocks whose write was acknowledged
        self.refused: set[int] = set()  # blocks whose write raised Fenced
        self.unknown: dict[int, list[int]] = {}  # writer -> blocks with no answer yet
        self.snaps: list[dict[str, list[ObjectInfo]]] = []
        self.next_block = 0

    def _top_seq(self) -> int:
        return max(
            (p[1] for k in self.store.raw() if (p := keys.parse_segment_key(k))),
            default=0,
        )

    @rule()
    def take_listing(self) -> None:
        self.snaps.append(FrozenListing.take(self.store))

    @precondition(lambda self: len(self.writers) < 3)
    @rule(stale=st.integers(-1, 3), tear=st.integers(0, FENCE_SPAN + 3))
    def open_writer(self, stale: int, tear: int) -> None:
        """`stale` >= 0: LISTs answered at an earlier listing; `tear` > 0: the fence PUT that
        many positions past the current end of the log is torn (the open fails)."""
        faulty = FaultyStore(self.store)
        store: ObjectStore = faulty
        frozen = None
        if 0 <= stale < len(self.snaps):
            frozen = store = FrozenListing(faulty, self.snaps[stale])
        if tear:
            faulty.add(
                FaultRule(op="put", key_contains=keys.segment_key("d", self._top_seq() + tear),
                          torn=True)
            )  # fmt: skip
        try:
            v = Volume.open(store, "d", config=cfg(max_inflight_segments=2))
        except (Unavailable, Fenced):
            self.writers.append(None)
            return
        if frozen is not None:
            frozen.thawed = True
        faulty.heal()
        self.writers.append((v, faulty))
        self.unknown[len(self.writers) - 1] = []

    def _live(self, i: int) -> tuple[Volume, FaultyStore] | None:
        return self.writers[i % len(self.writers)] if self.writers else None

    def _settle(self, i: int, exc: BaseException | None, blk: int | None) -> None:
        if exc is None:
            self.acked.update(self.unknown[i])
            self.unknown[i].clear()
            if blk is not None:
                self.acked.add(blk)
        elif isinstance(exc, Fenced):
            if blk is not None:
                self.refused.add(blk)
        elif blk is not None:
            self.unknown[i].append(blk)

    @precondition(lambda self: any(self.writers))
    @rule(i=st.integers(0, 2), torn=st.booleans())
    def write(self, i: int, torn: bool) -> None:
        i %= len(self.writers)
        w = self.writers[i]
        if w is None:
            return
        v, faulty = w
        blk = self.next_block
        self.next_block += 1
        if torn:
            faulty.tear(SEG)
        try:
            v.write(blk * BLOCK, block(blk + 1), durable=True)
        except BlockstoreError as exc:
            self._settle(i, exc, blk)
        else:
            self._settle(i, None, blk)
        faulty.heal()

    @precondition(lambda self: any(self.writers))
    @rule(i=st.integers(0, 2))
    def flush(self, i: int) -> None:
        i %= len(self.writers)
        w = self.writers[i]
        if w is None:
            return
        try:
            w[0].flush()
        except BlockstoreError as exc:
            self._settle(i, exc, None)
        else:
            self._settle(i, None, None)

    def _check(self, data: bytes) -> None:
        for blk in self.acked:
            assert data[blk * BLOCK : (blk + 1) * BLOCK] == block(blk + 1), f"lost block {blk}"
        for blk in self.refused:
            assert data[blk * BLOCK : (blk + 1) * BLOCK] == bytes(BLOCK), f"fenced {blk} seen"

    @invariant()
    def readers_see_every_acknowledged_write(self) -> None:
        self._check(read_all(self.store, max(self.next_block, 1)))

    def teardown(self) -> None:
        try:
            for w in self.writers:
                if w is not None:
                    w[0].abandon()
            # A further writer takes the log and checkpoints; then readers start from there.
            last = Volume.open(self.store, "d", config=cfg())
            self._check(last.read(0, max(self.next_block, 1) * BLOCK))
            last.close()
            self._check(read_all(self.store, max(self.next_block, 1)))
        finally:
            super().teardown()


ThreeWriters.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_three_writers_with_torn_puts = ThreeWriters.TestCase


# -- item 2: fencing a writer that keeps writing ----------------------------------------------


class SlowStore(MemoryStore):
    """A memory store whose PUTs take `delay` seconds: writers overlap like on a network."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def put(self, key: str, data: bytes | bytearray | memoryview, **kw: object) -> str:  # type: ignore[override]
        time.sleep(self.delay)
        return super().put(key, data, **kw)  # type: ignore[arg-type]


def test_a_new_writer_fences_a_writer_that_keeps_writing() -> None:
    store = SlowStore(0.002)
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
            except BaseException as exc:  # noqa: BLE001 - reported below
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
