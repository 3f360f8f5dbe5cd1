"""Geo-replication of the volume log: consistent prefix under load, failover with the primary
stopped, failback, GC jumps and mirrored deletes, resume without recopying, read repair.

The load tests run on two real SeaweedFS servers (`seaweed`, `seaweed2`); the GC and resume
tests use in-memory stores where only the algorithm is under test. Every write carries its own
index, so what a store holds can be matched against the exact prefix of the write sequence it
claims to be: anything torn (a mix of states) or invented (bytes nobody wrote) fails the check.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import BlockstoreError, NotFound
from blockstore.format import keys
from blockstore.geo.config import ReplicationConfig
from blockstore.geo.frontier import trim_after_frontier, truncate_after
from blockstore.geo.progress import progress_key
from blockstore.geo.replicator import DiskReplicator
from blockstore.store.base import ObjectStore
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore
from blockstore.store.repair import RepairingStore
from tests.support.seaweed import SeaweedServer

BLOCK = 4096
BLOCKS = 256  # a 1 MiB disk
_n = itertools.count()
FAST = ReplicationConfig(interval_seconds=0.05, marker_every_seconds=0.0, mirror_every=1)


def cfg(**kw: object) -> VolumeConfig:
    base: dict[str, object] = {"gc_interval_seconds": 0, "checkpoint_every_segments": 16}
    base.update(kw)
    return VolumeConfig(**base)  # type: ignore[arg-type]


def block_of(index: int) -> bytes:
    return struct.pack("<Q", index + 1) * (BLOCK // 8)


class Load:
    """Random 4 KiB writes, one tagged block each, with a flush every `flush_every`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.targets: list[int] = []  # block written by write i
        self.flushed: list[tuple[int, float]] = []  # (writes covered, time the flush returned)

    def run(self, vol: Volume, stop: threading.Event, flush_every: int, limit: int) -> None:
        try:
            while not stop.is_set() and len(self.targets) < limit:
                b = self.rng.randrange(BLOCKS)
                vol.write(b * BLOCK, block_of(len(self.targets)))
                self.targets.append(b)
                if len(self.targets) % flush_every == 0:
                    vol.flush()
                    self.flushed.append((len(self.targets), time.monotonic()))
        except BlockstoreError:
            pass  # the store went away under us: the test goes on from what was flushed

    def model(self, prefix: int) -> list[int | None]:
        state: list[int | None] = [None] * BLOCKS
        for i in range(prefix):
            state[self.targets[i]] = i
        return state


def read_state(vol: Volume) -> list[int | None]:
    data = vol.read(0, BLOCKS * BLOCK)
    out: list[int | None] = []
    for b in range(BLOCKS):
        blk = data[b * BLOCK : (b + 1) * BLOCK]
        if blk == bytes(BLOCK):
            out.append(None)
            continue
        (tag,) = struct.unpack_from("<Q", blk)
        assert blk == struct.pack("<Q", tag) * (BLOCK // 8), f"block {b} is torn"
        out.append(tag - 1)
    return out


def check_prefix(load: Load, state: list[int | None]) -> int:
    """The prefix of writes `state` is; fails if it is no prefix at all."""
    prefix = max((t for t in state if t is not None), default=-1) + 1
    assert prefix <= len(load.targets), "a write nobody made"
    assert state == load.model(prefix), "not the state after any prefix of the writes"
    return prefix


@pytest.fixture
def two(
    seaweed: SeaweedServer, seaweed2: SeaweedServer
) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    prefix = f"geo-{next(_n)}-{os.getpid()}/"
    primary = seaweed.make_store(prefix, deadline_seconds=3)
    secondary = seaweed2.make_store(prefix, deadline_seconds=3)
    yield primary, secondary
    primary.close()
    secondary.close()


class Recording(FaultyStore):
    """A pass-through store that remembers the keys it was asked to PUT."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.put_keys: list[str] = []

    def put(self, key: str, data: object, **kw: object) -> str:  # type: ignore[override]
        self.put_keys.append(key)
        return super().put(key, data, **kw)  # type: ignore[arg-type]


def replicate_in_background(rep: DiskReplicator, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            rep.run_once()
            time.sleep(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("seed", [1, 2])
def test_failover_under_load_gives_a_flushed_prefix_and_fails_back(
    seaweed: SeaweedServer, two: tuple[ObjectStore, ObjectStore], seed: int
) -> None:
    primary, secondary = two
    rng = random.Random(seed)
    Volume.create(primary, "d", BLOCKS * BLOCK)
    vol = Volume.open(primary, "d", config=cfg(segment_max_bytes=64 << 10))
    rep = DiskReplicator(primary, secondary, "d", config=FAST)
    load = Load(seed)
    stop_load, stop_rep = threading.Event(), threading.Event()
    writer = threading.Thread(target=load.run, args=(vol, stop_load, 16, 20_000), daemon=True)
    writer.start()
    repl = replicate_in_background(rep, stop_rep)
    time.sleep(rng.uniform(1.0, 3.0))
    # The primary region goes dark mid-load.
    seaweed.pause()
    stopped_at = time.monotonic()
    try:
        stop_load.set()
        stop_rep.set()
        repl.join(30)
        writer.join(30)
        assert not repl.is_alive() and not writer.is_alive()
        # Failover: the secondary's log ends at its replay frontier; open it as the writer.
        fork = trim_after_frontier(secondary, "d")
        failover_started = time.monotonic()
        new = Volume.open(secondary, "d", config=cfg())
        failover_seconds = time.monotonic() - failover_started
        state = read_state(new)
        prefix = check_prefix(load, state)
        covered = [t for n, t in load.flushed if n <= prefix]
        rpo = stopped_at - covered[-1] if covered else float("nan")
        print(
            f"\nseed {seed}: {len(load.targets)} writes, {len(load.flushed)} flushes; the "
            f"secondary holds {prefix} (last flush covered ended {rpo:.2f}s before the outage); "
            f"open as writer {failover_seconds * 1000:.0f} ms"
        )
        # The new primary takes writes.
        new.write(0, b"\xab" * BLOCK)
        new.flush()
    finally:
        seaweed.resume()
    vol.abandon()
    # Failback: fence whatever wrote to the old primary, cut its log at the fork, copy back.
    Volume.open(primary, "d", config=cfg()).abandon()
    truncate_after(primary, "d", fork)
    new.close()
    back = DiskReplicator(secondary, primary, "d", config=FAST)
    assert back.catch_up(max_passes=50)
    reopened = Volume.open(primary, "d", writable=False, config=cfg())
    expect = read_state(new_view := Volume.open(secondary, "d", writable=False, config=cfg()))
    assert read_state(reopened) == expect
    assert reopened.read(0, BLOCK) == b"\xab" * BLOCK
    reopened.close()
    new_view.close()
    rep.close()
    back.close()


def test_gc_on_the_primary_makes_the_secondary_jump_and_mirror_deletes() -> None:
    primary, secondary = MemoryStore(), MemoryStore()
    Volume.create(primary, "g", BLOCKS * BLOCK)
    conf = cfg(gc_min_age_seconds=0.0, segment_max_bytes=16 << 10)
    vol = Volume.open(primary, "g", config=conf)
    for i in range(64):
        vol.write((i % 32) * BLOCK, block_of(i))
    vol.flush()
    rep = DiskReplicator(primary, secondary, "g", config=FAST)
    assert rep.catch_up()
    lagging_at = rep.stats.frontier_seq
    # More writes and a GC the secondary has not seen: the segments after its frontier are
    # gone from the primary before it could copy them.
    for i in range(64, 256):
        vol.write((i % 32) * BLOCK, block_of(i))
    vol.flush()
    vol.gc()
    vol.gc()
    assert not primary.raw().get(keys.segment_key("g", lagging_at + 1))
    assert rep.catch_up()
    view = Volume.open(secondary, "g", writable=False, config=conf)
    assert view.read(0, 32 * BLOCK) == vol.read(0, 32 * BLOCK)
    view.close()
    # The secondary collected what the primary deleted and its own log does not need.
    sec_segs = {k for k in secondary.raw() if keys.parse_segment_key(k)}
    pri_segs = {k for k in primary.raw() if keys.parse_segment_key(k)}
    assert sec_segs <= pri_segs | {
        k for k in sec_segs if keys.parse_segment_key(k)[1] > rep._t.ckpt_seq
    }  # type: ignore[union-attr, index]
    assert rep.stats.objects_deleted > 0 or sec_segs <= pri_segs
    vol.close()
    rep.close()


def test_snapshots_reach_the_secondary_and_their_deletion_too() -> None:
    primary, secondary = MemoryStore(), MemoryStore()
    Volume.create(primary, "s", BLOCKS * BLOCK)
    vol = Volume.open(primary, "s", config=cfg())
    vol.write(0, block_of(1))
    vol.create_snapshot("one")
    vol.write(0, block_of(2))
    vol.flush()
    rep = DiskReplicator(primary, secondary, "s", config=FAST)
    assert rep.catch_up()
    snap = Volume.open_snapshot(secondary, "s", "one", config=cfg())
    assert snap.read(0, BLOCK) == block_of(1)
    snap.close()
    vol.delete_snapshot("one")
    rep.run_once()
    assert keys.snapshot_key("s", "one") not in secondary.raw()
    vol.close()
    rep.close()


def test_a_killed_replicator_resumes_without_recopying() -> None:
    primary, secondary = MemoryStore(), MemoryStore()
    Volume.create(primary, "r", BLOCKS * BLOCK)
    vol = Volume.open(primary, "r", config=cfg(segment_max_bytes=8 << 10))
    for i in range(200):
        vol.write((i * 7 % BLOCKS) * BLOCK, block_of(i))
    vol.close()
    # The first replicator dies after 40 PUTs to the target (its process is gone).
    faulty = FaultyStore(secondary)
    faulty.add(FaultRule(op="put", after=40, crash=True))
    first = DiskReplicator(primary, faulty, "r", config=FAST)
    first.run_once()
    assert first.stats.errors == 1
    there = set(secondary.raw())
    assert 0 < first.stats.objects_copied <= 40 and len(there) == first.stats.objects_copied
    first.close()
    recording = Recording(secondary)
    second = DiskReplicator(primary, recording, "r", config=FAST)
    assert second.catch_up()
    # Nothing the first one copied was copied (or even re-sent) again.
    assert recording.put_keys and not (set(recording.put_keys) - {progress_key("r")}) & there
    assert second.stats.objects_skipped == 0
    view = Volume.open(secondary, "r", writable=False)
    model = Volume.open(primary, "r", writable=False)
    assert view.read(0, BLOCKS * BLOCK) == model.read(0, BLOCKS * BLOCK)
    view.close()
    model.close()
    second.close()


def test_failback_replaces_a_cut_off_writers_segment_that_landed_after_the_cut() -> None:
    """A writer of the old primary that was cut off (and idle while it was fenced) can land a
    segment in the old primary's log after failback cut the log at the fork. The copy back
    finds it, sees it comes from an older writer than the secondary's, and replaces it: the
    old primary ends up holding the secondary's disk, not a mix."""
    primary, secondary = MemoryStore(), MemoryStore()
    Volume.create(primary, "f", BLOCKS * BLOCK)
    stale = Volume.open(primary, "f", config=cfg())
    stale.write(0, block_of(0), durable=True)
    forward = DiskReplicator(primary, secondary, "f", config=FAST)
    assert forward.catch_up()
    fork = forward.stats.frontier_seq
    forward.close()
    # Failover: the secondary's writer carries on (a newer epoch than the stale writer's).
    newer = Volume.open(secondary, "f", config=cfg())
    newer.write(BLOCK, block_of(1), durable=True)
    newer.close()
    # Failback: fence the old primary, cut its log at the fork; then the stale writer lands
    # one more segment in the freed positions.
    Volume.open(primary, "f", config=cfg()).abandon()
    truncate_after(primary, "f", fork)
    stale.write(2 * BLOCK, block_of(2), durable=True)
    stale.abandon()
    back = DiskReplicator(secondary, primary, "f", config=FAST, check_target_after=fork)
    assert back.catch_up()
    assert back.stats.objects_replaced >= 1 and back.stats.errors == 0
    view = Volume.open(primary, "f", writable=False)
    model = Volume.open(secondary, "f", writable=False)
    assert view.read(0, 3 * BLOCK) == block_of(0) + block_of(1) + bytes(BLOCK)
    assert view.read(0, BLOCKS * BLOCK) == model.read(0, BLOCKS * BLOCK)
    view.close()
    model.close()
    back.close()


def test_a_differing_log_object_from_a_newer_writer_stops_the_copy() -> None:
    """The copy never overwrites a log object that is not provably stale."""
    source, target = MemoryStore(), MemoryStore()
    Volume.create(source, "g", BLOCKS * BLOCK)
    v = Volume.open(source, "g", config=cfg())
    v.write(0, block_of(0), durable=True)
    v.close()
    seg = next(k for k in source.raw() if keys.parse_segment_key(k))
    r = DiskReplicator(source, target, "g", config=FAST)
    assert r.catch_up()
    raw = bytearray(target.get(seg))
    raw[-1] ^= 0xFF  # same writer, different bytes: not a stale writer's
    target.put(seg, bytes(raw))
    for k in [k for k in target.raw() if keys.parse_checkpoint_key(k)]:
        target.delete(k)  # as failback's cut does past the fork: the log is copied again
    check = DiskReplicator(source, target, "g", config=FAST, check_target_after=0)
    check.run_once()
    assert check.stats.errors == 1 and "not replacing" in (check.stats.last_error or "")
    assert target.get(seg) == bytes(raw)
    check.close()
    r.close()


def test_read_repair_from_the_secondary(two: tuple[ObjectStore, ObjectStore]) -> None:
    primary, secondary = two
    Volume.create(primary, "rr", BLOCKS * BLOCK)
    vol = Volume.open(primary, "rr", config=cfg(segment_max_bytes=16 << 10))
    for i in range(64):
        vol.write(i * BLOCK, block_of(i))
    vol.close()
    rep = DiskReplicator(primary, secondary, "rr", config=FAST)
    assert rep.catch_up()
    rep.close()
    segs = [i for i in primary.list(keys.segment_prefix("rr")) if i.size > 200]
    lost, damaged = segs[0].key, segs[len(segs) // 2].key
    primary.delete(lost)
    blob = bytearray(primary.get(damaged))
    blob[-100] ^= 0xFF  # a flipped bit in the data of the segment's last record
    primary.put(damaged, bytes(blob))
    # Without repair the damage is seen (EIO), never served.
    plain = Volume.open(primary, "rr", writable=False, config=cfg())
    with pytest.raises(BlockstoreError):
        plain.read(0, 64 * BLOCK)
    plain.close()
    repairing = RepairingStore(primary, secondary)
    view = Volume.open(repairing, "rr", writable=False, config=cfg())
    for i in range(64):
        assert view.read(i * BLOCK, BLOCK) == block_of(i)
    view.close()
    assert repairing.repair_stats.repaired_corrupt >= 1
    # Rewritten on the primary: a plain open reads everything again.
    plain = Volume.open(primary, "rr", writable=False, config=cfg())
    assert plain.read(0, 64 * BLOCK) == b"".join(block_of(i) for i in range(64))
    plain.close()
    assert primary.get(lost) == secondary.get(lost)
    # What neither store has stays missing.
    with pytest.raises(NotFound):
        repairing.get(keys.segment_key("rr", 999_999))
