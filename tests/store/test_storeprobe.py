"""The start-up probe of small ranged reads (blockstore/store/chunkprobe.py), on an in-memory store
with a virtual clock: a store whose ranged GET costs grow with the object's size is reported
slow, one that costs the same is not, and the probe leaves no object behind. The real stores
(SeaweedFS with 4 MiB and 1 MiB filer chunks) are in tests/system/test_seaweedfs_cluster.py."""

from __future__ import annotations

import logging

import pytest

from blockstore.errors import Unavailable
from blockstore.store.chunkprobe import probe_small_reads, warn_if_small_reads_are_slow
from blockstore.store.memory import MemoryStore

MiB = 1 << 20


class ChunkedStore(MemoryStore):
    """A GET costs `base` seconds plus `per_mib` per MiB of the stored chunk the range is in."""

    def __init__(self, chunk: int, base: float = 0.001, per_mib: float = 0.0009) -> None:
        super().__init__()
        self.now = 0.0
        self.chunk, self.base, self.per_mib = chunk, base, per_mib

    def clock(self) -> float:
        return self.now

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        size = self.head(key).size
        self.now += self.base + self.per_mib * min(self.chunk, size) / MiB
        return super().get(key, start, length)


def test_a_store_with_4_mib_chunks_is_slow_and_one_with_1_mib_is_not() -> None:
    slow = ChunkedStore(4 * MiB)
    result = probe_small_reads(slow, clock=slow.clock)
    assert result.slow and result.large_ms == pytest.approx(4.6) and result.small_ms < 1.1
    fast = ChunkedStore(1 * MiB)
    assert not probe_small_reads(fast, clock=fast.clock).slow
    flat = ChunkedStore(4 * MiB, per_mib=0)  # e.g. AWS S3
    assert not probe_small_reads(flat, clock=flat.clock).slow
    assert list(slow.list("")) == [] and list(fast.list("")) == []


def test_the_warning_is_one_line_and_a_failing_probe_never_stops_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down(MemoryStore):
        def put(self, *a: object, **k: object) -> str:
            raise Unavailable("store down")

    with caplog.at_level(logging.INFO, logger="blockstore"):
        assert warn_if_small_reads_are_slow(Down()) is None
    assert "probe skipped" in caplog.text and not [
        r for r in caplog.records if r.levelno >= logging.WARNING
    ]
