"""The volume engine on a real SeaweedFS (shorter runs of the in-memory tests)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import Fenced, IntegrityError
from blockstore.store.base import ObjectStore

CFG = VolumeConfig(gc_interval_seconds=0, segment_max_bytes=64 * 1024, checkpoint_every_segments=4)


def test_write_flush_reopen_fence_and_corruption_on_seaweedfs(
    s3_store_factory: Callable[..., ObjectStore],
) -> None:
    store = s3_store_factory("vol")
    Volume.create(store, "d1", 4 << 20)
    v1 = Volume.open(store, "d1", config=CFG)
    data = os.urandom(1 << 20)
    v1.write(0, data)
    for i in range(32):  # small writes, group-committed
        v1.write((2 << 20) + i * 4096, bytes([i]) * 4096)
    v1.flush()
    assert v1.read(0, 1 << 20) == data
    v2 = Volume.open(store, "d1", config=CFG)
    assert v2.read(0, 1 << 20) == data
    assert v2.read((2 << 20) + 31 * 4096, 4096) == bytes([31]) * 4096
    v1.write(0, b"L" * 4096)
    with pytest.raises(Fenced):
        v1.flush()
    v1.abandon()
    v2.write(4096, b"2" * 4096, durable=True)
    snap = v2.create_snapshot("s1")
    assert snap.size == 4 << 20
    v2.close()
    r = Volume.open(store, "d1", writable=False, config=CFG)
    assert r.read(0, 8192) == data[:4096] + b"2" * 4096
    assert Volume.open_snapshot(store, "d1", "s1", config=CFG).read(0, 4096) == data[:4096]
    # flip a data byte in the first segment: it holds the first 64 KiB piece of the 1 MiB write
    seg = next(o for o in store.list("disks/d1/seg/") if o.size > 4096)  # not a fence
    blob = bytearray(store.get(seg.key))
    blob[-100] ^= 0xFF
    store.delete(seg.key)
    store.put(seg.key, bytes(blob))
    with pytest.raises(IntegrityError):
        Volume.open(store, "d1", writable=False, config=CFG).read(0, 1 << 20)
