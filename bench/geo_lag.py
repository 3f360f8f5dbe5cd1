"""Replication lag (the RPO a grs disk shows) under steady write loads, and the time to fail over.

Not a test: prints figures for the issue note. Starts two SeaweedFS servers (`weed mini`, the
primary and the secondary region) on 127.0.0.1 in a temporary directory, writes to a volume on
the primary through the `Volume` API (no NBD: the engine's own write path), and runs the product's
replicator (`DiskReplicator` with the default `ReplicationConfig`: a pass every 0.5 s, 4 copies
at once) in a thread, as `ReplicationService` does in the API process.

    .venv/bin/python bench/geo_lag.py [--seconds 20]

Figures, sampled every 0.25 s while the load runs:
- lag seconds and bytes, measured as GET /v1/disks/{name} and /metrics do (blockstore/geo/lag.py):
  the age of the oldest segment in the primary's log that the secondary does not hold, and the
  size of all of them.
- failover, planned: fence the primary (writable open + abandon), drain the rest, cut the
  secondary's log at its frontier, open it writable (new epoch, fences).
- failover, primary unreachable (SIGSTOP): cut and open on the secondary only; the time the
  caller spends noticing the outage (the store retry deadline, 30 s by default) is not included.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.geo.config import ReplicationConfig
from blockstore.geo.frontier import trim_after_frontier
from blockstore.geo.lag import measure
from blockstore.geo.replicator import DiskReplicator
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.store.retry import RetryConfig, RetryingStore
from blockstore.store.s3 import S3Config, S3Store

KiB, MiB = 1024, 1024 * 1024
BUCKET = "geo-bench"


def start(tmp: Path) -> tuple[EmbeddedSeaweed, S3Config]:
    creds = Credentials("benchkey", "bench-secret-not-real")
    server = EmbeddedSeaweed(tmp, creds)
    server.start()
    cfg = S3Config(server.endpoint, BUCKET, creds.access_key, creds.secret_key)
    raw = S3Store(cfg)
    raw.ensure_bucket()
    raw.close()
    return server, cfg


def store(cfg: S3Config, deadline: float = 30.0) -> RetryingStore:
    return RetryingStore(S3Store(cfg), RetryConfig(deadline_seconds=deadline))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_load(
    name: str, primary: RetryingStore, secondary: RetryingStore, seconds: float
) -> dict[str, float]:
    disk = f"{name}-{os.getpid()}"
    size = 1 << 30
    Volume.create(primary, disk, size)
    vol = Volume.open(primary, disk, config=VolumeConfig(gc_interval_seconds=0))
    rep = DiskReplicator(primary, secondary, disk, config=ReplicationConfig())
    stop = threading.Event()
    written = [0]

    def replicate() -> None:
        while not stop.is_set():
            rep.run_once()
            stop.wait(rep.config.interval_seconds)

    def load() -> None:
        rng = random.Random(1)
        n = 0
        if name == "rand4k":
            buf = os.urandom(4 * KiB)
            while not stop.is_set():
                vol.write(rng.randrange(size // (4 * KiB)) * 4 * KiB, buf)
                n += 1
                written[0] += len(buf)
                if n % 64 == 0:
                    vol.flush()
        else:
            buf = os.urandom(MiB)
            off = 0
            while not stop.is_set():
                vol.write(off, buf)
                off = (off + MiB) % size
                written[0] += len(buf)
                n += 1
                if n % 16 == 0:
                    vol.flush()

    threads = [threading.Thread(target=replicate), threading.Thread(target=load)]
    for t in threads:
        t.start()
    lags, lag_bytes = [], []
    t0 = time.monotonic()
    time.sleep(2.0)  # let the first passes seed
    while time.monotonic() - t0 < seconds:
        lag = measure(primary, secondary, disk, known=rep.stats.frontier_seq)
        lags.append(lag.seconds(time.time()))
        lag_bytes.append(float(lag.pending_bytes))
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join()
    vol.flush()
    # planned failover: fence the primary, drain, cut, open writable on the secondary
    f0 = time.monotonic()
    Volume.open(primary, disk, config=VolumeConfig(gc_interval_seconds=0)).abandon()
    rep.catch_up(max_passes=50)
    trim_after_frontier(secondary, disk)
    Volume.open(secondary, disk, config=VolumeConfig(gc_interval_seconds=0)).close()
    planned = time.monotonic() - f0
    vol.abandon()
    rep.close()
    return {
        "MB/s written": written[0] / elapsed / 1e6,
        "lag s median": statistics.median(lags),
        "lag s p95": pct(lags, 0.95),
        "lag s worst": max(lags),
        "lag MiB median": statistics.median(lag_bytes) / MiB,
        "lag MiB worst": max(lag_bytes) / MiB,
        "failover planned s": planned,
    }


def unplanned_failover(
    server: EmbeddedSeaweed, primary: RetryingStore, secondary: RetryingStore
) -> float:
    disk = f"unplanned-{os.getpid()}"
    Volume.create(primary, disk, 1 << 30)
    vol = Volume.open(primary, disk, config=VolumeConfig(gc_interval_seconds=0))
    buf = os.urandom(4 * KiB)
    for i in range(2048):
        vol.write(i * 4 * KiB, buf)
    vol.flush()
    rep = DiskReplicator(primary, secondary, disk)
    rep.catch_up()
    rep.close()
    server.pause()
    try:
        f0 = time.monotonic()
        trim_after_frontier(secondary, disk)
        Volume.open(secondary, disk, config=VolumeConfig(gc_interval_seconds=0)).close()
        took = time.monotonic() - f0
    finally:
        server.resume()
    vol.abandon()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geo-bench-") as tmp:
        a, acfg = start(Path(tmp) / "primary")
        b, bcfg = start(Path(tmp) / "secondary")
        try:
            primary, secondary = store(acfg), store(bcfg)
            for name in ("rand4k", "seq1m"):
                res = run_load(name, primary, secondary, args.seconds)
                label = (
                    "4 KiB random writes, flush every 64"
                    if name == "rand4k"
                    else "1 MiB sequential writes, flush every 16"
                )
                print(f"{label} ({args.seconds:.0f} s, QD1, Volume API):")
                for k, v in res.items():
                    print(f"  {k:22s} {v:10.3f}")
            took = unplanned_failover(a, primary, secondary)
            print(f"failover with the primary SIGSTOPped: {took:.3f} s")
            primary.close()
            secondary.close()
        finally:
            a.stop()
            b.stop()


if __name__ == "__main__":
    main()
