"""Request deadlines in the engine (blockstore/deadline.py), on the in-memory store behind the
fault injector and the real retry layer: inside a request a transient PUT failure re-sends the
batch until the request's own deadline, and the wait ends at that deadline."""

from __future__ import annotations

import threading
import time

import pytest

from blockstore import deadline
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import Unavailable
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore
from blockstore.store.retry import RetryConfig, RetryingStore

MiB = 1 << 20
PUT_GIVES_UP = 0.05  # the store stack's own retry deadline: far shorter than the requests'


def open_volume() -> tuple[FaultyStore, Volume]:
    faulty = FaultyStore(MemoryStore())
    store = RetryingStore(faulty, RetryConfig(deadline_seconds=PUT_GIVES_UP, max_delay=0.01))
    Volume.create(store, "d1", 1 * MiB)
    return faulty, Volume.open(store, "d1", config=VolumeConfig(gc_interval_seconds=0))


def test_a_request_outlives_failed_puts_of_its_batch_until_the_store_is_back() -> None:
    faulty, v = open_volume()
    rule = faulty.add(FaultRule(op="put", key_contains="/seg/", times=10**9))
    start = time.monotonic()
    with deadline.scope(start + 5.0):
        # Heal once several PUT attempts (each giving up after PUT_GIVES_UP) have failed.
        threading.Timer(0.3, faulty.heal).start()
        v.write(0, b"a" * 4096, durable=True)
    assert rule.seen > 1
    assert 0.3 <= time.monotonic() - start < 5.0
    assert v.read(0, 4096) == b"a" * 4096
    v.close()


def test_a_request_fails_at_its_own_deadline_not_at_the_first_put_failure() -> None:
    faulty, v = open_volume()
    faulty.add(FaultRule(op="put", key_contains="/seg/", times=10**9))
    start = time.monotonic()
    with deadline.scope(start + 0.5), pytest.raises(Unavailable):
        v.write(0, b"a" * 4096, durable=True)
    assert 0.45 <= time.monotonic() - start < 1.0
    faulty.heal()
    v.flush()  # the batch was kept: stored now
    assert v.read(0, 4096) == b"a" * 4096
    v.close()


def test_without_a_deadline_the_put_failure_is_reported_as_before() -> None:
    faulty, v = open_volume()
    faulty.add(FaultRule(op="put", key_contains="/seg/", times=10**9))
    start = time.monotonic()
    with pytest.raises(Unavailable):
        v.write(0, b"a" * 4096, durable=True)
    assert time.monotonic() - start < 0.5
    faulty.heal()
    v.flush()
    v.close()
