"""Versioned records: create-if-absent versions, racing writers, tombstones, pruning."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from blockstore.clock import FakeClock
from blockstore.control.records import (
    KEEP_VERSIONS,
    MAX_READ_AGE_SECONDS,
    PRUNE_AGE_SECONDS,
    PRUNE_EVERY,
    MirroredRecords,
    Record,
    RecordStore,
)
from blockstore.errors import Conflict, NotFound, Unavailable
from blockstore.store.base import ObjectStore
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore


@pytest.fixture(params=["memory", "seaweedfs"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    factory: Callable[..., ObjectStore] = request.getfixturevalue("s3_store_factory")
    # A generous retry deadline: SeaweedFS makes racing writers of one key wait in 1 s steps
    # (docs/format.md), and the racing test below has 16 of them.
    return factory("records", deadline_seconds=60.0)


def test_create_get_update_delete(store: ObjectStore) -> None:
    recs = RecordStore(store, "control/disks/")
    recs.create("a", {"size": 1})
    with pytest.raises(Conflict):
        recs.create("a", {"size": 2})
    assert recs.get("a") == {"size": 1}
    recs.update("a", lambda cur: {**(cur or {}), "size": 3})
    assert recs.get("a") == {"size": 3}
    recs.delete("a")
    with pytest.raises(NotFound):
        recs.get("a")
    assert dict(recs.items()) == {}
    recs.create("a", {"size": 4})  # a deleted name can be used again
    assert recs.get("a") == {"size": 4}


def test_items_lists_live_records_in_order(store: ObjectStore) -> None:
    recs = RecordStore(store, "control/x/")
    for name in ("b", "a", "c"):
        recs.create(name, {"n": name})
    recs.delete("b")
    assert list(recs.items()) == [("a", {"n": "a"}), ("c", {"n": "c"})]


def test_old_versions_are_pruned_only_when_old(store: ObjectStore) -> None:
    clock = FakeClock()
    recs = RecordStore(store, "control/p/", clock)
    recs.create("r", {"i": 0})
    for i in range(1, PRUNE_EVERY):
        recs.update("r", lambda cur, i=i: {"i": i})
    assert len(list(store.list("control/p/r/"))) == PRUNE_EVERY  # all young: all kept
    clock.advance(PRUNE_AGE_SECONDS + 1)
    for i in range(PRUNE_EVERY, 2 * PRUNE_EVERY):
        recs.update("r", lambda cur, i=i: {"i": i})
    versions = [int(o.key.rsplit("/", 1)[1]) for o in store.list("control/p/r/")]
    # the old ones went at the pruning pass; the young ones since stay
    assert min(versions) > PRUNE_EVERY - KEEP_VERSIONS
    assert recs.get("r") == {"i": 2 * PRUNE_EVERY - 1}


def test_a_stalled_writer_reads_again() -> None:
    """A read older than half the prune age is never written on."""
    clock = FakeClock()
    recs = RecordStore(MemoryStore(), "control/s/", clock)
    recs.create("r", {"n": 0})
    calls = []

    def slow(cur: Record | None) -> Record:
        calls.append(cur)
        if len(calls) == 1:
            clock.advance(MAX_READ_AGE_SECONDS + 1)
        assert cur is not None
        return {"n": cur["n"] + 1}

    recs.update("r", slow)
    assert len(calls) == 2
    assert recs.get("r") == {"n": 1}


def test_racing_updates_lose_nothing(store: ObjectStore) -> None:
    """16 threads each add their own item 3 times to one record: every addition survives,
    because each version is created with If-None-Match and losers re-read and retry."""
    recs = RecordStore(store, "control/race/")
    recs.create("r", {"items": []})
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(3):

            def add(cur: Record | None, item: str = f"{i}-{j}") -> Record:
                assert cur is not None
                return {"items": [*cur["items"], item]}

            recs.update("r", add)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = recs.get("r")["items"]
    assert sorted(items) == sorted(f"{i}-{j}" for i in range(16) for j in range(3))


def test_a_torn_version_is_skipped(store: ObjectStore) -> None:
    """SeaweedFS 4.48 keeps an empty object when a PUT is cut before its body: such a version
    never succeeded, so the record reads as the version before it and the next update goes on
    top of the torn number."""
    recs = RecordStore(store, "control/torn/")
    recs.create("r", {"n": 1})
    store.put("control/torn/r/00000000000000000002", b"")
    assert recs.get("r") == {"n": 1}
    recs.update("r", lambda cur: {"n": 2})
    assert recs.get("r") == {"n": 2}
    assert [o.key[-1] for o in store.list("control/torn/r/")] == ["1", "2", "3"]
    assert dict(recs.items()) == {"r": {"n": 2}}


# -- records mirrored to a second region (MirroredRecords) ----------------------------------


class Regions:
    """Two in-memory regions; the primary can be taken down completely."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.primary_store = FaultyStore(MemoryStore())
        self.secondary_store = FaultyStore(MemoryStore())
        self.primary = RecordStore(self.primary_store, "control/disks/", self.clock)
        self.secondary = RecordStore(self.secondary_store, "control/disks/", self.clock)
        self.recs = self.mirrored_records()

    def mirrored_records(self) -> MirroredRecords:
        return MirroredRecords(
            self.primary,
            self.secondary,
            mirrored=lambda r: r.get("redundancy") == "grs",
            in_secondary=lambda r: r.get("primary") == "secondary",
            hold_seconds=5.0,
        )

    @staticmethod
    def down(store: FaultyStore) -> None:
        store.add(FaultRule(times=10**9))


def test_mirrored_records_are_copied_and_others_are_not() -> None:
    r = Regions()
    r.recs.create("g", {"redundancy": "grs", "n": 1})
    r.recs.create("l", {"redundancy": "lrs", "n": 1})
    r.recs.update("g", lambda cur: {**(cur or {}), "n": 2})
    assert r.secondary.get("g") == {"redundancy": "grs", "n": 2}
    assert r.secondary.find("l") is None
    assert dict(r.recs.items()) == {
        "g": {"redundancy": "grs", "n": 2},
        "l": {"redundancy": "lrs", "n": 1},
    }
    r.recs.delete("g")  # the tombstone is mirrored too
    assert r.secondary.find("g") is None and r.recs.find("g") is None


def test_failover_recorded_with_the_primary_down_wins_when_it_returns() -> None:
    r = Regions()
    r.recs.create("g", {"redundancy": "grs", "primary": "primary", "n": 1})
    r.down(r.secondary_store)  # the mirror falls behind: it keeps n=1 ...
    for n in (2, 3, 4):
        r.recs.update("g", lambda cur, n=n: {**(cur or {}), "n": n})
    r.secondary_store.heal()
    r.down(r.primary_store)  # ... then the primary goes down completely
    with pytest.raises(Unavailable):
        r.recs.create("l", {"redundancy": "lrs"})  # only the primary can say
    assert r.recs.get("g")["n"] == 1  # the last mirrored copy
    calls = r.primary_store.calls
    r.recs.update("g", lambda cur: {**(cur or {}), "primary": "secondary"})
    assert r.primary_store.calls == calls  # held down: not asked again meanwhile
    assert r.recs.get("g") == {"redundancy": "grs", "primary": "secondary", "n": 1}
    r.recs.update("g", lambda cur: {**(cur or {}), "n": 5})  # lives in the secondary now
    r.primary_store.heal()
    r.clock.advance(6.0)
    # The primary holds a higher version number (4) with the old home; the failover's newer
    # generation wins, for this process and for a fresh one.
    for recs in (r.recs, r.mirrored_records()):
        assert recs.get("g") == {"redundancy": "grs", "primary": "secondary", "n": 5}
        assert dict(recs.items())["g"]["primary"] == "secondary"
    r.recs.update("g", lambda cur: {**(cur or {}), "n": 6})
    assert r.primary.get("g") == {"redundancy": "grs", "primary": "secondary", "n": 6}
    r.recs.update("g", lambda cur: {**(cur or {}), "primary": "primary"})  # failback
    assert r.primary.get("g")["primary"] == "primary"
    assert r.recs.get("g") == {"redundancy": "grs", "primary": "primary", "n": 6}


def test_a_change_racing_a_failover_is_applied_on_top_of_it() -> None:
    r = Regions()
    r.recs.create("g", {"redundancy": "grs", "primary": "primary", "attached": None})
    racer = r.mirrored_records()
    raced = False

    def attach(cur: Record | None) -> Record:
        nonlocal raced
        if not raced:  # the failover lands in the secondary between our read and our write
            raced = True
            racer.update("g", lambda c: {**(c or {}), "primary": "secondary"})
        return {**(cur or {}), "attached": "vm1"}

    r.recs.update("g", attach)
    assert r.recs.get("g") == {"redundancy": "grs", "primary": "secondary", "attached": "vm1"}


def test_marks_change_with_a_record_in_either_region() -> None:
    """The host's watch of its disks (control/holders.py) reads again only records whose mark
    changed: a change in either region changes it; the secondary away leaves its part out."""
    r = Regions()
    r.recs.create("g", {"redundancy": "grs", "n": 1})
    r.recs.create("l", {"redundancy": "lrs", "n": 1})
    before = r.recs.marks()
    assert set(before) == {"g", "l"} and r.recs.marks() == before
    r.recs.update("l", lambda cur: {**(cur or {}), "n": 2})
    after = r.recs.marks()
    assert after["l"] != before["l"] and after["g"] == before["g"]
    r.secondary.update("g", lambda cur: {**(cur or {}), "n": 3})  # a failover's own version
    assert r.recs.marks()["g"] != after["g"]
    r.down(r.secondary_store)
    assert set(r.recs.marks()) == {"g", "l"}
