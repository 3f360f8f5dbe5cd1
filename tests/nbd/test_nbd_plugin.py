"""The NBD plugin end to end: real nbdkit, real SeaweedFS, real clients (libnbd, qemu-io,
qemu-img, nbdcopy, fio), in every caching mode.

Names follow nbdkit's habit: test_nbd_<aspect>[mode]. Every export is started and stopped by
the test that uses it (blockstore/host/export.py), on a Unix socket under the test's tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockstore.host.export import Export
from tests.support.nbdtools import MODES, Disk, MiB, connect, create_disk, pattern, read_all, run

SIZE = 64 * MiB
Serve = Callable[..., tuple[Disk, Export]]


@pytest.fixture
def serve(seaweed: Any, tmp_path: Path) -> Iterator[Serve]:
    """serve(mode, **export settings) -> (disk, running export); all are killed afterwards."""
    running: list[Export] = []

    def start(mode: str, **kw: Any) -> tuple[Disk, Export]:
        disk = create_disk(seaweed.s3_config(), tmp_path, mode, SIZE, **kw)
        exp = disk.export().start()
        running.append(exp)
        return disk, exp

    yield start
    for exp in running:
        exp.kill()


def reopen_uncached(disk: Disk) -> Export:
    """A fresh export with no cache: it can only show what the store holds."""
    return disk.export(cache_mode="none", cache_dir=None).start()


@pytest.mark.parametrize("mode", MODES)
def test_nbd_pattern_libnbd(serve: Serve, mode: str) -> None:
    disk, exp = serve(mode)
    h = connect(exp)
    assert h.can_multi_conn() and h.can_fua() and h.can_trim() and h.can_zero()
    assert h.can_fast_zero() and h.can_flush()
    assert h.get_size() == SIZE
    expect = bytearray(SIZE)
    writes = [
        (0, pattern(1, 4096)),
        (1 * MiB + 512, pattern(2, 3 * 512)),
        (8 * MiB, pattern(3, 1 * MiB)),
        (SIZE - 4096, pattern(4, 4096)),
    ]
    for off, data in writes:
        h.pwrite(data, off)
        expect[off : off + len(data)] = data
    h.pwrite(pattern(5, 8192), 20 * MiB, nbd.CMD_FLAG_FUA)
    expect[20 * MiB : 20 * MiB + 8192] = pattern(5, 8192)
    # libnbd's order is (count, offset)
    h.trim(8 * MiB + 64 * 1024, 3 * MiB)
    expect[3 * MiB : 11 * MiB + 64 * 1024] = bytes(8 * MiB + 64 * 1024)
    h.zero(1 * MiB, 512)
    expect[512 : 1 * MiB + 512] = bytes(1 * MiB)
    h.zero(64 * 1024, 20 * MiB + 4096, nbd.CMD_FLAG_FAST_ZERO)
    expect[20 * MiB + 4096 : 20 * MiB + 4096 + 64 * 1024] = bytes(64 * 1024)
    h.flush()
    assert read_all(h, SIZE) == expect
    h.shutdown()
    exp.stop()
    again = reopen_uncached(disk)
    try:
        h = connect(again)
        assert read_all(h, SIZE) == expect
        h.shutdown()
    finally:
        again.stop()


@pytest.mark.parametrize("mode", MODES)
def test_nbd_qemu_io_qemu_img_map_and_nbdcopy(serve: Serve, mode: str, tmp_path: Path) -> None:
    disk, exp = serve(mode)
    uri = exp.uri
    r = run(["qemu-io", "-f", "raw", uri, "-c", "write -P 0xab 4M 1M", "-c", "flush",
             "-c", "read -P 0xab 4M 1M", "-c", "write -f -P 0xcd 12M 64k",
             "-c", "read -P 0 0 4M", "-c", "read -P 0xcd 12M 64k"])  # fmt: skip
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    r = run(["qemu-img", "map", "--output=json", "-f", "raw", uri])
    assert r.returncode == 0, r.stderr
    data = [(e["start"], e["length"]) for e in json.loads(r.stdout) if e["data"]]
    covered = sum(n for _, n in data)
    assert covered < SIZE // 4  # holes are reported, not the whole disk as data
    assert any(s <= 4 * MiB and 5 * MiB <= s + n for s, n in data)
    exp.stop()
    # nbdcopy skips the holes too: it reads only the data extents (counted by the plugin, whose
    # stats file ends with the final counts), and the copy is whole.
    stats = tmp_path / "stats.json"
    copier = disk.export(extra_env={"BLOCKSTORE_STATS_FILE": str(stats)}).start()
    copy = tmp_path / "copy.img"
    try:
        r = run(["nbdcopy", copier.uri, str(copy)])
        assert r.returncode == 0, r.stderr
    finally:
        copier.stop()
    read = json.loads(stats.read_text())["io"]["read"]["bytes"]
    assert MiB + 64 * 1024 <= read < SIZE // 4
    with copy.open("rb") as f:
        image = f.read()
    assert len(image) == SIZE
    assert image[4 * MiB : 5 * MiB] == b"\xab" * MiB
    assert image[12 * MiB : 12 * MiB + 64 * 1024] == b"\xcd" * 64 * 1024
    assert image.count(0) == SIZE - MiB - 64 * 1024
    again = reopen_uncached(disk)
    try:
        r = run(["qemu-io", "-r", "-f", "raw", again.uri, "-c", "read -P 0xab 4M 1M",
                 "-c", "read -P 0xcd 12M 64k", "-c", "read -P 0 13M 1M"])  # fmt: skip
        assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
    finally:
        again.stop()


@pytest.mark.parametrize("mode", MODES)
def test_nbd_fio_verify(serve: Serve, mode: str, tmp_path: Path) -> None:
    _disk, exp = serve(mode)
    r = run([
        "fio", "--name=verify", "--ioengine=nbd", f"--uri={exp.uri}", "--rw=randwrite",
        "--bs=4k", "--size=8M", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
        "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=0", "--output-format=json",
    ], timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job = json.loads(r.stdout[r.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 8 * MiB and job["read"]["io_bytes"] == 8 * MiB


def test_nbd_multi_conn_flush_covers_other_connections(serve: Serve) -> None:
    disk, exp = serve("readwrite")
    a, b = connect(exp), connect(exp)
    assert a.can_multi_conn()
    a.pwrite(pattern(9, 64 * 1024), 2 * MiB)
    a.pwrite(pattern(10, 4096), 40 * MiB)
    b.flush()  # the flush rides on b; the writes were acknowledged on a
    exp.kill()  # no chance to upload anything in cleanup
    # The cache directory is dropped too: only what the flush made durable can be read.
    assert disk.config.cache_dir is not None
    import shutil

    shutil.rmtree(disk.config.cache_dir)
    again = reopen_uncached(disk)
    try:
        h = connect(again)
        assert h.pread(64 * 1024, 2 * MiB) == pattern(9, 64 * 1024)
        assert h.pread(4096, 40 * MiB) == pattern(10, 4096)
        h.shutdown()
    finally:
        again.stop()


def test_nbd_requests_past_the_end_fail_cleanly(serve: Serve) -> None:
    _disk, exp = serve("readwrite")
    h = nbd.NBD()
    h.set_strict_mode(0)  # let the requests reach the server unchecked
    h.connect_uri(exp.uri)
    for off, n in [(SIZE, 512), (SIZE - 512, 4096), (2**63 - 512, 512)]:
        with pytest.raises(nbd.Error):
            h.pread(n, off)
        with pytest.raises(nbd.Error):
            h.pwrite(b"x" * n, off)
        with pytest.raises(nbd.Error):
            h.trim(n, off)
    h.pwrite(b"y" * 512, SIZE - 512)
    h.flush()
    assert h.pread(512, SIZE - 512) == b"y" * 512
    h.shutdown()
