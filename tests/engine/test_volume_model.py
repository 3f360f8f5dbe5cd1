"""Stateful model test: random write / trim / flush / snapshot / clone / crash-and-reopen / GC /
resize against a plain bytearray, on the in-memory store (and a shorter run on real SeaweedFS
in test_volume_s3.py).

After a crash (abandon, then reopen) every sector must hold its value as of the last completed
flush or a value written after it: nothing flushed is lost, nothing invented.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from blockstore.clock import FakeClock
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import Conflict
from blockstore.store.base import ObjectStore
from blockstore.store.memory import MemoryStore

S = 512
START_SECTORS = 192  # 96 KiB: small disks and segments make collisions and GC likely

CONFIG = VolumeConfig(
    segment_max_bytes=12 * 1024,
    commit_delay=3600.0,  # batches close on size, flush or durable write: deterministic
    checksum_chunk=1024,
    checkpoint_every_segments=3,
    gc_live_threshold=0.5,
    gc_min_age_seconds=300.0,
    max_inflight_segments=2,
    gc_interval_seconds=0,
)


def sector_data(write_id: int, sector: int) -> bytes:
    return (write_id.to_bytes(4, "little") + sector.to_bytes(4, "little")) * (S // 8)


class VolumeMachine(RuleBasedStateMachine):
    store_factory: Callable[[], ObjectStore] = MemoryStore

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).store_factory()
        self.clock = FakeClock()
        Volume.create(self.store, "d", START_SECTORS * S)
        self.vol = self.open()
        self.model = bytearray(START_SECTORS * S)  # what reads must return now
        self.durable = bytearray(self.model)  # content as of the last completed flush
        self.since_flush: dict[int, list[bytes]] = {}  # sector -> values written since
        self.next_id = 1
        self.snaps: dict[str, bytes] = {}
        self.clones: dict[str, bytes] = {}  # clone disk -> its expected content
        self.clone_source: dict[str, str] = {}  # clone disk -> snapshot name

    def open(self) -> Volume:
        return Volume.open(self.store, "d", config=CONFIG, clock=self.clock)

    @property
    def sectors(self) -> int:
        return len(self.model) // S

    def _flushed(self) -> None:
        self.durable = bytearray(self.model)
        self.since_flush.clear()

    # -- rules --

    @rule(data=st.data(), n=st.integers(1, 10), durable=st.booleans())
    def write(self, data: st.DataObject, n: int, durable: bool) -> None:
        n = min(n, self.sectors)
        start = data.draw(st.integers(0, self.sectors - n))
        wid = self.next_id
        self.next_id += 1
        payload = b"".join(sector_data(wid, start + i) for i in range(n))
        self.vol.write(start * S, payload, durable=durable)
        self.model[start * S : (start + n) * S] = payload
        for i in range(n):
            self.since_flush.setdefault(start + i, []).append(payload[i * S : (i + 1) * S])
        if durable:
            # every earlier segment is durable too
            self._flushed()

    @rule(data=st.data(), count=st.integers(2, 8), durable=st.booleans())
    def write_burst(self, data: st.DataObject, count: int, durable: bool) -> None:
        """Several small writes in a row: batches with many records, overlaps inside one
        segment."""
        for i in range(count):
            n = data.draw(st.integers(1, 4))
            self.write(data, n, durable and i == count - 1)

    @rule(data=st.data(), n=st.integers(1, 40))
    def trim(self, data: st.DataObject, n: int) -> None:
        n = min(n, self.sectors)
        start = data.draw(st.integers(0, self.sectors - n))
        self.vol.trim(start * S, n * S)
        self.model[start * S : (start + n) * S] = bytes(n * S)
        for i in range(n):
            self.since_flush.setdefault(start + i, []).append(bytes(S))

    @rule()
    def flush(self) -> None:
        self.vol.flush()
        self._flushed()

    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(0, self.sectors - 1))
        n = data.draw(st.integers(1, self.sectors - start))
        assert self.vol.read(start * S, n * S) == self.model[start * S : (start + n) * S]

    @rule(new=st.integers(32, 320), allow_shrink=st.booleans())
    def resize(self, new: int, allow_shrink: bool) -> None:
        if new < self.sectors and not allow_shrink:
            try:
                self.vol.resize(new * S)
            except Conflict:
                return
            raise AssertionError("shrink without allow_shrink was accepted")
        self.vol.resize(new * S, allow_shrink=allow_shrink)
        self.vol.flush()
        if new < self.sectors:
            del self.model[new * S :]
        else:
            self.model.extend(bytes((new - self.sectors) * S))
        self._flushed()

    @precondition(lambda self: len(self.snaps) < 4)
    @rule()
    def snapshot(self) -> None:
        name = f"s{self.next_id}"
        self.next_id += 1
        info = self.vol.create_snapshot(name)
        assert info.size == len(self.model)
        self.snaps[name] = bytes(self.model)
        self._flushed()

    @precondition(lambda self: bool(self.snaps))
    @rule(data=st.data())
    def read_snapshot(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        snap = Volume.open_snapshot(self.store, "d", name, config=CONFIG)
        assert snap.read(0, snap.size) == self.snaps[name]
        since = data.draw(st.sampled_from([None, *sorted(self.snaps)]))
        base = bytes(len(self.snaps[name])) if since is None else self.snaps[since]
        ranges = self.vol.changed_ranges(since, name)
        self._check_changed(base, self.snaps[name], ranges)

    def _check_changed(self, old: bytes, new: bytes, ranges: list[tuple[int, int]]) -> None:
        """Every byte that differs is inside a reported range (ranges may over-report)."""
        covered = bytearray(len(new))
        for a, b in ranges:
            assert a < b <= len(new)
            covered[a:b] = b"\x01" * (b - a)
        for sec in range(len(new) // S):
            lo, hi = sec * S, (sec + 1) * S
            before = old[lo:hi] if hi <= len(old) else bytes(S)
            if before != new[lo:hi]:
                assert covered[lo], f"changed sector {sec} not reported"

    @precondition(lambda self: bool(self.snaps) and len(self.clones) < 2)
    @rule(data=st.data())
    def clone(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        cid = f"c{self.next_id}"
        self.next_id += 1
        Volume.create(self.store, cid, 0, source=("d", name))
        c = Volume.open(self.store, cid, config=CONFIG, clock=self.clock)
        content = bytearray(self.snaps[name])
        assert c.read(0, c.size) == content
        wid = self.next_id
        self.next_id += 1
        c.write(0, sector_data(wid, 0))
        content[0:S] = sector_data(wid, 0)
        c.close()
        self.clones[cid] = bytes(content)
        self.clone_source[cid] = name

    @precondition(lambda self: bool(self.clones))
    @rule(data=st.data())
    def destroy_clone(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.clones)))
        r = Volume.open(self.store, cid, writable=False, config=CONFIG)
        assert r.read(0, r.size) == self.clones[cid]
        Volume.destroy(self.store, cid)
        del self.clones[cid]
        del self.clone_source[cid]

    @precondition(lambda self: bool(self.snaps))
    @rule(data=st.data())
    def delete_snapshot(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        if name in self.clone_source.values():
            try:
                self.vol.delete_snapshot(name)
            except Conflict:
                return
            raise AssertionError("deleted a snapshot a clone depends on")
        self.vol.delete_snapshot(name)
        del self.snaps[name]

    @rule(advance=st.booleans())
    def gc(self, advance: bool) -> None:
        self.vol.gc()
        if advance:
            self.clock.advance(CONFIG.gc_min_age_seconds + 1)
            self.vol.gc()
        self._flushed()  # gc flushes
        assert self.vol.read(0, len(self.model)) == self.model

    @rule()
    def crash_and_reopen(self) -> None:
        self.vol.abandon()
        self.vol = self.open()
        assert self.vol.size == len(self.model)  # resizes are flushed at once in this model
        got = self.vol.read(0, self.vol.size)
        for sec in range(self.sectors):
            actual = got[sec * S : (sec + 1) * S]
            allowed = [self.durable[sec * S : (sec + 1) * S], *self.since_flush.get(sec, [])]
            assert actual in allowed, f"sector {sec} holds neither its flushed nor a later value"
        self.model = bytearray(got)
        self._flushed()

    @rule()
    def close_and_reopen(self) -> None:
        self.vol.close()
        self.vol = self.open()
        assert self.vol.read(0, self.vol.size) == self.model
        self._flushed()

    @invariant()
    def size_matches(self) -> None:
        assert self.vol.size == len(self.model)

    def teardown(self) -> None:
        self.vol.abandon()
        for cid, content in self.clones.items():
            r = Volume.open(self.store, cid, writable=False, config=CONFIG)
            assert r.read(0, r.size) == content


VolumeMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, print_blob=True
)
TestVolumeModel = VolumeMachine.TestCase


def test_model_on_seaweedfs(s3_store_factory: Callable[..., ObjectStore]) -> None:
    class OnSeaweed(VolumeMachine):
        store_factory = staticmethod(lambda: s3_store_factory("model"))

    run_state_machine_as_test(
        OnSeaweed, settings=settings(max_examples=6, stateful_step_count=20, deadline=None)
    )
