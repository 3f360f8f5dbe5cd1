"""The lag measurement (blockstore/geo/lag.py) on in-memory stores with a fake clock: what is
pending, how old it is, and what "synced" may claim."""

from __future__ import annotations

from blockstore.clock import FakeClock
from blockstore.format import keys
from blockstore.geo.lag import measure, status_fields
from blockstore.store.memory import MemoryStore

D = "d1"


def stores() -> tuple[FakeClock, MemoryStore, MemoryStore]:
    clock = FakeClock()
    return clock, MemoryStore(clock), MemoryStore(clock)


def put_segments(store: MemoryStore, clock: FakeClock, seqs: range, size: int = 100) -> None:
    for seq in seqs:
        store.put(keys.segment_key(D, seq), bytes([seq % 256]) * size)
        clock.advance(1.0)


def test_nothing_written_is_synced() -> None:
    clock, source, target = stores()
    lag = measure(source, target, D)
    assert lag.pending_segments == 0 and lag.seconds(clock.time()) == 0
    assert status_fields(lag, clock.time(), None, 60)["state"] == "synced"


def test_every_segment_the_target_lacks_is_pending_and_aged_by_the_oldest() -> None:
    clock, source, target = stores()
    written = clock.time()
    put_segments(source, clock, range(1, 6))  # seqs 1..5, one second apart
    for seq in (1, 2):
        target.put(keys.segment_key(D, seq), source.get(keys.segment_key(D, seq)))
    clock.advance(10.0)
    lag = measure(source, target, D)
    assert (lag.frontier_seq, lag.source_seq, lag.pending_segments) == (2, 5, 3)
    assert lag.pending_bytes == 300
    assert lag.seconds(clock.time()) == clock.time() - (written + 2.0)  # seq 3's age
    fields = status_fields(lag, clock.time(), last_sync_time=written, rpo_target_seconds=5)
    assert fields["state"] == "lagging" and fields["rpo_exceeded"] is True
    assert status_fields(lag, clock.time(), None, 60)["state"] == "seeding"


def test_a_segment_with_other_bytes_at_the_same_position_is_not_a_copy() -> None:
    clock, source, target = stores()
    put_segments(source, clock, range(1, 3))
    target.put(keys.segment_key(D, 1), source.get(keys.segment_key(D, 1)))
    target.put(keys.segment_key(D, 2), b"an older writer's segment")
    lag = measure(source, target, D)
    assert lag.pending_segments == 1 and lag.frontier_seq == 1


def test_a_gap_on_the_target_holds_the_frontier_back() -> None:
    clock, source, target = stores()
    put_segments(source, clock, range(1, 5))
    for seq in (1, 3, 4):  # copies of one window landed out of order
        target.put(keys.segment_key(D, seq), source.get(keys.segment_key(D, seq)))
    lag = measure(source, target, D)
    assert (lag.frontier_seq, lag.pending_segments) == (1, 1)


def test_the_known_frontier_and_the_targets_checkpoint_are_trusted() -> None:
    clock, source, target = stores()
    put_segments(source, clock, range(1, 9))
    target.put(keys.checkpoint_key(D, 4), b"ckpt")
    lag = measure(source, target, D)
    assert (lag.frontier_seq, lag.pending_segments) == (4, 4)
    assert measure(source, target, D, known=8).pending_segments == 0


def test_a_checkpoint_that_holds_collected_segments_is_pending_until_copied() -> None:
    """The source's GC removed segments 1..6 after its checkpoint at 6: the checkpoint is the
    only copy of their data, so a target without it is behind by it too."""
    clock, source, target = stores()
    source.put(keys.checkpoint_key(D, 6), b"c" * 50)
    clock.advance(1.0)
    put_segments(source, clock, range(7, 9))
    lag = measure(source, target, D)
    assert lag.pending_segments == 3 and lag.pending_bytes == 250
    target.put(keys.checkpoint_key(D, 6), b"c" * 50)
    assert measure(source, target, D).pending_segments == 2
