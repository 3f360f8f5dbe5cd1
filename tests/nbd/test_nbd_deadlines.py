"""Request deadlines over NBD: a request issued while the store is down fails with EIO within
the retry deadline plus one request timeout of being issued, and a request issued once the
store answers again succeeds (DESIGN.md: "object store unreachable"; blockstore/deadline.py).

Real parts only: the shared SeaweedFS stopped with SIGSTOP (`pause()`: requests hang) and
continued with SIGCONT (`resume()`), or the fault proxy in front of it resetting every
connection (`down`: requests fail at once and are retried), the plugin under nbdkit, libnbd as
the client. Requests are issued on a
schedule with libnbd's asynchronous calls, so later ones find earlier ones still waiting: a
write joining or queued behind a PUT that started before it, a read waiting for another
read's cache fill, a flush behind the background uploader. Every latency is measured in the
client, from the moment the request was issued.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockstore.errors import NotFound, Unavailable
from tests.support.faultproxy import FaultProxy
from tests.support.nbdtools import MiB, connect, create_disk, pattern, prefill

RETRY = 3.0  # the export's retry-seconds: each request's deadline
TIMEOUT = 1.0  # the export's request-timeout: one S3 request
MARGIN = 1.5  # scheduling on a busy two-core machine
BOUND = RETRY + TIMEOUT + MARGIN
SIZE = 32 * MiB
BLOCK = 64 * 1024
DEADLINES = {"retry_seconds": RETRY, "request_timeout": TIMEOUT, "write_wait_seconds": RETRY}
COLD = {4 * MiB + i * MiB: pattern(100 + i, BLOCK) for i in range(8)}  # in the store, not cached
# Issue times (seconds after the store stopped): later requests find earlier ones waiting, and
# some are issued after the first PUTs and GETs have given up (their retries re-sent).
STAGGER = [0.0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.8]


@dataclass
class Outcome:
    name: str
    issued: float
    done: float = 0.0
    error: str | None = None  # libnbd's errno name, None: succeeded

    @property
    def latency(self) -> float:
        return self.done - self.issued


Start = Callable[[nbd.NBD], int]  # issues one aio request, returns its cookie


def run_schedule(
    h: nbd.NBD, schedule: list[tuple[float, str, Start]], limit: float = 60
) -> list[Outcome]:
    """Issue each request at its time (seconds from now) and wait for all; report each one's
    issue time, completion time and error as the client saw them."""
    t0 = time.monotonic()
    todo = sorted(schedule, key=lambda x: x[0])
    waiting: dict[int, Outcome] = {}
    out: list[Outcome] = []
    while todo or waiting:
        now = time.monotonic()
        assert now - t0 < limit, f"requests still waiting after {limit} s: {waiting}"
        while todo and now - t0 >= todo[0][0]:
            _at, name, start = todo.pop(0)
            o = Outcome(name, time.monotonic())
            waiting[start(h)] = o
            out.append(o)
        for cookie in list(waiting):
            o = waiting[cookie]
            try:
                finished = h.aio_command_completed(cookie)
            except nbd.Error as exc:
                o.error = exc.errno or str(exc)
                finished = True
            if finished:
                o.done = time.monotonic()
                del waiting[cookie]
        wait_ms = 10 if not todo else max(1, min(10, int((todo[0][0] - (now - t0)) * 1000)))
        h.poll(wait_ms)
    return out


_buffers: list[nbd.Buffer] = []  # libnbd reads and writes them until the request completes


def write(off: int, data: bytes, fua: bool = False) -> Start:
    flags = nbd.CMD_FLAG_FUA if fua else 0
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    _buffers.append(buf)
    return lambda h: h.aio_pwrite(buf, off, flags=flags)


def read(off: int, n: int) -> Start:
    buf = nbd.Buffer(n)
    _buffers.append(buf)
    return lambda h: h.aio_pread(buf, off)


def flush() -> Start:
    return lambda h: h.aio_flush()


def assert_eio_in_time(outcomes: list[Outcome]) -> None:
    report = "\n".join(
        f"  {o.name:<14} issued +{o.issued - outcomes[0].issued:5.2f} s  "
        f"{o.error or 'ok':<4} after {o.latency:5.2f} s"
        for o in outcomes
    )
    print(f"\nwhile the store is stopped:\n{report}")  # pytest -s shows the figures
    for o in outcomes:
        assert o.error == "EIO", f"{o.name} did not fail with EIO:\n{report}"
        assert o.latency <= BOUND, f"{o.name} took {o.latency:.2f} s > {BOUND} s:\n{report}"


def assert_all_ok(outcomes: list[Outcome]) -> None:
    report = "\n".join(
        f"  {o.name:<14} {o.error or 'ok'} after {o.latency:5.2f} s" for o in outcomes
    )
    print(f"\nonce the store answers again:\n{report}")
    assert all(o.error is None for o in outcomes), f"a request after recovery failed:\n{report}"


def wait_until_store_answers(seaweed: Any) -> None:
    """Return once the store answers a request again (after `resume()`)."""
    store = seaweed.raw_store()
    try:
        for _ in range(200):
            try:
                store.head("deadline-probe/absent")
            except NotFound:
                return
            except Unavailable:
                time.sleep(0.05)
        raise AssertionError("the store did not come back")
    finally:
        store.close()


@pytest.fixture
def stopped_store(seaweed: Any) -> Iterator[Any]:
    yield seaweed
    seaweed.resume()  # never leave the shared store stopped, whatever happened


def serve(
    seaweed: Any, tmp_path: Path, mode: str, endpoint: str | None = None, **changes: Any
) -> Any:
    disk = create_disk(seaweed.s3_config(), tmp_path, mode, SIZE, **{**DEADLINES, **changes})
    prefill(disk, COLD)
    if endpoint is not None:
        disk.config = replace(disk.config, s3=replace(disk.config.s3, endpoint=endpoint))
    return disk.export().start()


def after_recovery(seaweed: Any, h: nbd.NBD, mode: str, proxy: FaultProxy | None = None) -> None:
    """End the outage; as soon as the store answers, a burst of writes, cold reads and a
    flush: every one must succeed (nothing left over from the outage)."""
    if proxy is not None:
        proxy.clear()
    else:
        seaweed.resume()
        wait_until_store_answers(seaweed)
    cold = list(COLD)
    burst: list[tuple[float, str, Start]] = [
        (0.0, "write", write(20 * MiB, pattern(50, 4096))),
        (0.0, "write fua", write(21 * MiB, pattern(51, 4096), fua=True)),
        (0.0, "cold read", read(cold[-1], 4096)),
        (0.05, "flush", flush()),
        (0.1, "write", write(22 * MiB, pattern(52, 4096))),
        (0.1, "flush", flush()),
    ]
    assert_all_ok(run_schedule(h, burst))
    assert h.pread(4096, 21 * MiB) == pattern(51, 4096)


@pytest.mark.parametrize("outage", ["sigstop", "down"])
def test_none_writes_and_reads_fail_in_time_then_recover(
    stopped_store: Any, tmp_path: Path, outage: str
) -> None:
    seaweed = stopped_store
    proxy = FaultProxy(seaweed.endpoint) if outage == "down" else None
    exp = serve(seaweed, tmp_path, "none", endpoint=proxy.endpoint if proxy else None)
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 4096), 0)
        cold = list(COLD)
        if proxy is not None:
            proxy.arm("down")
        else:
            seaweed.pause()
        schedule: list[tuple[float, str, Start]] = []
        for i, at in enumerate(STAGGER):
            schedule.append((at, f"write {i}", write(1 * MiB + i * BLOCK, pattern(10 + i, 4096))))
            schedule.append((at + 0.1, f"cold read {i}", read(cold[i % 4], 4096)))
        assert_eio_in_time(run_schedule(h, schedule))
        after_recovery(seaweed, h, "none", proxy)
        h.shutdown()
    finally:
        exp.kill()
        if proxy is not None:
            proxy.close()


def test_readonly_writes_and_misses_fail_in_time_then_recover(
    stopped_store: Any, tmp_path: Path
) -> None:
    seaweed = stopped_store
    exp = serve(seaweed, tmp_path, "readonly", readahead="0")
    try:
        h = connect(exp)
        h.pwrite(pattern(1, BLOCK), 0)
        assert h.pread(BLOCK, 0) == pattern(1, BLOCK)  # cached from here on
        cold = list(COLD)
        seaweed.pause()
        assert h.pread(4096, 4096) == pattern(1, BLOCK)[4096:8192]  # a hit goes on
        schedule: list[tuple[float, str, Start]] = []
        for i, at in enumerate(STAGGER):
            schedule.append((at, f"write {i}", write(1 * MiB + i * BLOCK, pattern(10 + i, 4096))))
            # The same cold block every time: later misses wait for an earlier one's fill.
            schedule.append((at + 0.1, f"miss {i}", read(cold[0] + 4096 * (i % 4), 4096)))
        assert_eio_in_time(run_schedule(h, schedule))
        after_recovery(seaweed, h, "readonly")
        h.shutdown()
    finally:
        exp.kill()


def test_readwrite_flushes_fail_in_time_then_recover(stopped_store: Any, tmp_path: Path) -> None:
    seaweed = stopped_store
    exp = serve(seaweed, tmp_path, "readwrite")
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 4096), 0)
        h.flush()
        seaweed.pause()
        schedule: list[tuple[float, str, Start]] = []
        for i, at in enumerate(STAGGER):
            schedule.append((at, f"write {i}", write(1 * MiB + i * BLOCK, pattern(10 + i, BLOCK))))
            schedule.append((at + 0.05, f"flush {i}", flush()))
        outcomes = run_schedule(h, schedule)
        assert all(o.error is None for o in outcomes if o.name.startswith("write"))  # cached
        assert_eio_in_time([o for o in outcomes if o.name.startswith("flush")])
        after_recovery(seaweed, h, "readwrite")
        h.shutdown()
    finally:
        exp.kill()


def test_readwrite_dirty_limit_write_fails_in_time(stopped_store: Any, tmp_path: Path) -> None:
    """A write waiting for dirty room gives up at its own deadline, even when write-wait is
    longer."""
    seaweed = stopped_store
    exp = serve(seaweed, tmp_path, "readwrite", dirty_limit="1M", write_wait_seconds=30.0)
    try:
        h = connect(exp)
        h.pwrite(pattern(1, 4096), 0)
        h.flush()
        seaweed.pause()
        schedule = [
            (0.1 * i, f"write {i}", write(8 * MiB + i * 128 * 1024, pattern(i, 128 * 1024)))
            for i in range(12)
        ]
        outcomes = run_schedule(h, schedule)
        failed = [o for o in outcomes if o.error is not None]
        assert failed, "the dirty limit was never reached"
        assert_eio_in_time(failed)
        after_recovery(seaweed, h, "readwrite")
        h.shutdown()
    finally:
        exp.kill()
