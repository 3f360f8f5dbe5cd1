"""What each part of the embedded store's security costs a 4 KiB read (issue #15, item 9).

Not a test: prints figures for docs/seaweedfs.md. Starts the embedded SeaweedFS
(blockstore/host/embedded.py, `weed mini`) once per variant of its `security.toml`, PUTs one 4 MiB
object and times ranged 4 KiB GETs at random offsets through the S3 endpoint (S3Store, QD1),
with the CPU time `weed` spent per GET:

- open: no security.toml (what the embedded store did before);
- jwt: only the JWT signing keys (volume server and filer, reads and writes);
- grpc-tls+jwt: mutual TLS on every gRPC port, plus the JWT keys;
- shipped: grpc-tls+jwt plus mutual-TLS HTTPS on the master's and admin's HTTP (what
  embedded.py writes);
- all-tls: shipped plus HTTPS on the volume server's and filer's HTTP (the data path) and
  HTTPS for weed's internal HTTP clients.

    .venv/bin/python bench/embedded_security.py [--reads 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import blockstore.host.embedded as embedded  # noqa: E402
from blockstore.store.s3 import S3Config, S3Store  # noqa: E402

VARIANTS = ("open", "jwt", "grpc-tls+jwt", "shipped", "all-tls")
SHIPPED = embedded.write_security


def security_for(variant: str, data_dir: Path) -> None:
    """Write the shipped security.toml, then cut it (or extend it) to `variant`."""
    path = SHIPPED(data_dir)
    if variant == "open":
        path.unlink()
        return
    head, *sections = path.read_text().split("\n[")
    keep = [head]
    for sec in sections:
        name = sec.split("]", 1)[0]
        if variant == "jwt" and name.startswith(("grpc", "https")):
            continue
        if variant == "grpc-tls+jwt" and name.startswith("https"):
            continue
        keep.append(sec)
    text = "\n[".join(keep)
    if variant == "all-tls":
        tls = data_dir / "tls"
        pair = f'cert = "{tls}/weed.crt"\nkey = "{tls}/weed.key"\nca = "{tls}/ca.crt"\n'
        text += "".join(f"\n[https.{c}]\n{pair}" for c in ("volume", "filer"))
        text += f"\n[https.client]\nenabled = true\n{pair}"
    path.write_text(text)


def cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, tmp: Path, reads: int, rounds: int) -> list[str]:
    embedded.write_security = lambda d: security_for(variant, d)  # type: ignore[assignment]
    try:
        w = embedded.EmbeddedSeaweed(tmp / variant, embedded.Credentials("bench", "bench-secret"))
        w.start()
    finally:
        embedded.write_security = SHIPPED
    rows = []
    try:
        s = S3Store(S3Config(w.endpoint, "bench", "bench", "bench-secret"))
        s.ensure_bucket()
        s.put("obj", os.urandom(4 << 20))
        rng = random.Random(1)
        for _ in range(100):
            s.get("obj", rng.randrange(0, 1024) * 4096, 4096)
        for r in range(rounds):
            lat = []
            c0 = cpu(w.pid)
            for _ in range(reads):
                off = rng.randrange(0, 1023) * 4096
                t = time.perf_counter()
                s.get("obj", off, 4096)
                lat.append(time.perf_counter() - t)
            per = (cpu(w.pid) - c0) / reads
            lat.sort()
            rows.append(
                f"| {variant} | {r + 1} | {statistics.median(lat) * 1e3:.2f} ms | "
                f"{lat[int(len(lat) * 0.99)] * 1e3:.2f} ms | {per * 1e3:.2f} ms |"
            )
        s.close()
    finally:
        w.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, blockstore {rev}, "
          f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"{a.reads} ranged 4 KiB GETs of a 4 MiB object per round, QD1")  # fmt: skip
    print("| security.toml | round | median | p99 | weed CPU per GET |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="embedded-security-") as tmp:
        for variant in VARIANTS:
            for row in measure(variant, Path(tmp), a.reads, a.rounds):
                print(row, flush=True)


if __name__ == "__main__":
    main()
