"""Torn segment objects: SeaweedFS 4.48 keeps an EMPTY object when a PUT dies before its
body (tests/store/test_objectstore_contract.py records it), e.g. when nbdkit is killed mid-PUT.

Such a position was never acknowledged, so the log of that epoch ends there: readers stop at it
(or go on at a newer writer's fence after it), and the next writer fences past it; any later
segment of the dead writer's epoch is void. Nothing acknowledged is lost, nothing after the
torn position is applied, and the disk opens.
"""

from __future__ import annotations

from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.format import keys
from blockstore.format.segment import WRITE, LogRecord, encode_segment
from blockstore.store.memory import MemoryStore


def cfg() -> VolumeConfig:
    return VolumeConfig(gc_interval_seconds=0, checkpoint_every_segments=10**6)


def written_volume() -> tuple[MemoryStore, int, int]:
    """A disk with two acknowledged writes whose writer died; (store, last seq, its epoch)."""
    store = MemoryStore()
    Volume.create(store, "d", 1 << 20)
    v = Volume.open(store, "d", config=cfg())
    v.write(0, b"a" * 4096, durable=True)
    v.write(4096, b"b" * 4096, durable=True)
    epoch = v.epoch
    v.abandon()
    last = max(p[1] for k in store.raw() if (p := keys.parse_segment_key(k)) is not None)
    return store, last, epoch


def late_segment(seq: int, epoch: int) -> bytes:
    """A complete segment of `epoch` at `seq` writing 'Z' * 4096 at offset 0."""
    rec = LogRecord(WRITE, 0, 4096, mem=b"Z" * 4096)
    return encode_segment(keys.segment_key("d", seq), "d", seq, epoch, 4096, [rec])


def read(store: MemoryStore, offset: int, length: int) -> bytes:
    r = Volume.open(store, "d", writable=False, config=cfg())
    try:
        return r.read(offset, length)
    finally:
        r.close()


def test_an_empty_object_ends_the_log_and_the_next_writer_fences_past_it() -> None:
    store, last, _ = written_volume()
    store.raw()[keys.segment_key("d", last + 1)] = b""  # the dying writer's torn PUT
    assert read(store, 0, 8192) == b"a" * 4096 + b"b" * 4096
    w = Volume.open(store, "d", config=cfg())
    assert w.read(0, 8192) == b"a" * 4096 + b"b" * 4096
    w.write(8192, b"c" * 4096, durable=True)
    w.close()
    assert read(store, 0, 12288) == b"a" * 4096 + b"b" * 4096 + b"c" * 4096
    w = Volume.open(store, "d", config=cfg())  # and once more over the fenced torn run
    w.write(0, b"e" * 4096, durable=True)
    w.close()
    assert read(store, 0, 12288) == b"e" * 4096 + b"b" * 4096 + b"c" * 4096


def test_segments_after_a_torn_one_are_void() -> None:
    """The dead writer had PUTs in flight: position p torn, p+1 landed. p+1 was never
    acknowledged and must not be applied without p (a state the disk never had)."""
    store, last, epoch = written_volume()
    store.raw()[keys.segment_key("d", last + 1)] = b""
    store.raw()[keys.segment_key("d", last + 2)] = late_segment(last + 2, epoch)
    assert read(store, 0, 4096) == b"a" * 4096
    w = Volume.open(store, "d", config=cfg())
    assert w.read(0, 4096) == b"a" * 4096
    w.write(12288, b"d" * 4096, durable=True)
    w.close()
    assert read(store, 0, 4096) == b"a" * 4096
    assert read(store, 12288, 4096) == b"d" * 4096


def test_a_torn_fence_of_a_dying_opener_is_skipped() -> None:
    """A second writer died while fencing (its first fence torn); a third opens fine."""
    store, last, _ = written_volume()
    w2 = Volume.open(store, "d", config=cfg())
    w2.write(8192, b"f" * 4096, durable=True)
    w2.abandon()
    last = max(p[1] for k in store.raw() if (p := keys.parse_segment_key(k)) is not None)
    store.raw()[keys.segment_key("d", last + 1)] = b""
    w3 = Volume.open(store, "d", config=cfg())
    assert w3.read(0, 12288) == b"a" * 4096 + b"b" * 4096 + b"f" * 4096
    w3.close()


def test_a_torn_object_inside_a_writers_fence_window_does_not_end_its_log() -> None:
    """An older writer's PUT died mid-body at a position of the next writer's fence window
    (F+1..F+7). The new writer's fence there meets the empty object, counts it void and goes on
    to write and acknowledge data after its window: readers must go on past the torn object
    too, or the acknowledged writes would be lost."""
    store, last, _ = written_volume()
    first = last + 1  # the next writer's first fence
    store.raw()[keys.segment_key("d", first + 2)] = b""  # a stale torn PUT in its window
    w = Volume.open(store, "d", config=cfg())
    w.write(8192, b"c" * 4096, durable=True)
    w.abandon()  # no checkpoint: readers replay the window
    assert read(store, 0, 12288) == b"a" * 4096 + b"b" * 4096 + b"c" * 4096
    w = Volume.open(store, "d", config=cfg())
    assert w.read(0, 12288) == b"a" * 4096 + b"b" * 4096 + b"c" * 4096
    w.close()
