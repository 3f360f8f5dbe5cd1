"""What the SeaweedFS filer's chunk size does to a `none` disk's 4 KiB random reads (issue #15,
item 6). Not a test: prints figures for docs/seaweedfs.md.

For each filer chunk size (`-maxMB` of the standalone filer; 4 MiB is SeaweedFS's default, 1 MiB
what the embedded store and scripts/seaweedfs-cluster.sh use) it starts a cluster with
scripts/seaweedfs-cluster.sh (one volume server, replication 000, so every read is one replica's
work), then:

- nbd: a real `blockstore serve` on it, a `none` data disk filled with 4 MiB writes (each one
  segment of the default 4 MiB segment size), then 4 KiB random reads at QD1 through NBD
  (libnbd) over the 64 MiB written;
- engine, seg=N: the same through `Volume.read` in this process (no NBD, no plugin), on disks
  written with segment_max_bytes N (4 MiB, the default, and 1 MiB: would smaller segments make
  the engine insensitive to the chunk size?);
- floor: ranged 4 KiB GETs of one 4 MiB and one 64 KiB object, and `probe`, what
  blockstore/store/chunkprobe.py measures at start-up.

Latency is per read (median, p99); `weed CPU` is the CPU time of every SeaweedFS process of the
cluster (utime+stime from /proc) over the reads, divided by their number; `fill` is the rate of
the 64 MiB of durable 4 MiB writes before the reads (a small sample: a hint, not a benchmark).

    .venv/bin/python bench/chunk_reads.py [--reads 2000] [--chunks 4,1]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blockstore.engine.volume import Volume, VolumeConfig  # noqa: E402
from blockstore.store.chunkprobe import probe_small_reads  # noqa: E402
from blockstore.store.retry import RetryConfig  # noqa: E402
from blockstore.store.s3 import S3Config, S3Store  # noqa: E402
from blockstore.store.stack import build_store  # noqa: E402
from tests.support.cluster import SCRIPT, start_cluster  # noqa: E402
from tests.support.servehost import ServeHost, connect  # noqa: E402

MiB, KiB = 1 << 20, 1 << 10
FILLED = 64 * MiB


def weed_cpu(cluster: Path) -> float:
    total = 0.0
    for pid_file in (cluster / "pids").glob("*.pid"):
        try:
            f = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text()
        except OSError:
            continue
        fields = f.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(cluster: Path, reads: int, read: Callable[[int], object], span: int) -> str:
    rng = random.Random(1)
    offsets = [rng.randrange(0, span // (4 * KiB)) * 4 * KiB for _ in range(reads)]
    for off in offsets[:100]:  # warm connections
        read(off)
    lat: list[float] = []
    cpu0 = weed_cpu(cluster)
    for off in offsets:
        t = time.perf_counter()
        read(off)
        lat.append(time.perf_counter() - t)
    cpu = (weed_cpu(cluster) - cpu0) / reads
    lat.sort()
    med, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    return f"{med * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {cpu * 1e3:.2f} ms"


def run(chunk_mb: int, reads: int, tmp: Path) -> list[str]:
    cluster = tmp / f"cluster-{chunk_mb}"
    env = start_cluster(cluster, "--volumes", "1", "--replication", "000", "--chunk-mb",
                        str(chunk_mb))  # fmt: skip
    cfg = S3Config(env["BLOCKSTORE_S3_ENDPOINT"], env["BLOCKSTORE_S3_BUCKET"],
                   env["BLOCKSTORE_S3_ACCESS_KEY"], env["BLOCKSTORE_S3_SECRET_KEY"])  # fmt: skip
    rows = []
    host = None
    try:
        host = ServeHost(
            tmp / f"home-{chunk_mb}", endpoint=cfg.endpoint, bucket=cfg.bucket, prefix="nbd/",
            access_key=cfg.access_key, secret_key=cfg.secret_key, retry_seconds=30,
        ).start()  # fmt: skip
        host.ok("POST", "/v1/disks", {"name": "c1", "size_bytes": 256 * MiB, "kind": "data"})
        att = host.ok("POST", "/v1/disks/c1/attach", {"vm": "bench"})
        h = connect(att["socket"])
        t0 = time.perf_counter()
        for off in range(0, FILLED, 4 * MiB):
            h.pwrite(os.urandom(4 * MiB), off)
        fill = FILLED / MiB / (time.perf_counter() - t0)
        figures = timed(cluster, reads, lambda o: h.pread(4 * KiB, o), FILLED)
        rows.append(f"| {chunk_mb} MiB | nbd (blockstore serve, `none`) | {figures} | {fill:.0f} |")
        h.shutdown()
        host.stop()
        host = None

        store = build_store(S3Config(**{**cfg.__dict__, "prefix": "engine/"}),
                            RetryConfig(deadline_seconds=30))  # fmt: skip
        for seg in (4 * MiB, 1 * MiB):
            name = f"seg{seg // MiB}"
            Volume.create(store, name, 256 * MiB)
            v = Volume.open(
                store, name, config=VolumeConfig(segment_max_bytes=seg, gc_interval_seconds=0)
            )
            t0 = time.perf_counter()
            for off in range(0, FILLED, 4 * MiB):
                v.write(off, os.urandom(4 * MiB), durable=True)
            fill = FILLED / MiB / (time.perf_counter() - t0)
            figures = timed(cluster, reads, lambda o, v=v: v.read(o, 4 * KiB), FILLED)
            rows.append(f"| {chunk_mb} MiB | engine, segments of {seg // MiB} MiB | {figures} "
                        f"| {fill:.0f} |")  # fmt: skip
            v.close()
        store.close()

        raw = S3Store(S3Config(**{**cfg.__dict__, "prefix": "floor/"}))
        raw.put("big", os.urandom(4 * MiB))
        raw.put("small", os.urandom(64 * KiB))
        for key, size in (("big", 4 * MiB), ("small", 64 * KiB)):
            rows.append(
                f"| {chunk_mb} MiB | floor: ranged GET of a {size // KiB} KiB object | "
                f"{timed(cluster, reads, lambda o, k=key: raw.get(k, o, 4 * KiB), size)} | |"
            )
        raw.close()
        probe = probe_small_reads(S3Store(cfg))
        rows.append(f"| {chunk_mb} MiB | start-up probe | {probe} | | | |")
    finally:
        if host is not None:
            host.stop()
        subprocess.run([str(SCRIPT), "stop", str(cluster)], check=False)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--chunks", default="4,1")
    a = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, blockstore {rev}, "
          f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"{a.reads} reads of 4 KiB at QD1 per row")  # fmt: skip
    print("| filer chunks | reader | median | p99 | weed CPU per read | fill MB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="chunk-reads-") as tmp:
        for mb in (int(x) for x in a.chunks.split(",")):
            for row in run(mb, a.reads, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
