"""The NBD export when the object store fails: EIO after a bounded time, never a false success,
and I/O resumes by itself when the store is back (DESIGN.md: "object store unreachable").

Two ways to fail the store: SIGSTOP of the real SeaweedFS (requests hang), and the fault proxy
(tests/support/faultproxy.py) between the plugin and SeaweedFS: 503 SlowDown, 500, resets mid-body,
truncated bodies, stalls. Exports here run with a 2 s retry deadline and a 2 s request timeout;
the only time checked is a generous liveness bound (the client gets an answer at all).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockstore.host.export import Export
from tests.support.faultproxy import FaultProxy
from tests.support.nbdtools import MODES, Disk, MiB, connect, create_disk, pattern, prefill

COLD = {5 * MiB: pattern(7, 64 * 1024)}  # in the store before the export starts: never cached

SIZE = 32 * MiB
FAST_FAIL = {"retry_seconds": 2.0, "request_timeout": 2.0, "write_wait_seconds": 2.0}
BOUND = 60.0  # liveness only: an operation against a dead store must end, well within this


def fails_with_eio(fn: Any, *args: Any) -> None:
    start = time.monotonic()
    with pytest.raises(nbd.Error) as err:
        fn(*args)
    assert err.value.errno == "EIO", err.value  # libnbd gives the name
    assert time.monotonic() - start < BOUND


def verify_in_store(disk: Disk, expect: dict[int, bytes]) -> None:
    exp = disk.export(cache_mode="none", cache_dir=None, retry_seconds=10.0, request_timeout=None)
    exp.start()
    try:
        h = connect(exp)
        for off, data in expect.items():
            assert h.pread(len(data), off) == data, f"offset {off}"
        h.shutdown()
    finally:
        exp.stop()


@pytest.fixture
def stopped_store(seaweed: Any) -> Iterator[Any]:
    yield seaweed
    seaweed.resume()  # never leave the shared store stopped, whatever happened


@pytest.mark.parametrize("mode", MODES)
def test_nbd_store_stopped_then_resumed(stopped_store: Any, tmp_path: Path, mode: str) -> None:
    seaweed = stopped_store
    disk = create_disk(seaweed.s3_config(), tmp_path, mode, SIZE, **FAST_FAIL)
    prefill(disk, COLD)
    exp = disk.export().start()
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 64 * 1024), 0)
        h.flush()
        assert h.pread(64 * 1024, 0) == pattern(1, 64 * 1024)  # now cached (cache modes)
        seaweed.pause()
        try:
            if mode == "none":
                fails_with_eio(h.pwrite, pattern(2, 4096), 1 * MiB)
                fails_with_eio(h.pread, 4096, 5 * MiB)
            elif mode == "readonly":
                assert h.pread(4096, 4096) == pattern(1, 64 * 1024)[4096:8192]  # cached: goes on
                fails_with_eio(h.pread, 4096, 5 * MiB)
                fails_with_eio(h.pwrite, pattern(2, 4096), 1 * MiB)
            else:
                h.pwrite(pattern(3, 4096), 2 * MiB)  # accepted into the cache
                assert h.pread(4096, 2 * MiB) == pattern(3, 4096)
                fails_with_eio(h.flush)  # not durable: never a false success
        finally:
            seaweed.resume()
        # Back without a restart.
        h.pwrite(pattern(4, 4096), 3 * MiB)
        h.flush()
        assert h.pread(4096, 5 * MiB) == COLD[5 * MiB][:4096]
        h.shutdown()
    finally:
        exp.kill()
    expect = {0: pattern(1, 64 * 1024), 3 * MiB: pattern(4, 4096), **COLD}
    if mode == "readwrite":
        expect[2 * MiB] = pattern(3, 4096)
    verify_in_store(disk, expect)


def test_nbd_readwrite_dirty_limit_then_eio_while_store_stopped(
    stopped_store: Any, tmp_path: Path
) -> None:
    seaweed = stopped_store
    disk = create_disk(seaweed.s3_config(), tmp_path, "readwrite", SIZE, dirty_limit="1M",
                       **FAST_FAIL)  # fmt: skip
    exp = disk.export().start()
    try:
        h = connect(exp)
        h.pwrite(b"\x01" * 4096, 0)
        h.flush()
        seaweed.pause()
        try:
            accepted = 0
            with pytest.raises(nbd.Error):
                for i in range(64):
                    h.pwrite(pattern(i, 128 * 1024), 8 * MiB + i * 128 * 1024)
                    accepted += 1
            assert 4 <= accepted <= 8  # up to the 1 MiB dirty limit, then EIO
        finally:
            seaweed.resume()
        h.pwrite(pattern(99, 128 * 1024), 16 * MiB)  # room again once the uploader drains
        h.flush()
        h.shutdown()
    finally:
        exp.kill()
    expect = {8 * MiB + i * 128 * 1024: pattern(i, 128 * 1024) for i in range(accepted)}
    expect[16 * MiB] = pattern(99, 128 * 1024)
    verify_in_store(disk, expect)


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed.endpoint)
    yield p
    p.close()


def proxied(seaweed: Any, proxy: FaultProxy, tmp_path: Path, mode: str) -> tuple[Disk, Export]:
    disk = create_disk(seaweed.s3_config(), tmp_path, mode, SIZE, **FAST_FAIL)
    prefill(disk, COLD)
    disk.config = replace(disk.config, s3=replace(disk.config.s3, endpoint=proxy.endpoint))
    return disk, disk.export().start()


@pytest.mark.parametrize("fault", ["503", "500", "reset", "truncate", "stall"])
def test_nbd_transient_faults_are_retried(
    seaweed: Any, proxy: FaultProxy, tmp_path: Path, fault: str
) -> None:
    disk, exp = proxied(seaweed, proxy, tmp_path, "none")
    proxy.stall_seconds = 0.5
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 256 * 1024), 0)
        proxy.arm(fault, count=2)
        h.pwrite(pattern(2, 256 * 1024), 1 * MiB)  # a PUT that meets two faults, then passes
        h.flush()
        proxy.arm(fault, methods={"GET"}, count=2)
        assert h.pread(64 * 1024, 5 * MiB) == COLD[5 * MiB]
        assert proxy.stats[fault] >= 2
        h.shutdown()
    finally:
        exp.kill()
    verify_in_store(disk, {0: pattern(1, 256 * 1024), 1 * MiB: pattern(2, 256 * 1024)})


@pytest.mark.parametrize("fault", ["503", "500", "reset", "truncate", "stall"])
@pytest.mark.parametrize("mode", ["none", "readwrite"])
def test_nbd_persistent_faults_give_eio_then_recover(
    seaweed: Any, proxy: FaultProxy, tmp_path: Path, fault: str, mode: str
) -> None:
    disk, exp = proxied(seaweed, proxy, tmp_path, mode)
    proxy.stall_seconds = 3.0  # longer than the request timeout: the client side gives up
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 64 * 1024), 0)
        h.flush()
        proxy.arm(fault, methods={"GET"} if fault in ("truncate", "reset") else None)
        fails_with_eio(h.pread, 64 * 1024, 5 * MiB)  # cold: must come from the store
        if fault not in ("truncate", "reset"):
            if mode == "none":
                fails_with_eio(h.pwrite, pattern(2, 4096), 4 * MiB)
            else:
                h.pwrite(pattern(2, 4096), 4 * MiB)
                fails_with_eio(h.flush)
        proxy.clear()
        assert h.pread(64 * 1024, 5 * MiB) == COLD[5 * MiB]
        h.pwrite(pattern(3, 4096), 5 * MiB)
        h.flush()
        h.shutdown()
    finally:
        proxy.clear()
        exp.kill()
    expect = {0: pattern(1, 64 * 1024), 5 * MiB: pattern(3, 4096)}
    if mode == "readwrite" and fault not in ("truncate", "reset"):
        expect[4 * MiB] = pattern(2, 4096)
    verify_in_store(disk, expect)
