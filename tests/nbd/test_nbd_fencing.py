"""What a fenced export does (issue #14 item 10), on real nbdkit and SeaweedFS, in every mode.

Once a newer writer epoch is claimed for the disk, the export answers every request with EPERM,
reads included (its cache may hold bytes the new owner has overwritten), within about one
`fence-check` interval; a commit that meets the new writer's fence makes it so at once. And a
journal the fenced export leaves behind is never replayed: the next export of the disk finds its
epoch fenced and discards it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import nbd
import pytest

from blockstore.engine.volume import Volume
from blockstore.host import contract
from blockstore.store.stack import build_store
from tests.support.nbdtools import MODES, connect, create_disk
from tests.support.seaweed import SeaweedServer

BLOCK = 4096


def _errno(call: object) -> str | None:
    try:
        call()  # type: ignore[operator]
    except nbd.Error as exc:
        return str(exc.errno)
    return None


@pytest.mark.parametrize("mode", MODES)
def test_a_fenced_export_answers_eperm_to_everything(
    seaweed: SeaweedServer, tmp_path: Path, mode: str
) -> None:
    s3 = seaweed.s3_config("fencing/")
    disk = create_disk(s3, tmp_path, mode)
    exp = disk.export(fence_check_seconds=0.5).start()
    try:
        h = connect(exp)
        h.pwrite(b"1" * BLOCK, 0)
        h.flush()
        assert h.pread(BLOCK, 0) == b"1" * BLOCK  # cached from here on (modes with a cache)
        store = build_store(disk.config.s3)
        new_owner = Volume.open(store, disk.config.disk_id, writable=True)
        new_owner.write(0, b"2" * BLOCK, durable=True)
        t0 = time.monotonic()
        while _errno(lambda: h.pread(BLOCK, 0)) is None:
            assert time.monotonic() - t0 < 5, "the fenced export still serves reads after 5 s"
            time.sleep(0.05)
        assert _errno(lambda: h.pread(BLOCK, 0)) == "EPERM"
        assert _errno(lambda: h.pwrite(b"3" * BLOCK, BLOCK)) == "EPERM"
        assert _errno(h.flush) == "EPERM"
        assert _errno(lambda: h.trim(BLOCK, 0)) == "EPERM"
        h.shutdown()
        new_owner.close()
        reader = Volume.open(store, disk.config.disk_id, writable=False)
        assert reader.read(0, 2 * BLOCK) == b"2" * BLOCK + bytes(BLOCK)
        reader.close()
        store.close()
    finally:
        exp.stop()


def test_a_fenced_readwrite_journal_is_discarded_not_replayed(
    seaweed: SeaweedServer, tmp_path: Path
) -> None:
    """Writes acknowledged from the journal of an export that was then fenced never reach the
    store: not through its own uploader (its PUTs meet the fence), not through a restart."""
    s3 = seaweed.s3_config("fencing/")
    disk = create_disk(s3, tmp_path, "readwrite", fence_check_seconds=30.0)
    exp = disk.export().start()
    h = connect(exp)
    h.pwrite(b"1" * BLOCK, 0)
    h.flush()
    store = build_store(disk.config.s3)
    new_owner = Volume.open(store, disk.config.disk_id, writable=True)
    new_owner.write(0, b"2" * BLOCK, durable=True)
    new_owner.close()
    # The old export has not looked yet (fence-check 30 s): it acknowledges from its journal.
    with contextlib.suppress(nbd.Error):  # or it already met the fence
        h.pwrite(b"X" * BLOCK, 0)
    exp.kill()  # the journal stays behind
    again = disk.export().start()  # the next export of this host's cache directory
    try:
        h = connect(again)
        assert h.pread(BLOCK, 0) == b"2" * BLOCK, "a fenced journal was replayed"
        h.shutdown()
    finally:
        again.stop()
        store.close()


def test_an_idle_export_asks_the_store_nothing_and_is_fenced_at_its_next_request(
    seaweed: SeaweedServer, tmp_path: Path
) -> None:
    """Issue #21: while no request comes the fence check sends no LIST (its host's watch of
    the disk records stops an idle export of a disk taken elsewhere); a takeover meanwhile is
    found by the check the first request after the idle spell wakes, within one LIST, not an
    interval later."""
    s3 = seaweed.s3_config("fencing/")
    disk = create_disk(s3, tmp_path, "readwrite")
    sock = disk.config.socket
    stats = contract.stats_path(sock)
    exp = disk.export(
        fence_check_seconds=0.5, extra_env={contract.ENV_STATS_FILE: str(stats)}
    ).start()
    try:
        h = connect(exp)
        h.pwrite(b"1" * BLOCK, 0)
        h.flush()
        time.sleep(1.5)  # idle from here: one interval to notice, then nothing
        before = _lists(stats)
        time.sleep(3)
        assert _lists(stats) == before, "an idle export went on listing fences"
        store = build_store(disk.config.s3)
        new_owner = Volume.open(store, disk.config.disk_id, writable=True)
        new_owner.close()
        assert h.pread(BLOCK, 0) == b"1" * BLOCK  # served from the cache: wakes the check
        time.sleep(0.3)  # one LIST, not the 0.5 s interval
        assert _errno(lambda: h.pwrite(b"3" * BLOCK, BLOCK)) == "EPERM"
        h.shutdown()
        store.close()
    finally:
        exp.stop()


def _lists(stats: Path) -> int:
    """The export's store LISTs in its stats file, once the next snapshot (every 2 s) is out."""
    mtime = stats.stat().st_mtime
    deadline = time.monotonic() + 10
    while stats.stat().st_mtime == mtime and time.monotonic() < deadline:
        time.sleep(0.1)
    return int(json.loads(stats.read_text())["store"]["lists"])
