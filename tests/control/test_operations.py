"""Operation records: listing, operations cut off by a restart, retention of finished ones."""

from __future__ import annotations

import threading

import pytest

from blockstore.clock import FakeClock
from blockstore.control.operations import OPERATION_RETENTION_SECONDS, OperationService
from blockstore.errors import InvalidArgument, NotFound
from blockstore.store.memory import MemoryStore


def test_a_restart_marks_unfinished_operations_failed_and_drops_old_ones() -> None:
    store, clock = MemoryStore(), FakeClock()
    before = OperationService(store, "h1", clock)
    release = threading.Event()
    old = before.start("copy-snapshot", "d/s", lambda progress: None)
    stuck = before.start("failback", "d", lambda progress: release.wait(10) and None)
    other = OperationService(store, "h2", clock).start(
        "seed-secondary", "e", lambda progress: release.wait(10) and None
    )
    before.wait_all(0.2)
    clock.advance(OPERATION_RETENTION_SECONDS + 1)

    after = OperationService(store, "h1", clock)  # this host's service, restarted
    assert after.tidy() == [stuck["id"]]
    got = after.get(stuck["id"])
    assert got["status"] == "failed" and "interrupted" in got["error"]
    with pytest.raises(NotFound):
        after.get(old["id"])  # finished long ago: removed
    assert after.get(other["id"])["status"] == "running"  # another host's: left alone
    assert [o["id"] for o in after.select(status="running")] == [other["id"]]
    assert [o["id"] for o in after.select(target="d")] == [stuck["id"]]
    with pytest.raises(InvalidArgument, match="running, succeeded, failed"):
        after.select(status="done")
    release.set()
