"""kill -9 durability of the NBD export, for every caching mode (DESIGN.md's durability table).

A client (libnbd, queue depth 1, in a thread) writes random sector ranges, sometimes with FUA,
sometimes followed by a flush, and journals what was issued and what was acknowledged. Every
512-byte sector written carries (write id, sector number) and a filler derived from both, so a
read tells exactly which write a sector came from and whether it is torn. nbdkit is killed with
SIGKILL at a random moment, restarted on the same cache directory, and the disk is checked:

- every sector holds the last write acknowledged to it, or a later issued one (the promise for
  kill -9 in all three modes; in readwrite that is the journal replay at restart). This implies
  the NBD rule: whatever a flush or FUA covered is there;
- no sector holds bytes never written (a sector is zeros only if no acknowledged write covers
  it; otherwise it parses as an issued write to that very sector, filler intact).

Bounded: a few kill rounds per seed, two seeds per mode, on an 8 MiB region.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockstore.host.contract import ENV_STATS_FILE, read_stats, stats_path
from tests.support.nbdtools import MODES, MiB, connect, create_disk

SECTOR = 512
REGION = 8 * MiB
NSECT = REGION // SECTOR
ROUNDS = 3


def sector_bytes(wid: int, sector: int) -> bytes:
    return struct.pack("<QQ", wid, sector) + bytes([(wid * 31 + sector * 7) & 0xFF or 1]) * 496


class History:
    """What the client issued and what was acknowledged, per sector."""

    def __init__(self) -> None:
        self.next_wid = 1
        self.issued: dict[int, tuple[int, int]] = {}  # wid -> (first sector, count)
        self.last_acked = [0] * NSECT  # newest acknowledged write id per sector
        self.acked = 0
        self.flushes = 0
        self.failed = 0  # requests answered with an error (the server still up)

    def check(self, image: bytes) -> None:
        for s in range(NSECT):
            raw = image[s * SECTOR : (s + 1) * SECTOR]
            want = self.last_acked[s]
            if raw == bytes(SECTOR):
                assert want == 0, f"sector {s}: acknowledged write {want} lost (reads zeros)"
                continue
            wid, sec = struct.unpack_from("<QQ", raw)
            assert sec == s and raw == sector_bytes(wid, s), f"sector {s}: bytes never written"
            first, n = self.issued.get(wid, (-1, 0))
            assert first <= s < first + n, f"sector {s}: holds write {wid}, which never touched it"
            assert wid >= want, f"sector {s}: holds write {wid}, older than acknowledged {want}"


def client(h: nbd.NBD, hist: History, rng: random.Random, stop: threading.Event) -> None:
    while not stop.is_set():
        r = rng.random()
        try:
            if r < 0.1:
                h.flush()
                hist.flushes += 1
                continue
            n = rng.choice([1, 1, 8, 8, 8, 16, 128])
            first = rng.randrange(0, NSECT - n + 1)
            wid = hist.next_wid
            hist.next_wid += 1
            hist.issued[wid] = (first, n)
            data = b"".join(sector_bytes(wid, s) for s in range(first, first + n))
            h.pwrite(data, first * SECTOR, nbd.CMD_FLAG_FUA if r > 0.95 else 0)
            for s in range(first, first + n):
                hist.last_acked[s] = wid
            hist.acked += 1
        except nbd.Error:
            # Never acknowledged: that write may or may not have landed (either is allowed).
            if h.aio_is_dead() or h.aio_is_closed():
                return  # the server died under us
            hist.failed += 1  # the store is stopped: EIO, and the client goes on


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_nbd_kill9_loses_no_acknowledged_write(
    seaweed: Any, tmp_path: Path, mode: str, seed: int
) -> None:
    rng = random.Random(seed * 100 + MODES.index(mode))
    disk = create_disk(seaweed.s3_config(), tmp_path, mode, REGION, cache_size="4M",
                       dirty_limit="2M")  # fmt: skip
    hist = History()
    for round_ in range(ROUNDS):
        exp = disk.export().start()
        try:
            h = connect(exp)
            if round_:
                hist.check(h.pread(REGION, 0))  # reads through a cold cache after the crash
            stop = threading.Event()
            t = threading.Thread(target=client, args=(h, hist, rng, stop))
            t.start()
            time.sleep(rng.uniform(0.3, 1.5))
        finally:
            exp.kill()
        stop.set()
        t.join(30)
        assert not t.is_alive()
        del h  # the connection died with the server
    exp = disk.export().start()
    try:
        h = connect(exp)
        hist.check(h.pread(REGION, 0))
        h.shutdown()
    finally:
        exp.stop()
    assert hist.acked > 10, "the client hardly wrote anything: the test proved little"


@pytest.mark.parametrize("mode", MODES)
def test_nbd_kill9_while_the_store_is_stopped_loses_no_acknowledged_write(
    seaweed: Any, tmp_path: Path, mode: str
) -> None:
    """As above, but the store is stopped (SIGSTOP) before each kill: requests in flight hang
    in it, the write-through modes and flushes answer EIO after the retry deadline, readwrite
    keeps taking writes into its journal. The store is resumed after the kill, so the PUTs the
    dead process had sent land only then, racing the new process's open and fence; nbdkit
    restarts, and the same check holds (here: 1-2 EIOs and 400-1,300 acknowledged writes per
    mode)."""
    rng = random.Random(7 + MODES.index(mode))
    disk = create_disk(seaweed.s3_config(), tmp_path, mode, REGION, cache_size="4M",
                       dirty_limit="2M", retry_seconds=1.0, request_timeout=1.0,
                       write_wait_seconds=1.0)  # fmt: skip
    hist = History()
    for round_ in range(2):
        exp = disk.export().start()
        stop = threading.Event()
        try:
            h = connect(exp)
            if round_:
                hist.check(h.pread(REGION, 0))
            t = threading.Thread(target=client, args=(h, hist, rng, stop))
            t.start()
            time.sleep(rng.uniform(0.3, 1.0))
            seaweed.pause()
            try:
                time.sleep(rng.uniform(0.5, 2.5))
            finally:
                exp.kill()
                seaweed.resume()
        finally:
            exp.kill()
        stop.set()
        t.join(30)
        assert not t.is_alive()
        del h
    exp = disk.export().start()
    try:
        h = connect(exp)
        hist.check(h.pread(REGION, 0))
        h.shutdown()
    finally:
        exp.stop()
    assert hist.acked > 10, "the client hardly wrote anything: the test proved little"


def coalesced(exp: Any) -> int:
    """Bytes the export's uploader left out because a later write of the round replaced them."""
    stats = read_stats(stats_path(exp.config.socket)) or {}
    return int(stats.get("cache", {}).get("coalesced_bytes", 0))


def check_prefix(hist: History, image: bytes, flushed_upto: int) -> int:
    """The image must be the disk as it was after some write K (a prefix of the writes), with K
    at least the last write a flush covered. Returns K."""
    found = [struct.unpack_from("<Q", image, s * SECTOR)[0] for s in range(NSECT)]
    k = max(found)
    assert k >= flushed_upto, f"store holds writes up to {k}; a flush covered {flushed_upto}"
    expect = [0] * NSECT
    for wid in sorted(hist.issued):
        if wid > k:
            break
        first, n = hist.issued[wid]
        for s in range(first, first + n):
            expect[s] = wid
    for s in range(NSECT):
        raw = image[s * SECTOR : (s + 1) * SECTOR]
        if expect[s] == 0:
            assert raw == bytes(SECTOR), f"sector {s}: holds data though no write <= {k} hit it"
        else:
            assert raw == sector_bytes(expect[s], s), (
                f"sector {s}: not write {expect[s]}: the store is not a prefix of the writes"
            )
    return k


SMALL = ([1, 8, 16], NSECT, "4M", "2M")  # sector counts, sectors written, cache, dirty limit
# 128 KiB - 1 MiB writes over 3 MiB: upload rounds overwrite themselves and go up coalesced,
# as one segment each (blockstore/cache/coalesce.py).
HOT = ([256, 1024, 2048], 3 * MiB // SECTOR, "16M", "4M")


@pytest.mark.parametrize(
    ("seed", "shape"), [(3, SMALL), (4, SMALL), (5, HOT), (6, HOT)], ids=["s3", "s4", "h5", "h6"]
)
def test_nbd_readwrite_host_lost_leaves_a_prefix(
    seaweed: Any, tmp_path: Path, seed: int, shape: tuple[list[int], int, str, str]
) -> None:
    """readwrite, cache directory lost with the process: writes after the last flush may be
    gone, but the store holds the disk as it was after some write, never a mix."""
    rng = random.Random(seed)
    sizes, span, cache_size, dirty_limit = shape
    disk = create_disk(seaweed.s3_config(), tmp_path, "readwrite", REGION, cache_size=cache_size,
                       dirty_limit=dirty_limit)  # fmt: skip
    assert disk.config.cache_dir is not None
    hist = History()
    flushed_upto = 0

    def flushing_client(h: nbd.NBD, stop: threading.Event) -> None:
        nonlocal flushed_upto
        while not stop.is_set():
            n = rng.choice(sizes)
            first = rng.randrange(0, span - n + 1)
            wid = hist.next_wid
            hist.next_wid += 1
            hist.issued[wid] = (first, n)
            try:
                h.pwrite(b"".join(sector_bytes(wid, s) for s in range(first, first + n)),
                         first * SECTOR)  # fmt: skip
                hist.acked += 1
                if rng.random() < 0.05:
                    h.flush()
                    flushed_upto = wid
            except nbd.Error:
                return

    stats_file = {ENV_STATS_FILE: str(stats_path(disk.config.socket))}  # for `coalesced`
    exp = disk.export(extra_env=stats_file).start()
    try:
        h = connect(exp)
        stop = threading.Event()
        t = threading.Thread(target=flushing_client, args=(h, stop))
        t.start()
        time.sleep(rng.uniform(0.5, 1.5))
        if shape is HOT:
            # A store that stops answering for a moment lets a round build up past
            # writeback._COALESCE_FROM; the test must then see coalesced rounds, or it proved
            # little. It kills the export a moment later, while later rounds are in flight.
            seaweed.pause()
            time.sleep(1.0)
            seaweed.resume()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not coalesced(exp):
                time.sleep(0.05)
            assert coalesced(exp), "no upload round was coalesced"
            time.sleep(rng.uniform(0.1, 0.8))
    finally:
        exp.kill()
    stop.set()
    t.join(30)
    import shutil

    shutil.rmtree(disk.config.cache_dir)  # the host is gone, its cache with it
    again = disk.export(cache_mode="none", cache_dir=None).start()
    try:
        h = connect(again)
        check_prefix(hist, h.pread(REGION, 0), flushed_upto)
        h.shutdown()
    finally:
        again.stop()
    assert hist.acked > 10
