"""Unit tests of the host cache (blockstore/cache/hostcache.py) in all three modes.

Two kinds of volume sit under the cache here: the real `Volume` on a `MemoryStore` (when the
engine is importable) for the data tests, and `ByteVolume`, a small in-memory stand-in whose
failures, gates and durable image the tests control, for the race and outage tests. The same
contract holds for both: what the cache returns is what was last written; what `flush` reports
durable is in the volume's durable image.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from blockstore.cache import writeback
from blockstore.cache.hostcache import HostCache, HostCacheConfig
from blockstore.cache.journal import JOURNAL_EPOCH_FILE, journal_files, journal_path
from blockstore.errors import Fenced, InvalidArgument, Unavailable
from blockstore.store.base import Buffer
from blockstore.store.memory import MemoryStore

MiB = 1 << 20
SIZE = 8 * MiB
BS = 64 * 1024


class ByteVolume:
    """A volume in a bytearray: `image` is what reads see, `durable` what a crash would keep.

    `fail` makes every call raise `Unavailable` (a store outage); `gate`, when set, makes
    `readinto` wait for it (to hold a fill in flight); `log` records applied operations in order.
    """

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.image = bytearray(size)
        self.durable = bytearray(size)
        self.fail = False
        self.fenced = False
        self.writable = True
        self.epoch = 1  # the writer epoch of this "open"; the journal is tagged with it
        self.prior_epoch = 1  # the epoch it took the log from: replays a journal of epoch 1
        self.gate: threading.Event | None = None
        self.gate_entered = threading.Event()
        self.reads = 0
        self.read_bytes = 0
        self.flushes = 0
        self.groups = 0  # write_group calls (coalesced upload rounds)
        self.lock = threading.Lock()

    def _check(self) -> None:
        if self.fenced:
            raise Fenced("a newer writer took the disk")
        if self.fail:
            raise Unavailable("store down (test)")

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._check()
        with self.lock:
            snap = bytes(self.image[offset : offset + len(buf)])
        if self.gate is not None:
            self.gate_entered.set()
            self.gate.wait()
        self.reads += 1
        self.read_bytes += len(buf)
        buf[:] = snap

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, durable: bool = False
    ) -> None:
        self._check()
        with self.lock:
            self.image[offset : offset + len(data)] = data
        if durable:
            self.flush()

    def write_group(self, records: Sequence[tuple[int, int, bytes | memoryview | None]]) -> None:
        self._check()
        with self.lock:
            self.groups += 1
            for offset, length, data in records:
                self.image[offset : offset + length] = bytes(length) if data is None else data

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None:
        self.write(offset, bytes(length), durable=durable)

    zero = trim

    def flush(self) -> None:
        self._check()
        with self.lock:
            self.durable[:] = self.image
            self.flushes += 1

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        return [(offset, length, False)]

    def resize(self, new_size: int, *, allow_shrink: bool = False) -> None:
        with self.lock:
            self.image[new_size:] = b""
            self.image.extend(bytes(max(0, new_size - len(self.image))))
            self.size = new_size


def make_cache(
    vol: ByteVolume,
    tmp_path: Path,
    mode: str,
    *,
    cache_size: int = 4 * MiB,
    dirty_limit: int = 1 * MiB,
    **kw: Any,
) -> HostCache:
    cfg = HostCacheConfig(
        mode=mode, block_size=BS, cache_size=cache_size, dirty_limit=dirty_limit, **kw
    )
    return HostCache(vol, cfg, tmp_path / "cache")


def reopen_after_crash(vol: ByteVolume, cache: HostCache, tmp_path: Path) -> HostCache:
    """Drop `cache` as a crash would, bring the store back and open the cache again (which
    replays its journal)."""
    cache.abandon()
    vol.fail = False
    return make_cache(vol, tmp_path, "readwrite")


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("mode", ["none", "readonly", "readwrite"])
def test_random_ops_match_a_model(tmp_path: Path, mode: str) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, mode, cache_size=2 * MiB)
    model = bytearray(SIZE)
    rng = random.Random(7)
    for i in range(400):
        off = rng.randrange(0, SIZE // 512) * 512
        n = min(SIZE - off, rng.choice([512, 4096, 65536, 200_192]))
        op = rng.random()
        if op < 0.45:
            data = pattern(i, n)
            cache.pwrite(data, off, fua=rng.random() < 0.05)
            model[off : off + n] = data
        elif op < 0.55:
            cache.trim(off, n)
            model[off : off + n] = bytes(n)
        elif op < 0.6:
            cache.zero(off, n)
            model[off : off + n] = bytes(n)
        elif op < 0.95:
            buf = bytearray(n)
            cache.pread(buf, off)
            assert buf == model[off : off + n], f"op {i}: read {off}+{n} differs"
        else:
            cache.flush()
            assert vol.durable == model
    cache.flush()
    assert vol.durable == model
    buf = bytearray(SIZE)
    cache.pread(buf, 0)
    assert buf == model
    if mode != "none":
        assert cache.stats.evictions > 0  # 8 MiB disk through a 2 MiB cache
    cache.close()


@pytest.mark.parametrize("memory", [0, 64 * 1024, 16 * MiB])
def test_pending_writes_upload_alike_from_memory_and_from_the_journal(
    tmp_path: Path, memory: int
) -> None:
    """The uploader takes a pending write's bytes from memory while they fit in
    `upload_memory`, and from the journal past it (or with none): the store ends up the same,
    overwrites included, though the caller's buffer changed after each write returned; and
    the memory held is given back."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", upload_memory=memory, upload_delay=60)
    model = bytearray(SIZE)
    rng = random.Random(11)
    for i in range(120):
        off = rng.randrange(0, 64) * 8192  # a small area: many overwrites while pending
        data = pattern(i, rng.choice([4096, 8192, 65536]))
        buf = bytearray(data)
        cache.pwrite(buf, off)
        buf[:] = bytes(len(buf))  # as nbdkit reuses its buffer once the write returned
        model[off : off + len(data)] = data
        if i % 40 == 39:
            cache.flush()
            assert vol.durable == model
    cache.flush()
    assert vol.durable == model
    assert cache._writeback is not None and cache._writeback._held_bytes == 0
    cache.close()


@pytest.mark.parametrize("mode", ["readonly", "readwrite"])
def test_warm_reads_hit_and_cold_random_reads_fetch_only_their_blocks(
    tmp_path: Path, mode: str
) -> None:
    vol = ByteVolume()
    vol.image[:] = pattern(1, SIZE)
    cache = make_cache(vol, tmp_path, mode)
    buf = bytearray(4096)
    cache.pread(buf, 5 * BS + 8192)  # cold and not sequential: one block only
    assert vol.read_bytes == BS and cache.stats.readahead == 0
    for _ in range(10):
        cache.pread(buf, 5 * BS + 8192)
    assert cache.stats.hits == 10 and vol.reads == 1
    assert buf == vol.image[5 * BS + 8192 : 5 * BS + 8192 + 4096]
    cache.close()


def test_sequential_reads_trigger_readahead(tmp_path: Path) -> None:
    vol = ByteVolume()
    vol.image[:] = pattern(2, SIZE)
    cache = make_cache(vol, tmp_path, "readonly", readahead=512 * 1024)
    buf = bytearray(BS)
    for i in range(32):
        cache.pread(buf, i * BS)
        assert buf == vol.image[i * BS : (i + 1) * BS]
    assert cache.stats.readahead > 0
    assert vol.reads < 32 // 2  # read-ahead turned most of the stream into hits
    cache.close()


def test_eviction_keeps_the_cache_bounded_and_dirty_blocks(tmp_path: Path) -> None:
    vol = ByteVolume()
    vol.image[:] = pattern(3, SIZE)
    cache = make_cache(vol, tmp_path, "readonly", cache_size=16 * BS)
    buf = bytearray(4096)
    for i in range(SIZE // BS):
        cache.pread(buf, i * BS)
        assert buf == vol.image[i * BS : i * BS + 4096]
    assert len(cache._map.resident) <= 16
    assert cache.stats.evictions >= SIZE // BS - 16
    cache.close()


@pytest.mark.parametrize("mode", ["readonly", "readwrite"])
def test_a_fill_never_overwrites_a_write_made_while_it_was_in_flight(
    tmp_path: Path, mode: str
) -> None:
    vol = ByteVolume()
    vol.image[:] = b"\x11" * SIZE
    cache = make_cache(vol, tmp_path, mode)
    vol.gate = threading.Event()
    out = bytearray(BS)
    reader = threading.Thread(target=cache.pread, args=(out, 3 * BS))
    reader.start()
    assert vol.gate_entered.wait(5)  # the fill has read old bytes and is held
    cache.pwrite(b"\x22" * 4096, 3 * BS + 4096)  # lands while the fill is in flight
    vol.gate.set()
    reader.join(5)
    vol.gate = None
    buf = bytearray(BS)
    cache.pread(buf, 3 * BS)
    assert buf[4096:8192] == b"\x22" * 4096
    assert buf[:4096] == b"\x11" * 4096 and buf[8192:] == b"\x11" * (BS - 8192)
    cache.flush()
    assert vol.durable[3 * BS + 4096 : 3 * BS + 8192] == b"\x22" * 4096
    cache.close()


@pytest.mark.parametrize("mode", ["readonly", "readwrite"])
def test_a_miss_on_blocks_being_filled_waits_for_that_fill(tmp_path: Path, mode: str) -> None:
    """Concurrent misses on the same blocks fetch them once (at QD4, sequential reads with
    read-ahead fetched every block about twice)."""
    vol = ByteVolume()
    vol.image[:] = random.Random(3).randbytes(SIZE)
    cache = make_cache(vol, tmp_path, mode)
    vol.gate = threading.Event()
    first, second = bytearray(4 * BS), bytearray(2 * BS)
    a = threading.Thread(target=cache.pread, args=(first, 0))
    a.start()
    assert vol.gate_entered.wait(5)  # the first fill is in flight, held
    b = threading.Thread(target=cache.pread, args=(second, 2 * BS))  # inside that fill
    b.start()
    time.sleep(0.2)
    assert vol.reads == 0  # the second miss waits; it fetches nothing itself
    vol.gate.set()
    a.join(5)
    b.join(5)
    assert first == vol.image[: 4 * BS] and second == vol.image[2 * BS : 4 * BS]
    assert vol.reads == 1 and vol.read_bytes == 4 * BS
    cache.close()


def test_readwrite_acknowledges_without_the_store_and_flush_fails_cleanly(tmp_path: Path) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", write_wait_seconds=0.3)
    vol.fail = True
    cache.pwrite(b"a" * 4096, 0)  # accepted into the cache while the store is down
    buf = bytearray(4096)
    cache.pread(buf, 0)
    assert buf == b"a" * 4096
    with pytest.raises(Unavailable):
        cache.flush()
    assert vol.durable[:4096] == bytes(4096)  # never a false success
    # Fill the dirty limit: the next write waits write_wait_seconds, then fails.
    chunk = b"b" * (128 * 1024)
    with pytest.raises(Unavailable):
        for i in range(1, 64):
            cache.pwrite(chunk, i * len(chunk))
    accepted = i - 1
    assert accepted >= 4  # up to the 1 MiB limit
    vol.fail = False  # the store is back: no restart needed
    cache.pwrite(b"c" * 4096, SIZE - 4096)
    cache.flush()
    assert vol.durable[:4096] == b"a" * 4096
    assert vol.durable[SIZE - 4096 :] == b"c" * 4096
    assert vol.durable[128 * 1024 : 256 * 1024] == chunk
    assert cache.dirty_bytes == 0
    cache.close()


def test_rewrites_of_one_area_count_once_and_go_up_coalesced(tmp_path: Path) -> None:
    """The dirty limit counts each cache block once however often it is rewritten, the journal
    is bounded at four times the limit, and the round that follows an outage sends each block
    once, as one group, leaving the store exactly as the writes did."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", dirty_limit=2 * MiB, write_wait_seconds=0.2)
    vol.fail = True
    want = bytearray(SIZE)
    for i in range(12):  # 12 x 256 KiB = 3 MiB of journal over one 256 KiB area
        data = pattern(i, 256 * 1024)
        cache.pwrite(data, 0)
        want[: len(data)] = data
    assert cache.dirty_bytes == 256 * 1024
    assert cache.stats.journal_bytes >= 3 * MiB
    assert cache.stats.write_waits == 0
    with pytest.raises(Unavailable, match="dirty limit"):  # 2 MiB more, elsewhere: no room
        cache.pwrite(pattern(99, 2 * MiB), 4 * MiB)
    with pytest.raises(Unavailable, match="journal limit"):  # 4x the dirty limit: 8 MiB
        for i in range(12, 64):
            data = pattern(i, 256 * 1024)
            cache.pwrite(data, 0)
            want[: len(data)] = data
    vol.fail = False
    cache.flush()
    assert vol.durable == want
    assert vol.groups >= 1
    assert cache.stats.coalesced_bytes >= 6 * MiB
    assert cache.dirty_bytes == 0 and cache.stats.journal_bytes == 0
    cache.close()


@pytest.mark.parametrize("mode", ["none", "readonly"])
def test_write_through_modes_fail_writes_when_the_store_is_down(tmp_path: Path, mode: str) -> None:
    vol = ByteVolume()
    vol.image[:BS] = b"x" * BS
    cache = make_cache(vol, tmp_path, mode)
    buf = bytearray(4096)
    cache.pread(buf, 0)
    cache.pread(buf, BS)
    vol.fail = True
    with pytest.raises(Unavailable):
        cache.pwrite(b"y" * 4096, 0)  # the failed write's block is dropped from the cache
    if mode == "readonly":
        cache.pread(buf, BS)  # other cached reads go on while the store is down
        assert buf == vol.image[BS : BS + 4096]
    with pytest.raises(Unavailable):
        cache.pread(buf, 4 * MiB)  # uncached reads fail
    vol.fail = False
    cache.pread(buf, 0)
    assert buf == vol.image[:4096]
    cache.close()


def test_journal_is_replayed_before_serving_after_a_crash(tmp_path: Path) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    vol.fail = True  # nothing reaches the store before the "crash"
    model = bytearray(SIZE)
    for i in range(20):
        off = random.Random(i).randrange(0, SIZE - 8192) // 512 * 512
        data = pattern(100 + i, 8192)
        cache.pwrite(data, off)
        model[off : off + 8192] = data
    cache.trim(0, 4096)
    model[0:4096] = bytes(4096)
    cache.abandon()
    assert journal_files(tmp_path / "cache")
    # A torn record at the tail (the crash hit mid-append) must be ignored.
    last = journal_path(tmp_path / "cache", journal_files(tmp_path / "cache")[-1])
    with open(last, "ab") as f:
        f.write(b"\x42\x53\x4b\x4a" + b"\x00" * 20)
    vol.fail = False
    # Reopened in another mode: the journal still goes to the store first.
    again = make_cache(vol, tmp_path, "none")
    assert again.stats.replayed == 21
    assert vol.durable == model
    assert not journal_files(tmp_path / "cache")
    again.close()


def test_journal_emptied_by_a_flush_replays_only_later_writes(tmp_path: Path) -> None:
    """A flush empties the journal file in place; a crash after it replays only what came
    after the flush, so flushed data is never written over with what it replaced."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    cache.pwrite(b"a" * 4096, 0)
    cache.pwrite(b"b" * 4096, 4096)
    cache.flush()
    vol.fail = True  # nothing more reaches the store before the "crash"
    cache.pwrite(b"c" * 4096, 4096)
    cache.abandon()
    vol.fail = False
    again = make_cache(vol, tmp_path, "readwrite")
    assert again.stats.replayed == 1
    assert vol.durable[:8192] == b"a" * 4096 + b"c" * 4096
    again.close()


def test_journal_reused_after_a_flush_never_replays_what_was_durable(tmp_path: Path) -> None:
    """A flushed journal file is reused, its old records still in it: a crash before the next
    append must replay nothing, or it would write old data over what another writer put on
    the disk since (here: straight into the volume while this cache was down)."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    cache.pwrite(b"a" * 4096, 0)
    cache.pwrite(b"b" * 4096, 4096)
    cache.flush()
    cache.abandon()
    vol.durable[0:8192] = b"n" * 8192  # a later writer elsewhere
    again = make_cache(vol, tmp_path, "readwrite")
    assert again.stats.replayed == 0
    assert vol.durable[:8192] == b"n" * 8192
    again.close()


def test_journal_rolling_past_a_reused_file_loses_nothing(tmp_path: Path) -> None:
    """A reused file whose old records reach past its new end is cut before the journal rolls
    to the next file: replay reads the whole first file and goes on into the second."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", journal_file_size=8192, dirty_limit=2 * MiB)
    cache.pwrite(pattern(1, 64 * 1024), 0)  # one long record; the file ends far past 8192
    cache.flush()
    vol.fail = True  # nothing more reaches the store before the "crash"
    model = bytearray(vol.durable)
    for i in range(3):  # two fill the reused file past 8192; the third rolls to a new one
        data = pattern(10 + i, 4096)
        cache.pwrite(data, 8192 * i)
        model[8192 * i : 8192 * i + 4096] = data
    assert len(journal_files(tmp_path / "cache")) == 2
    again = reopen_after_crash(vol, cache, tmp_path)
    assert again.stats.replayed == 3
    assert vol.durable == model
    again.close()


def test_released_journal_files_are_reused_and_never_replayed(tmp_path: Path) -> None:
    """A released file is kept as a spare (its first header zeroed, out of the journal's
    names) and becomes the next file when the journal rolls: the replay after a crash finds
    only what was appended since, never the spare's old entries."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", journal_file_size=8192, dirty_limit=2 * MiB)
    for i in range(6):  # six files of one 8 KiB record each
        cache.pwrite(pattern(i, 8192), i * 8192)
    cache.flush()
    spares = sorted(p.name for p in (tmp_path / "cache").glob("spare-*"))
    assert len(spares) == 4  # at most four are kept; the rest deleted
    vol.fail = True
    model = bytearray(vol.durable)
    for i in range(3):  # the current file is reused, then the journal rolls onto two spares
        data = pattern(20 + i, 8192)
        cache.pwrite(data, 64 * 1024 + i * 8192)
        model[64 * 1024 + i * 8192 : 64 * 1024 + (i + 1) * 8192] = data
    assert len(list((tmp_path / "cache").glob("spare-*"))) == 2
    again = reopen_after_crash(vol, cache, tmp_path)
    assert again.stats.replayed == 3
    assert vol.durable == model
    again.close()


def test_writes_without_a_flush_reach_the_store_on_their_own(tmp_path: Path) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", upload_delay=0.05)
    cache.pwrite(b"d" * 4096, 8192)
    deadline = time.monotonic() + 5
    while cache.dirty_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.dirty_bytes == 0
    assert vol.durable[8192:12288] == b"d" * 4096
    cache.close()


def test_the_idle_uploader_still_uploads_when_it_looks_and_when_it_sleeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While writes come the uploader looks every upload_delay (writes do not wake it); once
    idle it sleeps until a write wakes it. A write without a flush is uploaded either way."""
    monkeypatch.setattr(writeback, "_IDLE_LOOK_SECONDS", 0.3)
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite", upload_delay=0.02)

    def uploaded_on_its_own(data: bytes, offset: int) -> None:
        cache.pwrite(data, offset)
        deadline = time.monotonic() + 5
        while cache.dirty_bytes and time.monotonic() < deadline:
            time.sleep(0.005)
        assert vol.durable[offset : offset + len(data)] == data

    assert not cache._writeback.asleep  # a new cache's uploader starts out looking
    uploaded_on_its_own(b"a" * 4096, 0)
    deadline = time.monotonic() + 5
    while not cache._writeback.asleep and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache._writeback.asleep
    uploaded_on_its_own(b"b" * 4096, 4096)
    cache.close()


def test_fenced_uploader_fails_everything_after(tmp_path: Path) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    vol.fenced = True
    cache.pwrite(b"z" * 4096, 0)
    with pytest.raises(Fenced):
        cache.flush()
    deadline = time.monotonic() + 5
    while cache._writeback.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Fenced):
        cache.pwrite(b"z" * 4096, 0)
    cache.abandon()


@pytest.mark.parametrize("mode", ["none", "readonly", "readwrite"])
def test_out_of_range_requests_are_refused(tmp_path: Path, mode: str) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, mode)
    for off, n in [(SIZE, 1), (SIZE - 512, 1024), (2**63 - 1, 512), (-1, 512), (0, -5)]:
        with pytest.raises(InvalidArgument):
            cache.pread(bytearray(max(n, 0)), off) if n >= 0 and off >= 0 else cache.trim(off, n)
        with pytest.raises(InvalidArgument):
            cache.trim(off, n)
    cache.pread(bytearray(0), SIZE)  # zero length at the end is fine
    cache.pwrite(b"q" * 512, SIZE - 512)
    buf = bytearray(512)
    cache.pread(buf, SIZE - 512)
    assert buf == b"q" * 512
    cache.close()


# --- on the real engine (Volume over a MemoryStore) ----------------------------------------------


@pytest.mark.parametrize("mode", ["none", "readonly", "readwrite"])
def test_on_a_real_volume_data_survives_close_and_journal_replay(tmp_path: Path, mode: str) -> None:
    from blockstore.engine.volume import Volume
    from blockstore.store.memory import MemoryStore

    store = MemoryStore()
    Volume.create(store, "d1", SIZE)
    vol = Volume.open(store, "d1")
    cache = make_cache(vol, tmp_path, mode)  # type: ignore[arg-type]
    model = bytearray(SIZE)
    rng = random.Random(11)
    for i in range(60):
        off = rng.randrange(0, SIZE // 512 - 300) * 512
        n = rng.choice([512, 4096, 65536, 150_016])
        if rng.random() < 0.8:
            data = pattern(i, n)
            cache.pwrite(data, off)
            model[off : off + n] = data
        else:
            cache.trim(off, n)
            model[off : off + n] = bytes(n)
        if i == 30:
            cache.flush()
    buf = bytearray(SIZE)
    cache.pread(buf, 0)
    assert buf == model
    holes = [e for e in cache.extents(0, SIZE) if e[2]]
    for off, n, _ in holes:
        assert model[off : off + n] == bytes(n)
    if mode == "readwrite":
        cache.abandon()  # a crash: the journal holds what the volume has not made durable
        vol.abandon()
        vol = Volume.open(store, "d1")
        cache = make_cache(vol, tmp_path, mode)  # type: ignore[arg-type]
    else:
        cache.close()
        vol.close()
        vol = Volume.open(store, "d1")
        cache = make_cache(vol, tmp_path, mode)  # type: ignore[arg-type]
    buf = bytearray(SIZE)
    cache.pread(buf, 0)
    assert buf == model
    cache.close()
    vol.close()


class GatedStore(MemoryStore):
    """A MemoryStore whose segment PUTs wait for `gate` (once set up) and are counted as they
    start, so a test can hold an upload round in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: threading.Event | None = None
        self.started: list[str] = []
        self.cv = threading.Condition()

    def put(self, key: str, data: Buffer, **kw: Any) -> str:
        if "/seg/" in key and self.gate is not None:
            with self.cv:
                self.started.append(key)
                self.cv.notify_all()
            assert self.gate.wait(10)
        return super().put(key, data, **kw)

    def wait_started(self, n: int) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: len(self.started) >= n, timeout=10)


def test_readwrite_flush_joins_the_round_in_flight_or_sends_its_own_at_once(
    tmp_path: Path,
) -> None:
    """While the background uploader's round waits for its segment PUT: a flush with nothing new
    to send waits for that PUT only (no second PUT); a flush after a new write sends its segment
    at once, beside the held one, instead of queueing behind the whole round."""
    from blockstore.engine.volume import Volume, VolumeConfig

    store = GatedStore()
    Volume.create(store, "d1", SIZE)
    vol = Volume.open(store, "d1", config=VolumeConfig(gc_interval_seconds=0, commit_delay=3600))
    cache = make_cache(vol, tmp_path, "readwrite")  # type: ignore[arg-type]
    store.gate = threading.Event()
    cache.pwrite(b"a" * 4096, 0)  # the uploader picks it up and its round's PUT is held
    assert store.wait_started(1)
    done: list[str] = []

    def flush(name: str) -> None:
        cache.flush()
        done.append(name)

    joiner = threading.Thread(target=flush, args=("joined",))
    joiner.start()
    cache.pwrite(b"b" * 4096, 4096)
    flusher = threading.Thread(target=flush, args=("flushed",))
    flusher.start()
    assert store.wait_started(2)  # the second segment left while the first is still held
    assert not done
    store.gate.set()
    joiner.join(10)
    flusher.join(10)
    assert sorted(done) == ["flushed", "joined"]
    assert len(store.started) == 2  # one PUT per round, none extra
    assert cache.dirty_bytes == 0
    cache.close()
    vol.close()
    r = Volume.open(store, "d1", writable=False)
    assert r.read(0, 8192) == b"a" * 4096 + b"b" * 4096


def test_a_journal_of_a_fenced_epoch_is_discarded_not_replayed(tmp_path: Path) -> None:
    """A journal is replayed only over the state it was acknowledged on: when the epoch that
    wrote it is not the one the new writer took the log from, another writer came between."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    vol.fail = True
    cache.pwrite(pattern(1, 4096), 0)  # acknowledged from the journal only
    cache.abandon()
    vol.fail = False
    vol.image[0:4096] = pattern(2, 4096)  # epoch 2 wrote the disk meanwhile
    vol.epoch, vol.prior_epoch = 3, 2
    again = make_cache(vol, tmp_path, "none")
    assert again.stats.replayed == 0
    assert again.stats.journal_discarded == 1
    assert vol.image[0:4096] == pattern(2, 4096)
    assert not journal_files(tmp_path / "cache")
    again.close()


def test_a_journal_without_its_epoch_is_not_trusted(tmp_path: Path) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    vol.fail = True
    cache.pwrite(pattern(1, 4096), 0)
    cache.abandon()
    vol.fail = False
    (tmp_path / "cache" / JOURNAL_EPOCH_FILE).unlink()
    again = make_cache(vol, tmp_path, "readonly")
    assert again.stats.journal_discarded == 1 and vol.image[0:4096] == bytes(4096)
    again.close()


@pytest.mark.parametrize("mode", ["none", "readonly", "readwrite"])
def test_a_fenced_cache_fails_every_call(tmp_path: Path, mode: str) -> None:
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, mode)
    cache.pwrite(pattern(1, 4096), 0)
    cache.flush()
    buf = bytearray(4096)
    cache.pread(buf, 0)  # a hit from here on in the modes with a cache
    cache.fence(Fenced("epoch 2 took the disk"))
    for call in (
        lambda: cache.pread(buf, 0),
        lambda: cache.pwrite(pattern(2, 4096), 0),
        cache.flush,
        lambda: cache.trim(0, 4096),
        lambda: cache.extents(0, 4096),
    ):
        with pytest.raises(Fenced):
            call()
    cache.close()


def test_a_flush_sends_the_small_writes_before_it_as_one_group(tmp_path: Path) -> None:
    """Issue #21: 64 small writes, then a flush: one write_group (one segment, one PUT), not
    one per commit window; the uploader (default `upload_delay`, 1 s) left them to the flush."""
    vol = ByteVolume()
    cache = make_cache(vol, tmp_path, "readwrite")
    for round_ in range(3):
        for i in range(64):
            cache.pwrite(pattern(round_ * 64 + i, 4096), ((i * 37 + round_) % 200) * 4096)
        cache.flush()
    assert vol.groups == 3
    assert vol.flushes == 3
    assert bytes(vol.durable) == bytes(vol.image)
    cache.close()


def test_a_segments_worth_of_writes_goes_up_without_a_flush(tmp_path: Path) -> None:
    """`upload_batch` bytes pending: the uploader sends them at once (a later flush then waits
    for at most about that much of its own data), not `upload_delay` later."""
    vol = ByteVolume()
    cache = make_cache(
        vol, tmp_path, "readwrite", dirty_limit=2 * MiB, upload_delay=60, upload_batch=256 * 1024
    )
    for i in range(64):  # 256 KiB
        cache.pwrite(pattern(i, 4096), i * 4096)
    deadline = time.monotonic() + 5
    while cache.dirty_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.dirty_bytes == 0
    assert vol.flushes >= 1 and vol.groups >= 1
    cache.pwrite(pattern(99, 4096), 0)  # below the batch: waits for a flush (or 60 s)
    time.sleep(0.3)
    assert cache.dirty_bytes == 4096
    cache.close()


def test_a_write_larger_than_a_segment_goes_up_by_itself(tmp_path: Path) -> None:
    """A single entry above the group size is left to the volume, which cuts it into segments
    PUT in parallel; the small ones around it still go as groups, in journal order."""
    vol = ByteVolume(size=16 * MiB)
    cache = make_cache(vol, tmp_path, "readwrite", cache_size=32 * MiB, dirty_limit=12 * MiB)
    cache.pwrite(pattern(1, 4096), 0)
    cache.pwrite(pattern(2, 5 * MiB), 1 * MiB)
    cache.pwrite(pattern(3, 4096), 2 * MiB)  # overwrites part of the large write
    cache.flush()
    assert vol.groups == 2
    assert bytes(vol.durable) == bytes(vol.image)
    assert vol.durable[2 * MiB : 2 * MiB + 4096] == pattern(3, 4096)
    cache.close()
