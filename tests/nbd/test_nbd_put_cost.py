"""What a `readwrite` disk costs in store requests (issue #21): 4 KiB random writes with a flush
every 64 writes, through real nbdkit and fio on real SeaweedFS, send at most 1.25 PUTs per
flush by default (one segment per flush: the uploader leaves writes to the next flush for up
to `upload_after` seconds or a segment's worth), and the documented setting for uploading
earlier (`upload_after`) does upload earlier, at the price of more PUTs.

PUTs are the plugin's own store counters (every request it sends, the fence, checkpoints and
segments alike), read from its stats file before and after the job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from blockstore.errors import Unavailable
from blockstore.host import contract
from blockstore.host.export import Export
from tests.support.nbdtools import MiB, create_disk, run

WRITES = 64 * 96  # 96 flushes
FLUSH_EVERY = 64


def _stats(exp: Export, newer_than: float) -> dict[str, Any]:
    """The plugin's stats snapshot written after `newer_than` (it writes one every 2 s)."""
    path = contract.stats_path(exp.config.socket)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime > newer_than:
            got = contract.read_stats(path)
            if got is not None:
                return got
        time.sleep(0.1)
    raise AssertionError(f"no stats snapshot after {newer_than} in {path}")


def _puts_per_flush(seaweed: Any, tmp_path: Path, **export: Any) -> tuple[float, int]:
    """(store PUTs per NBD flush, fio's flush count) of the workload on a new readwrite disk."""
    disk = create_disk(seaweed.s3_config(), tmp_path, "readwrite", 64 * MiB)
    sock = disk.config.socket
    exp = disk.export(
        cache_size="256M",
        dirty_limit="64M",
        extra_env={contract.ENV_STATS_FILE: str(contract.stats_path(sock))},
        **export,
    ).start()
    try:
        before = _stats(exp, 0)["store"]["puts"]
        cmd = [
            "fio", "--name=putcost", "--ioengine=nbd", f"--uri={exp.uri}", "--rw=randwrite",
            "--bs=4k", "--iodepth=1", "--size=64M", f"--io_size={WRITES * 4096}",
            f"--fsync={FLUSH_EVERY}", "--randrepeat=0", "--output-format=json",
        ]  # fmt: skip
        out = run(cmd, timeout=300)
        assert out.returncode == 0, out.stderr
        done = time.time()
        flushes = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]["sync"]["total_ios"]
        after = _stats(exp, done)["store"]["puts"]
    finally:
        exp.stop()
    assert flushes >= WRITES // FLUSH_EVERY - 1  # fio may not count the one at the end
    print(f"{export}: {after - before} PUTs, {flushes} flushes")
    return (after - before) / flushes, flushes


def test_nbd_readwrite_sends_one_put_per_flush(seaweed: Any, tmp_path: Path) -> None:
    per_flush, flushes = _puts_per_flush(seaweed, tmp_path)
    assert per_flush <= 1.25, f"{per_flush:.2f} PUTs per flush over {flushes} flushes"
    assert per_flush >= 0.9  # every flush had writes before it: each is one segment at least


@pytest.mark.parametrize("upload_after", [0.001])
def test_nbd_upload_after_uploads_earlier(
    seaweed: Any, tmp_path: Path, upload_after: float
) -> None:
    """The setting for those who prefer uploading between flushes: more PUTs per flush (the
    uploader sends what waits every millisecond), still every write durable at its flush."""
    per_flush, flushes = _puts_per_flush(seaweed, tmp_path, upload_after=upload_after)
    assert per_flush > 1.25, f"{per_flush:.2f} PUTs per flush over {flushes} flushes"


@pytest.mark.parametrize(("change", "says"), [
    ({"upload_batch": "lots"}, "lots"),
    ({"upload_after": -1.0}, "upload delay must be >= 0"),
])  # fmt: skip
def test_nbd_bad_upload_setting_stops_the_start(
    seaweed: Any, tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    """nbdkit refuses to start, naming the setting (the service checks its own
    `upload_after_seconds` before it starts any export: tests/service/test_serve_startup.py)."""
    disk = create_disk(seaweed.s3_config(), tmp_path, "readwrite", 64 * MiB)
    with pytest.raises(Unavailable) as err:
        disk.export(**change).start(timeout=30)
    assert says in str(err.value)
