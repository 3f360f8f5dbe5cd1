"""What a retention window costs: store bytes and requests per hour of window, under a steady
workload, against the same workload without one (issue #19). Not a test: prints a table.

    .venv/bin/python bench/retention_cost.py [--hours 1.5] [--window-minutes 30]

Runs the real engine (Volume, its commit pipeline, checkpoints and GC every 60 s with their
default ages) on the in-memory store with a fake clock, so hours of steady writing take a
minute; the store's request and byte counters are the ones an S3 store keeps. Two workloads:
4 KiB random writes over a 256 MiB disk at 50 writes/s with a flush every 64 writes, and 1 MiB
sequential writes over the disk at one every 2 s, each flushed. Each runs with the window and
without; "extra per hour of window" is the difference in bytes stored at the end divided by
the window's length in hours (at steady state the window holds that much more).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass

from blockstore.clock import FakeClock
from blockstore.engine.points import LogListing, write_retention
from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.store.memory import MemoryStore

KiB, MiB = 1 << 10, 1 << 20
DISK = 256 * MiB


@dataclass
class Result:
    stored: int
    puts: int
    gets: int
    lists: int
    deletes: int
    points: int


Step = Callable[[Volume, random.Random, int], None]


def small_random(v: Volume, rng: random.Random, i: int) -> None:
    v.write(rng.randrange(DISK // (4 * KiB)) * 4 * KiB, rng.randbytes(4 * KiB))
    if i % 64 == 63:
        v.flush()


def big_sequential(v: Volume, rng: random.Random, i: int) -> None:
    v.write((i * MiB) % DISK, rng.randbytes(MiB))
    v.flush()


def run(step: Step, per_second: float, hours: float, window: int) -> Result:
    clock = FakeClock()
    store = MemoryStore(clock)
    Volume.create(store, "d", DISK)
    if window:
        write_retention(store, "d", window)
    v = Volume.open(store, "d", config=VolumeConfig(gc_interval_seconds=0), clock=clock)
    rng = random.Random(1)
    gap, next_gc = 1.0 / per_second, 60.0
    elapsed = 0.0
    for i in range(int(hours * 3600 * per_second)):
        step(v, rng, i)
        clock.advance(gap)
        elapsed += gap
        if elapsed >= next_gc:
            v.gc()
            next_gc += 60.0
    v.flush()
    v.gc()
    points = len(LogListing.read(store, "d").points("d"))
    s = store.stats
    stored = sum(o.size for o in store.list("disks/d/"))
    v.close()
    return Result(stored, s.puts, s.gets, s.lists, s.deletes, points)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=1.5)
    ap.add_argument("--window-minutes", type=float, default=30.0)
    args = ap.parse_args()
    window = int(args.window_minutes * 60)
    print(f"{args.hours} h of steady writes per row, window {args.window_minutes:g} min, "
          "GC every 60 s; requests per hour over the whole run")  # fmt: skip
    print("| workload | window | stored at end | PUTs/h | GETs/h | LISTs/h | DELETEs/h | "
          "restore points | extra stored per hour of window |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    workloads: list[tuple[str, Step, float]] = [
        ("4 KiB random, flush every 64, 50 writes/s", small_random, 50.0),
        ("1 MiB sequential, each flushed, 0.5 MiB/s", big_sequential, 0.5),
    ]
    for name, step, rate in workloads:
        base = run(step, rate, args.hours, 0)
        kept = run(step, rate, args.hours, window)
        for label, r in (("off", base), (f"{args.window_minutes:g} min", kept)):
            extra = ""
            if r is kept:
                extra = f"{(kept.stored - base.stored) / MiB / (window / 3600):,.0f} MiB"
            h = args.hours
            print(f"| {name} | {label} | {r.stored / MiB:,.0f} MiB | {r.puts / h:,.0f} | "
                  f"{r.gets / h:,.0f} | {r.lists / h:,.0f} | {r.deletes / h:,.0f} | "
                  f"{r.points:,} | {extra} |")  # fmt: skip


if __name__ == "__main__":
    main()
