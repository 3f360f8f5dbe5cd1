"""Restore points (blockstore/engine/points.py): every flushed state of a volume reads back
exactly as it was, while the retention window keeps it, and GC frees it after."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.clock import FakeClock
from blockstore.engine.config import VolumeConfig
from blockstore.engine.points import (
    LogListing,
    read_retention,
    resolve,
    retention_base,
    write_retention,
)
from blockstore.engine.volume import Volume
from blockstore.errors import InvalidArgument, NotFound
from blockstore.store.memory import MemoryStore

KiB, MiB = 1 << 10, 1 << 20
SIZE = 256 * KiB


def cfg(**kw: object) -> VolumeConfig:
    base: dict[str, object] = {
        "gc_interval_seconds": 0,
        "commit_delay": 3600.0,
        "gc_min_age_seconds": 0.0,
        "checkpoint_every_segments": 4,
    }
    base.update(kw)
    return VolumeConfig(**base)  # type: ignore[arg-type]


def newest(store: MemoryStore) -> int:
    return LogListing.read(store, "d").points("d")[-1].position


def write_rounds(
    store: MemoryStore, vol: Volume, clock: FakeClock, rounds: int, rng: random.Random
) -> dict[int, bytes]:
    """`rounds` flushes of a few random writes, trims among them, a second apart: the
    image after each, by the position of its last segment."""
    image = bytearray(vol.read(0, SIZE))
    states: dict[int, bytes] = {}
    for _ in range(rounds):
        for _ in range(rng.randint(1, 4)):
            off = rng.randrange(0, SIZE // 512 - 16) * 512
            n = rng.randint(1, 16) * 512
            if rng.random() < 0.2:
                vol.trim(off, n)
                image[off : off + n] = bytes(n)
            else:
                data = os.urandom(n)
                vol.write(off, data)
                image[off : off + n] = data
        vol.flush()
        states[newest(store)] = bytes(image)
        clock.advance(1.0)
    return states


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 12))
def test_every_flushed_state_reads_back_as_it_was(seed: int, rounds: int) -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    write_retention(store, "d", 3600)
    vol = Volume.open(store, "d", config=cfg(), clock=clock)
    states = write_rounds(store, vol, clock, rounds, random.Random(seed))
    vol.gc()  # the window keeps every point GC would otherwise free
    vol.close()
    for position, image in states.items():
        view = Volume.open_at(store, "d", position)
        assert view.read(0, SIZE) == image
        view.close()


def test_without_a_window_gc_frees_old_points_and_they_say_so() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    vol = Volume.open(store, "d", config=cfg(), clock=clock)
    states = write_rounds(store, vol, clock, 10, random.Random(1))
    first = min(states)
    assert Volume.open_at(store, "d", first).read(0, SIZE) == states[first]
    vol.gc()
    vol.gc()
    with pytest.raises(NotFound, match=r"not a restore point|not restorable"):
        resolve(store, "d", position=first)
    with pytest.raises(NotFound, match="not restorable"):
        Volume.open_at(store, "d", first)
    vol.close()


def test_the_window_keeps_points_while_inside_and_frees_them_after() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    write_retention(store, "d", 60)
    assert read_retention(store, "d") == 60
    vol = Volume.open(store, "d", config=cfg(), clock=clock)
    rng = random.Random(2)
    old = write_rounds(store, vol, clock, 8, rng)
    vol.gc()
    for position, image in old.items():
        assert Volume.open_at(store, "d", position).read(0, SIZE) == image
    clock.advance(120)  # the old rounds leave the window
    new = write_rounds(store, vol, clock, 8, rng)
    vol.gc()
    vol.gc()
    listing = LogListing.read(store, "d")
    restorable = {p.position for p in listing.points("d")}
    assert set(new) <= restorable
    # The window keeps from its base, the newest checkpoint before it opened; older points go.
    base = retention_base(listing, clock.time(), 60)
    assert base > min(old)
    assert not {p for p in old if p < base} & restorable, "points past the window are freed"
    for position, image in new.items():
        assert Volume.open_at(store, "d", position).read(0, SIZE) == image
    vol.close()


def test_a_time_picks_the_last_point_at_or_before_it() -> None:
    clock = FakeClock(1_800_000_000.0)
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    vol = Volume.open(store, "d", config=cfg(checkpoint_every_segments=256), clock=clock)
    vol.write(0, b"a" * 4096, durable=True)
    at_a = newest(store)
    clock.advance(10)
    vol.write(0, b"b" * 4096, durable=True)
    assert resolve(store, "d", time=1_800_000_005.0).position == at_a
    assert resolve(store, "d", time=1_800_000_010.0).position == newest(store)
    with pytest.raises(NotFound, match="no restore point at or before"):
        resolve(store, "d", time=1_799_999_999.0)
    with pytest.raises(InvalidArgument):
        resolve(store, "d", position=at_a, time=1.0)
    with pytest.raises(InvalidArgument, match="90 days"):
        write_retention(store, "d", 91 * 86400)
    vol.close()


def test_any_restorable_position_resolves_fences_too() -> None:
    """The newest restorable position after an open may be a fence (no writes): reverting to
    it (the undo of a revert) must work, and reads the state before it."""
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    vol = Volume.open(store, "d", config=cfg(checkpoint_every_segments=256), clock=clock)
    vol.write(0, b"z" * 4096, durable=True)
    vol.abandon()
    Volume.open(store, "d", config=cfg(), clock=clock).abandon()  # fences, writes nothing
    last = LogListing.read(store, "d").restorable()[-1]
    assert last > newest(store)
    pt = resolve(store, "d", position=last)
    assert pt.position == last and pt.bytes < 200
    assert Volume.open_at(store, "d", last).read(0, 4096) == b"z" * 4096


def test_changed_ranges_between_two_points() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", 1 * MiB)
    vol = Volume.open(store, "d", config=cfg(checkpoint_every_segments=256), clock=clock)
    vol.write(0, os.urandom(64 * KiB), durable=True)
    a = newest(store)
    vol.write(128 * KiB, os.urandom(8 * KiB), durable=True)
    vol.trim(16 * KiB, 4 * KiB, durable=True)
    b = newest(store)
    old, new = Volume.open_at(store, "d", a), Volume.open_at(store, "d", b)
    assert new.changed_from(old) == [(16 * KiB, 20 * KiB), (128 * KiB, 136 * KiB)]
    assert old.changed_from(None) == [(0, 64 * KiB)]
    vol.close()


@pytest.mark.parametrize("window", [0, 3600])
def test_segments_inside_the_window_are_not_compacted(window: int) -> None:
    """The window keeps a young segment whatever happens, so rewriting its live bytes would
    only add a copy: GC leaves it for when the window has passed it."""
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", SIZE)
    write_retention(store, "d", window)
    vol = Volume.open(store, "d", config=cfg(checkpoint_every_segments=256), clock=clock)
    vol.write(0, os.urandom(128 * KiB), durable=True)
    vol.write(0, os.urandom(120 * KiB), durable=True)  # the first segment is now sparse
    result = vol.gc()
    assert (result.bytes_rewritten > 0) == (window == 0), result
    clock.advance(window + 10)
    vol.write(200 * KiB, os.urandom(4 * KiB), durable=True)
    vol.checkpoint()
    clock.advance(10)
    vol.write(204 * KiB, os.urandom(4 * KiB), durable=True)
    assert vol.gc().bytes_rewritten > 0 or window == 0, "compacted once the window passed it"
    vol.close()
