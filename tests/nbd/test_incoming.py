"""The incoming export's rules (nbd_plugin/incoming.py), in-process on a memory store: reads
before the switchover come from a fresh read-only open (and try again when GC moved what they
read), writes wait for the service's answer, a cancel fails them, an epoch lets them through.
The same export over real nbdkit, SeaweedFS and two hosts is tests/control/test_migration.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from blockstore.engine.volume import Volume
from blockstore.errors import NotFound, Unavailable
from blockstore.host.contract import Activation
from blockstore.store.memory import MemoryStore
from nbd_plugin.incoming import Incoming

SIZE = 1 << 20


def _incoming(tmp_path: Path, became: list[int], fail_reads: int = 0) -> Incoming:
    store = MemoryStore()
    Volume.create(store, "d", SIZE)
    writer = Volume.open(store, "d")
    writer.write(0, b"a" * 4096)
    writer.close()
    failures = [fail_reads]

    def gone(offset: int, buf: memoryview) -> None:
        raise NotFound("a segment the source's GC deleted")

    def open_reader() -> Volume:
        reader = Volume.open(store, "d", writable=False)
        if failures[0] > 0:  # this open's map names a segment GC deleted meanwhile
            failures[0] -= 1
            reader.readinto = gone  # type: ignore[method-assign]
        return reader

    return Incoming(Activation(tmp_path / "d.sock"), open_reader, became.append)


def test_reads_before_the_switchover_are_fresh_and_ask_nothing(tmp_path: Path) -> None:
    became: list[int] = []
    inc = _incoming(tmp_path, became, fail_reads=2)
    assert inc.size == SIZE
    buf = bytearray(4096)
    assert inc.readinto(buf, 0) and bytes(buf) == b"a" * 4096  # third open: GC moved nothing
    assert inc.extents(0, 8192) == [(0, 4096, False), (4096, 4096, True)]
    assert not inc.activation.asked() and inc.pending and inc.early_reads == 1
    inc.close()


def test_a_write_waits_for_the_epoch_and_then_goes_through(tmp_path: Path) -> None:
    became: list[int] = []
    inc = _incoming(tmp_path, became)
    threading.Timer(0.2, lambda: inc.activation.answer(7)).start()
    began = time.monotonic()
    inc.hold(10)
    assert became == [7] and inc.activation.asked() and time.monotonic() - began >= 0.15
    assert inc.held_requests == 1 and inc.held_ms_max >= 150
    assert not inc.readinto(bytearray(512), 0)  # the writer's cache serves reads now
    inc.hold(10)  # no wait any more
    inc.close()


def test_a_cancel_fails_what_is_held(tmp_path: Path) -> None:
    inc = _incoming(tmp_path, [])
    threading.Timer(0.1, lambda: inc.activation.answer(None)).start()
    with pytest.raises(Unavailable, match="cancelled"):
        inc.hold(10)
    inc.close()


def test_no_answer_within_the_deadline_fails_the_request(tmp_path: Path) -> None:
    inc = _incoming(tmp_path, [])
    with pytest.raises(Unavailable, match="did not come within"):
        inc.hold(0.2)
    inc.close()


def test_after_a_cancel_reads_fail_too(tmp_path: Path) -> None:
    inc = _incoming(tmp_path, [])
    inc.activation.answer(None)
    with pytest.raises(Unavailable, match="cancelled"):
        inc.hold(10)
    with pytest.raises(Unavailable, match="cancelled"):
        inc.readinto(bytearray(512), 0)
    inc.close()
