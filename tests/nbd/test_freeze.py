"""The write gate of a group snapshot's cut (nbd_plugin/freeze.py), on its own: a freeze waits
for the writes in flight and flushes before it answers, holds new writes until thawed, and one
that outlasts its limit says so before it lets a write through."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from blockstore.host.contract import Freeze
from nbd_plugin.freeze import Gate


def start(tmp_path: Path) -> tuple[Freeze, Gate, list[str]]:
    events: list[str] = []
    files = Freeze(tmp_path / "d.sock")
    gate = Gate(files, lambda: events.append("flush"))
    threading.Thread(target=gate.watch, daemon=True).start()
    return files, gate, events


def wait_for(pred: object, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_a_freeze_drains_flushes_holds_and_thaws(tmp_path: Path) -> None:
    files, gate, events = start(tmp_path)
    gate.enter(5)  # a write in flight when the freeze comes
    files.ask("t1")
    time.sleep(0.2)
    assert not files.is_frozen("t1"), "answered while a write was in flight"
    events.append("write done")
    gate.leave()
    wait_for(lambda: files.is_frozen("t1"))
    assert events == ["write done", "flush"]

    held = threading.Thread(target=lambda: (gate.enter(5), events.append("held write")))
    held.start()
    time.sleep(0.2)
    assert "held write" not in events
    files.thaw()
    held.join(5)
    assert events[-1] == "held write" and not files.thawed_early()
    gate.leave()
    gate.stop()


def test_a_freeze_past_its_limit_thaws_itself_and_says_so_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Freeze, "MAX_SECONDS", 0.3)
    files, gate, _events = start(tmp_path)
    files.ask("t2")
    wait_for(lambda: files.is_frozen("t2"))
    seen: list[bool] = []
    t = threading.Thread(target=lambda: (gate.enter(5), seen.append(files.thawed_early())))
    t.start()
    t.join(5)
    assert seen == [True], "a write got through before the thaw was recorded"
    gate.leave()
    time.sleep(0.2)
    assert not files.is_frozen("t2") and not gate.closed, "the same request froze it again"
    gate.stop()
