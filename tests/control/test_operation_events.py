"""Watching operations: a subscriber gets every record as written (start, progress, end), a
failing subscriber breaks nothing, and `run` records work done in the calling thread."""

from __future__ import annotations

import pytest

from blockstore.control.operations import OperationService
from blockstore.errors import Conflict
from blockstore.store.memory import MemoryStore


def test_subscribers_see_every_change_until_they_unsubscribe() -> None:
    ops = OperationService(MemoryStore(), "h1")
    seen: list[tuple[str, str, float]] = []

    def broken(record: dict[str, object]) -> None:
        raise RuntimeError("a watcher's bug")

    ops.subscribe(broken)  # logged, and never fails the operation
    stop = ops.subscribe(lambda r: seen.append((r["id"], r["status"], r["progress"])))

    def work(progress: object) -> None:
        for i in range(1, 5):
            progress(i / 4)  # type: ignore[operator]

    op = ops.start("delete-disk", "d1", work)
    ops.wait_all()
    assert seen == [
        (op["id"], "running", 0.0),
        (op["id"], "running", 0.25),
        (op["id"], "running", 0.5),
        (op["id"], "running", 0.75),
        (op["id"], "running", 1.0),
        (op["id"], "succeeded", 1.0),
    ]
    assert ops.get(op["id"])["status"] == "succeeded"
    stop()
    stop()  # twice is harmless
    ops.start("delete-disk", "d2", lambda progress: None)
    ops.wait_all()
    assert len(seen) == 6


def test_run_records_work_done_in_the_callers_thread() -> None:
    ops = OperationService(MemoryStore(), "h1")
    seen: list[dict[str, object]] = []
    ops.subscribe(seen.append)
    result, op = ops.run("snapshot", "d1/s1", lambda progress: "made")
    assert result == "made"
    assert (op["kind"], op["target"], op["status"], op["progress"]) == (
        "snapshot",
        "d1/s1",
        "succeeded",
        1.0,
    )
    assert op["finished"] is not None
    assert [r["status"] for r in seen] == ["running", "succeeded"]

    def refused(progress: object) -> None:
        raise Conflict("disk 'd1' is being deleted")

    with pytest.raises(Conflict, match="being deleted"):
        ops.run("snapshot", "d1/s2", refused)
    failed = ops.select(target="d1/s2")
    assert [(o["status"], o["error"]) for o in failed] == [("failed", "disk 'd1' is being deleted")]
    assert seen[-1]["status"] == "failed" and seen[-1]["id"] == failed[0]["id"]
