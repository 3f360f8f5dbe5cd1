"""RetryingStore: transient failures are retried until a deadline, final ones are not."""

from __future__ import annotations

import random

import pytest

from blockstore import deadline
from blockstore.clock import FakeClock
from blockstore.errors import NotFound, PreconditionFailed, Unavailable
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.memory import MemoryStore
from blockstore.store.retry import RetryConfig, RetryingStore


def make(deadline: float = 5.0) -> tuple[MemoryStore, FaultyStore, RetryingStore, FakeClock]:
    mem = MemoryStore()
    faulty = FaultyStore(mem)
    clock = FakeClock()
    store = RetryingStore(
        faulty, RetryConfig(deadline_seconds=deadline), clock=clock, rng=random.Random(1)
    )
    return mem, faulty, store, clock


def test_transient_failures_are_retried() -> None:
    _, faulty, store, _ = make()
    store.put("k", b"v")
    faulty.add(FaultRule(op="get", times=3))
    assert store.get("k") == b"v"
    assert store.stats.retries == 3


def test_gives_up_with_unavailable_at_the_deadline() -> None:
    _, faulty, store, clock = make(deadline=5.0)
    faulty.add(FaultRule(op="get", times=10**9))
    start = clock.monotonic()
    with pytest.raises(Unavailable, match="gave up"):
        store.get("k")
    assert clock.monotonic() - start <= 5.0


def test_final_errors_are_not_retried() -> None:
    _, _, store, _ = make()
    with pytest.raises(NotFound):
        store.get("missing")
    store.put("k", b"v", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"w", if_none_match=True)
    assert store.stats.retries == 0


def test_create_if_absent_whose_reply_was_lost_is_a_success() -> None:
    mem, faulty, store, _ = make()
    # The PUT reaches the store, the reply is lost; the retry sees 412 for our own object.
    faulty.add(FaultRule(op="put", apply_before=False, times=1))
    store.put("seg", b"payload", if_none_match=True)
    assert mem.raw()["seg"] == b"payload"


def test_create_if_absent_lost_to_someone_else_still_fails() -> None:
    mem, faulty, store, _ = make()
    mem.put("seg", b"theirs")
    faulty.add(FaultRule(op="put", times=1))
    with pytest.raises(PreconditionFailed):
        store.put("seg", b"ours", if_none_match=True)


def test_a_request_deadline_bounds_the_retries() -> None:
    _, faulty, store, clock = make(deadline=30.0)
    faulty.add(FaultRule(op="get", times=10**9))
    start = clock.monotonic()
    with deadline.scope(start + 1.0), pytest.raises(Unavailable, match="gave up"):
        store.get("k")
    assert clock.monotonic() - start <= 1.0


def test_no_attempt_once_the_request_deadline_has_passed() -> None:
    _, faulty, store, clock = make()
    store.put("k", b"v")
    calls = faulty.calls
    with deadline.scope(clock.monotonic()), pytest.raises(Unavailable, match="deadline"):
        store.get("k")
    assert faulty.calls == calls
