"""Plain, encrypted and compressed disks measured in interleaved rounds on one store (issue #20).
Not a test: prints one line per round and the medians.

    .venv/bin/python bench/variant_ab.py [--variants plain,encrypted,zstd] [--rounds 5]

Why interleaved: on this 2-core machine the embedded SeaweedFS's PUT latency drifts by 20-30%
within minutes, and the bench suite measures its targets one after another, minutes apart, so
a variant's cost there carries that drift. Here every variant's export runs at once over the
same store and the jobs alternate, a few seconds each: durable 4 KiB random writes at QD1
(caching `none`: each is one PUT; fio's median completion latency) and 1 MiB sequential reads
at QD4 (no cache: every read fetches), over a 64 MiB area written once with 1 MiB writes.
"""

from __future__ import annotations

import argparse
import json
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
VARIANTS = {  # name -> (encrypted, compression)
    "plain": (False, "none"),
    "encrypted": (True, "none"),
    "zstd": (False, "zstd"),
    "zstd+encrypted": (True, "zstd"),
}


def fio(uri: str, rw: str, bs: str, qd: int, seconds: float) -> tuple[float, float]:
    """(median completion latency in us, MB/s) of one fio job over NBD."""
    cmd = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", "--size=64M", "--output-format=json"]  # fmt: skip
    if seconds:
        cmd += ["--time_based", f"--runtime={seconds}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write"] if job["write"]["total_ios"] else job["read"]
    p50 = side["clat_ns"].get("percentile", {}).get("50.000000", 0)
    return p50 / 1000, side["bw_bytes"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="plain,encrypted,zstd")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    names = args.variants.split(",")
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="variant-ab-") as t:
        work = Path(t)
        set_provider(LocalKeyFile(work / "kek"))
        server = EmbeddedSeaweed(work / "weed", Credentials("benchkey", "bench-secret-not-real"))
        server.start()
        exports: dict[str, Export] = {}
        try:
            s3 = S3Config(server.endpoint, "bench", "benchkey", "bench-secret-not-real")
            S3Store(s3).ensure_bucket()
            for n in names:
                enc, codec = VARIANTS[n]
                s3n = replace(s3, prefix=f"{n.replace('+', '-')}/")
                store = build_store(s3n)
                Volume.create(store, "d", 256 * MiB, encrypt=enc, compression=codec)
                store.close()
                exports[n] = Export(ExportConfig(
                    disk_id="d", socket=work / f"{n.replace('+', '-')}.sock", s3=s3n,
                    extra_env={contract.ENV_KEK_DIR: str(work / "kek")},
                )).start()  # fmt: skip
                fio(exports[n].uri, "write", "1M", 4, 0)
            for r in range(args.rounds):
                for n in names:
                    lat, _ = fio(exports[n].uri, "randwrite", "4k", 1, args.seconds)
                    _, mbps = fio(exports[n].uri, "read", "1M", 4, args.seconds)
                    results[n].append((lat, mbps))
                    line = f"round {r} {n:15} 4k durable write {lat:6.0f} us"
                    print(f"{line}  1M read {mbps:5.0f} MB/s", flush=True)
        finally:
            for e in exports.values():
                e.stop()
            server.stop()
    base_lat = statistics.median(x[0] for x in results[names[0]])
    base_mbps = statistics.median(x[1] for x in results[names[0]])
    print(f"| disk | 4 KiB durable write (median of {args.rounds} rounds) | cost | "
          "1 MiB read QD4 | cost |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for n in names:
        lat = statistics.median(x[0] for x in results[n])
        mbps = statistics.median(x[1] for x in results[n])
        print(f"| {n} | {lat / 1000:.2f} ms | {lat / base_lat:.2f}x | {mbps:.0f} MB/s | "
              f"{base_mbps / mbps:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
