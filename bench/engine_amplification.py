"""Write and space amplification of the volume engine, and open (recovery) time.

Not a test: prints figures for the issue note. Runs on the in-memory store by default, or on a
real S3 endpoint with --endpoint (requests and bytes then come from the same counters).

    .venv/bin/python bench/engine_amplification.py
    .venv/bin/python bench/engine_amplification.py --endpoint http://127.0.0.1:8333 \
        --bucket b --access-key K --secret-key S --scale 0.25

Figures:
- requests / GiB and bytes uploaded / GiB written: every store call the engine made (segment
  PUTs, fence PUTs at open, checkpoint PUTs, listings) divided by the GiB the caller wrote;
  uploaded/written is the write amplification in bytes (headers, checksums, checkpoints).
- stored / live after GC: bytes of every object of the disk over the bytes the map references,
  after random overwrite of 4x the disk and GC passes with the min age elapsed (fake clock).
- fragmented read: GETs per MiB of a sequential read of a region written sequentially, then
  mostly rewritten by 4 KiB writes in random order, before and after GC lays it out again.
- open time: a read-only open of a disk with 10,000 segments, replayed from the start (no
  checkpoint) vs from a checkpoint.
- per caching mode (issue #21): the same 4 KiB random writes with a flush every 64, through
  the host cache (`HostCache` over the engine, as the plugin runs it): PUTs and bytes
  uploaded per GiB written and PUTs per flush; `readwrite` also with `upload_delay` 5 ms
  (uploading between flushes, the old default) for the trade-off.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from blockstore.cache.hostcache import HostCache, HostCacheConfig
from blockstore.clock import FakeClock
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.store.base import ObjectStore
from blockstore.store.memory import MemoryStore

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _requests(store: ObjectStore) -> tuple[int, int]:
    s = store.stats
    return s.gets + s.puts + s.heads + s.lists + s.deletes, s.bytes_uploaded


def random_4k(make: Callable[[], ObjectStore], total: int, disk: int) -> None:
    store = make()
    Volume.create(store, "bench", disk)
    v = Volume.open(store, "bench", config=VolumeConfig(gc_interval_seconds=0))
    rng = random.Random(1)
    block = rng.randbytes(4096)
    r0, b0 = _requests(store)
    t0 = time.monotonic()
    for i in range(total // 4096):
        v.write(rng.randrange(disk // 4096) * 4096, block)
        if i % 64 == 63:
            v.flush()
    v.flush()
    dt = time.monotonic() - t0
    r1, b1 = _requests(store)
    v.close()
    gib = total / GiB
    print(
        f"4 KiB random writes, flush every 64 ({total // MiB} MiB): "
        f"{(r1 - r0) / gib:,.0f} requests/GiB, {(b1 - b0) / gib / GiB:.3f} GiB uploaded/GiB, "
        f"{v.stats.segments_written} segments, {total / 4096 / dt:,.0f} writes/s"
    )


def per_mode(make: Callable[[], ObjectStore], total: int, disk: int) -> None:
    """4 KiB random writes, a flush every 64, through the host cache in each caching mode."""
    variants = [("none", {}), ("readonly", {}), ("readwrite", {}),
                ("readwrite", {"upload_delay": 0.005})]  # fmt: skip
    for mode, extra in variants:
        store = make()
        Volume.create(store, "bench", disk)
        v = Volume.open(store, "bench", config=VolumeConfig(gc_interval_seconds=0))
        with tempfile.TemporaryDirectory(prefix="amp-cache-") as d:
            cfg = HostCacheConfig(mode=mode, cache_size=disk, dirty_limit=disk // 4, **extra)
            cache = HostCache(v, cfg, Path(d))
            rng = random.Random(1)
            block = rng.randbytes(4096)
            p0, b0 = store.stats.puts, store.stats.bytes_uploaded
            t0 = time.monotonic()
            for i in range(total // 4096):
                cache.pwrite(block, rng.randrange(disk // 4096) * 4096)
                if i % 64 == 63:
                    cache.flush()
            cache.flush()
            dt = time.monotonic() - t0
            puts, sent = store.stats.puts - p0, store.stats.bytes_uploaded - b0
            cache.close()
        v.close()
        gib, flushes = total / GiB, total // 4096 // 64
        label = mode + "".join(f", {k} {val:g} s" for k, val in extra.items())
        print(
            f"{label}: 4 KiB random writes, flush every 64 ({total // MiB} MiB): "
            f"{puts / gib:,.0f} PUTs/GiB ({puts / flushes:.2f} per flush), "
            f"{sent / gib / GiB:.3f} GiB uploaded/GiB, {total / 4096 / dt:,.0f} writes/s"
        )


def sequential_1m(make: Callable[[], ObjectStore], total: int) -> None:
    store = make()
    Volume.create(store, "bench", total)
    v = Volume.open(store, "bench", config=VolumeConfig(gc_interval_seconds=0))
    data = random.Random(2).randbytes(MiB)
    r0, b0 = _requests(store)
    t0 = time.monotonic()
    for i in range(total // MiB):
        v.write(i * MiB, data)
    v.flush()
    dt = time.monotonic() - t0
    r1, b1 = _requests(store)
    v.close()
    gib = total / GiB
    print(
        f"1 MiB sequential writes ({total // MiB} MiB): "
        f"{(r1 - r0) / gib:,.0f} requests/GiB, {(b1 - b0) / gib / GiB:.3f} GiB uploaded/GiB, "
        f"{total / MiB / dt:,.0f} MiB/s"
    )


def space_after_gc(make: Callable[[], ObjectStore], disk: int) -> None:
    store = make()
    clock = FakeClock()
    Volume.create(store, "bench", disk)
    v = Volume.open(store, "bench", config=VolumeConfig(gc_interval_seconds=0), clock=clock)
    rng = random.Random(3)
    block = rng.randbytes(4096)
    for i in range(4 * disk // 4096):  # overwrite the disk 4x at random
        v.write(rng.randrange(disk // 4096) * 4096, block)
        if i % 64 == 63:
            v.flush()
    v.flush()
    before = v.stored_bytes() / v.live_bytes()
    for _ in range(3):
        v.gc()
        clock.advance(v.config.gc_min_age_seconds + 1)
    v.gc()
    after = v.stored_bytes() / v.live_bytes()
    print(
        f"space, 4 KiB random overwrite of 4x a {disk // MiB} MiB disk: stored/live "
        f"{before:.2f} before GC, {after:.2f} after GC "
        f"({v.stats.gc_bytes_rewritten / MiB:.1f} MiB rewritten by compaction)"
    )
    v.close()


def fragmented_read(make: Callable[[], ObjectStore], region: int) -> None:
    """GETs per MiB of a sequential read of a region written sequentially, then three quarters
    of it overwritten by durable 4 KiB writes in random order (one segment each), before and
    after a GC pass rewrites it; and what that pass fetched."""
    store = make()
    Volume.create(store, "bench", 4 * region)
    cfg = VolumeConfig(gc_interval_seconds=0, gc_merge_min_age_seconds=0)  # merge at once
    v = Volume.open(store, "bench", config=cfg)
    v.write(0, bytes(region))
    block = bytes(4096)
    blocks = region // 4096
    for b in random.Random(5).sample(range(blocks), blocks * 3 // 4):
        v.write(b * 4096, block, durable=True)

    def gets_per_mib() -> float:
        r = Volume.open(store, "bench", writable=False, config=cfg)
        before = r.stats.gets
        for off in range(0, region, MiB):  # as a VM reads: 1 MiB requests
            r.read(off, MiB)
        n = r.stats.gets - before
        r.close()
        return n / (region / MiB)

    before = gets_per_mib()
    fetched = v.stats.bytes_fetched
    gets = v.stats.gets
    v.gc()
    after = gets_per_mib()
    print(
        f"fragmented read, {region // MiB} MiB written sequentially, 3/4 of it then rewritten "
        f"by 4 KiB durable writes in random order: {before:,.1f} GETs per MiB read before GC, "
        f"{after:,.1f} after (the pass: {v.stats.gets - gets:,} GETs, "
        f"{(v.stats.bytes_fetched - fetched) / MiB:.1f} MiB fetched, "
        f"{v.stats.gc_bytes_rewritten / MiB:.1f} MiB rewritten)"
    )
    v.close()


def open_time(make: Callable[[], ObjectStore], segments: int) -> None:
    store = make()
    Volume.create(store, "bench", 64 * MiB)
    cfg = VolumeConfig(gc_interval_seconds=0, checkpoint_every_segments=1 << 30)
    v = Volume.open(store, "bench", config=cfg)
    block = bytes(4096)
    rng = random.Random(4)
    for _ in range(segments):
        v.write(rng.randrange(64 * MiB // 4096) * 4096, block, durable=True)  # one segment each
    v.abandon()  # no checkpoint on the way out
    t0 = time.monotonic()
    r = Volume.open(store, "bench", writable=False, config=cfg)
    t_replay = time.monotonic() - t0
    replayed = r.stats.segments_replayed
    w = Volume.open(store, "bench", config=cfg)
    w.checkpoint()
    w.close()
    t0 = time.monotonic()
    r2 = Volume.open(store, "bench", writable=False, config=cfg)
    t_ckpt = time.monotonic() - t0
    print(
        f"open, {segments:,} segments: {t_replay:.2f} s replaying {replayed:,} segments "
        f"with no checkpoint, {t_ckpt * 1000:.1f} ms from a checkpoint "
        f"({r2.stats.gets} GETs, {r2.stats.segments_replayed} replayed)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint")
    ap.add_argument("--bucket", default="blockstore-bench")
    ap.add_argument("--access-key", default="")
    ap.add_argument("--secret-key", default="")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply data volumes")
    ap.add_argument("--segments", type=int, default=10_000)
    args = ap.parse_args()

    if args.endpoint:
        from blockstore.store.s3 import S3Config, S3Store

        def make() -> ObjectStore:
            return S3Store(
                S3Config(
                    endpoint=args.endpoint,
                    bucket=args.bucket,
                    access_key=args.access_key,
                    secret_key=args.secret_key,
                    prefix=f"bench-{uuid.uuid4().hex[:8]}/",
                )
            )

        where = args.endpoint
    else:
        make = MemoryStore
        where = "MemoryStore"
    print(f"store: {where}; VolumeConfig defaults: {VolumeConfig()}")
    s = args.scale
    random_4k(make, int(64 * MiB * s) // 4096 * 4096, 256 * MiB)
    sequential_1m(make, max(MiB, int(256 * MiB * s) // MiB * MiB))
    space_after_gc(make, max(MiB, int(32 * MiB * s) // MiB * MiB))
    fragmented_read(make, max(MiB, int(32 * MiB * s) // MiB * MiB))
    open_time(make, args.segments)
    per_mode(make, max(MiB, int(16 * MiB * s) // MiB * MiB), 256 * MiB)


if __name__ == "__main__":
    main()
