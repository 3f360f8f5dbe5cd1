"""One blockstore export, a few fio jobs, and the CPU its nbdkit spent per request: the quick
before/after probe behind the host-cache rows of docs/cache-measurements.md (not a test).

    .venv/bin/python bench/export_probe.py [--mode readwrite] [--jobs writes|reads] [--seconds 5]

Starts a throw-away embedded SeaweedFS, creates a 256 MiB disk, serves it in `--mode`, writes a
32 MiB area once (1 MiB writes) and reads it once (so reads are warm), then runs each job for
`--seconds` over that area: `writes` is 4 KiB randwrite QD1 twice, 1 MiB write QD4, 4 KiB
randread QD1 and QD16; `reads` is 4 KiB randread QD1 and QD16, twice. Per job it prints fio's
median latency, IOPS and MB/s, and nbdkit's user+system CPU over the job divided by the
requests fio counted. Run it on a quiet machine, before and after a change (`git stash`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import process_cpu_seconds
from blockstore.engine.volume import Volume
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.host.export import Export, ExportConfig
from blockstore.store.s3 import S3Config, S3Store
from blockstore.store.stack import build_store

MiB = 1 << 20
JOBS = {
    "writes": [("randwrite", "4k", 1), ("randwrite", "4k", 1), ("write", "1M", 4),
               ("randread", "4k", 1), ("randread", "4k", 16)],
    "reads": [("randread", "4k", 1), ("randread", "4k", 16)] * 2,
}  # fmt: skip


def fio(uri: str, rw: str, bs: str, qd: int, seconds: float) -> dict[str, float]:
    cmd = ["fio", "--name=probe", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", "--size=32M", "--output-format=json", "--randrepeat=0",
           "--norandommap", "--lat_percentiles=1"]  # fmt: skip
    if seconds:
        cmd += ["--time_based", f"--runtime={seconds}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {
        "median_us": side["lat_ns"]["percentile"]["50.000000"] / 1000,
        "iops": side["iops"],
        "mbps": side["bw_bytes"] / 1e6,
        "ios": side["total_ios"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="readwrite", choices=["none", "readonly", "readwrite"])
    ap.add_argument("--jobs", default="writes", choices=sorted(JOBS))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bsprobe-"))
    creds = Credentials("probe" + os.urandom(4).hex(), os.urandom(20).hex())
    weed = EmbeddedSeaweed(work / "weed", creds)
    weed.start()
    try:
        s3 = S3Config(weed.endpoint, "probe", creds.access_key, creds.secret_key)
        S3Store(s3).ensure_bucket()
        store = build_store(s3)
        Volume.create(store, "d", 256 * MiB)
        store.close()
        cache = None if args.mode == "none" else work / "cache"
        cfg = ExportConfig("d", work / "d.sock", s3, cache_mode=args.mode, cache_dir=cache)
        export = Export(cfg).start()
        fio(export.uri, "write", "1M", 4, 0)
        fio(export.uri, "read", "1M", 4, 0)
        for rw, bs, qd in JOBS[args.jobs]:
            cpu0 = process_cpu_seconds(export.pid) or 0.0
            got = fio(export.uri, rw, bs, qd, args.seconds)
            cpu = (process_cpu_seconds(export.pid) or 0.0) - cpu0
            print(f"{rw} {bs} QD{qd}: median {got['median_us']:.0f} us, {got['iops']:,.0f} IOPS, "
                  f"{got['mbps']:.0f} MB/s, nbdkit CPU {cpu * 1e6 / max(got['ios'], 1):.0f} us "
                  "per request", flush=True)  # fmt: skip
        export.stop()
    finally:
        weed.stop()
        time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
