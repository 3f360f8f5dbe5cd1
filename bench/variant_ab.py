"""Plain, encrypted, compressed and QoS-capped disks measured in interleaved rounds on one store
(issues #20, #21).
Not a test: prints one line per job and the medians.

    .venv/bin/python bench/variant_ab.py [--mode none|readwrite] [--variants plain,encrypted]
                                         [--rounds 9] [--seconds 5]

Why interleaved: on this 2-core machine the embedded SeaweedFS's PUT latency drifts by 20-30%
within minutes, and the bench suite measures its targets one after another, minutes apart, so
a variant's cost there carries that drift. Here each round runs every variant's jobs back to
back, a few seconds each, in an order that alternates from round to round (so a trend within
a round favours neither), and the cost is the median over rounds of each round's own ratio to
the plain disk (paired: what drifts between rounds cancels).

The jobs, on one export per disk started afresh every round (an empty host cache):
- durable 4 KiB random writes at QD1: caching `none` acknowledges each one in the store (one
  PUT); `readwrite` sends a flush after each (fio --fsync=1). fio's median completion latency
  (`readwrite`: plus its flushes' median, as the bench report counts a write made durable).
- cold 1 MiB sequential reads at QD4, one pass over the 256 MiB written at setup with 1 MiB
  writes: every read fetches from the store (`readwrite`: and fills the host cache).
- CPU: nbdkit's user+system time (from /proc) per MiB of each job, the client cost the issue
  asks for (the write job's includes what the process does before the read job starts: its
  uploads); the store's CPU is the same for every variant but compressed ones (fewer bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockstore.crypto.disk import set_provider
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.engine.volume import Volume
from blockstore.host import contract
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.host.export import Export, ExportConfig
from blockstore.store.s3 import S3Config, S3Store
from blockstore.store.stack import build_store

MiB = 1 << 20
AREA = "256M"
VARIANTS = {  # name -> (encrypted, compression, QoS caps)
    "plain": (False, "none", {}),
    "encrypted": (True, "none", {}),
    "zstd": (False, "zstd", {}),
    "zstd+encrypted": (True, "zstd", {}),
    # The bench's capped targets (BENCH_QOS): what a cap costs a disk running below it (its
    # 4 KiB writes); its cold reads are held to 40 MB/s, so their ratio says nothing.
    "capped": (False, "none", {"iops_limit": 500, "mbps_limit": 40}),
}


def fio(uri: str, args: list[str]) -> dict:
    """fio's job record: its write side for a write job (with the job's `sync`: its flushes),
    else its read side."""
    cmd = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--size={AREA}",
           "--output-format=json", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    return {**job["write"], "sync": job["sync"]} if job["write"]["total_ios"] else job["read"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Disk:
    """One variant's disk and how to serve it, with a fresh cache each time."""

    def __init__(self, name: str, work: Path, s3: S3Config, mode: str) -> None:
        enc, codec, qos = VARIANTS[name]
        self.name, self.slug = name, name.replace("+", "-")
        self.s3 = replace(s3, prefix=f"{self.slug}/")
        store = build_store(self.s3)
        Volume.create(store, "d", 1024 * MiB, encrypt=enc, compression=codec)
        store.close()
        self.cache = work / f"{self.slug}.cache"
        sock = work / f"{self.slug}.sock"
        contract.write_qos(contract.qos_path(sock), qos)
        self.config = ExportConfig(
            disk_id="d", socket=sock, s3=self.s3, cache_mode=mode,
            cache_dir=self.cache if mode != "none" else None,
            extra_env={contract.ENV_KEK_DIR: str(work / "kek"),
                       contract.ENV_QOS_FILE: str(contract.qos_path(sock))},
        )  # fmt: skip

    def start(self) -> Export:
        shutil.rmtree(self.cache, ignore_errors=True)
        return Export(self.config).start()


Result = tuple[float, float, float, float]


def one_round(disk: Disk, mode: str, seconds: float) -> Result:
    """(4 KiB durable write p50 us, cold 1 MiB read MB/s, nbdkit CPU ms per MiB of each)."""
    exp = disk.start()
    try:
        assert exp.process is not None
        cpu0 = cpu_seconds(exp.process.pid)
        sync = ["--fsync=1"] if mode != "none" else []
        w = fio(exp.uri, ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--time_based",
                          f"--runtime={seconds}", *sync])  # fmt: skip
        cpu1 = cpu_seconds(exp.process.pid)
        r = fio(exp.uri, ["--rw=read", "--bs=1M", "--iodepth=4"])
        cpu2 = cpu_seconds(exp.process.pid)
    finally:
        exp.stop()
    p50 = w["clat_ns"]["percentile"]["50.000000"] / 1000
    if mode != "none":  # durable once its flush returns: as the bench report, write + flush
        p50 += w["sync"]["lat_ns"]["percentile"]["50.000000"] / 1000
    w_cpu = (cpu1 - cpu0) * 1000 / (w["io_bytes"] / MiB)
    return p50, r["bw_bytes"] / 1e6, w_cpu, (cpu2 - cpu1) * 1000 / (r["io_bytes"] / MiB)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("none", "readwrite"), default="none")
    ap.add_argument("--variants", default="plain,encrypted")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    names = args.variants.split(",")
    results: dict[str, list[Result]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="variant-ab-") as t:
        work = Path(t)
        set_provider(LocalKeyFile(work / "kek"))
        server = EmbeddedSeaweed(work / "weed", Credentials("benchkey", "bench-secret-not-real"))
        server.start()
        try:
            s3 = S3Config(server.endpoint, "bench", "benchkey", "bench-secret-not-real")
            S3Store(s3).ensure_bucket()
            disks = [Disk(n, work, s3, args.mode) for n in names]
            for d in disks:
                exp = d.start()
                try:
                    fio(exp.uri, ["--rw=write", "--bs=1M", "--iodepth=4", "--end_fsync=1"])
                finally:
                    exp.stop()
            for r in range(args.rounds):
                for d in disks if r % 2 == 0 else disks[::-1]:
                    got = one_round(d, args.mode, args.seconds)
                    results[d.name].append(got)
                    print(f"round {r} {d.name:15} 4k durable write {got[0]:6.0f} us  "
                          f"cold 1M read {got[1]:5.0f} MB/s  CPU/MiB {got[2]:5.1f} / "
                          f"{got[3]:4.2f} ms",
                          flush=True)  # fmt: skip
        finally:
            server.stop()
    report(args.mode, names, results)


def report(mode: str, names: list[str], results: dict[str, list[Result]]) -> None:
    """Medians, and the median of each round's ratio to the first variant (paired)."""
    base = results[names[0]]
    print(
        f"\ncaching {mode}, {len(base)} rounds; cost = median over rounds of the round's "
        f"ratio to {names[0]} (latency: variant / {names[0]}; MB/s: {names[0]} / variant)"
    )
    print("| disk | 4 KiB durable write p50 | cost | CPU/MiB | cold 1 MiB read | cost | CPU/MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rows = results[n]
        lat_cost = statistics.median(x[0] / b[0] for x, b in zip(rows, base, strict=True))
        rd_cost = statistics.median(b[1] / x[1] for x, b in zip(rows, base, strict=True))
        lat, mbps, w_cpu, r_cpu = (statistics.median(x[i] for x in rows) for i in range(4))
        print(f"| {n} | {lat / 1000:.2f} ms | {lat_cost:.2f}x | {w_cpu:.1f} ms | {mbps:.0f} MB/s "
              f"| {rd_cost:.2f}x | {r_cpu:.2f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
