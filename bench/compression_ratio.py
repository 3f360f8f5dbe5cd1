"""What compression saves on real data, and what it and encryption cost to write (issue #20).
Not a test: prints a table (and writes JSON with --json).

    .venv/bin/python bench/compression_ratio.py [--tree /usr/lib/python3 --tree /usr/share/doc]

Real files, not zeros: an ext4 file system is made from copies of installed Debian package
trees (`mkfs.ext4 -d`, default /usr/lib/python3 and /usr/share/doc: Python sources and bytecode,
shared objects, documentation), then written through NBD into a blockstore disk of each kind
by `qemu-img convert` (caching `none`: every write is in the store at its acknowledgement). A
throw-away embedded SeaweedFS holds the disks. Per disk kind: the bytes written through NBD,
the bytes the disk's objects take in the store, the bytes and number of PUTs the export sent
(its store counters), the write time and nbdkit's CPU time; the image is read back through NBD
and compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import process_cpu_seconds
from blockstore.crypto.disk import set_provider
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.engine.volume import Volume
from blockstore.format import keys
from blockstore.host import contract
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.host.export import Export, ExportConfig
from blockstore.store.s3 import S3Config, S3Store
from blockstore.store.stack import build_store

MiB = 1 << 20
KINDS = [  # (label, compression, encrypted)
    ("plain", "none", False),
    ("zstd", "zstd", False),
    ("lz4", "lz4", False),
    ("encrypted", "none", True),
    ("zstd + encrypted", "zstd", True),
]


def make_image(trees: list[Path], work: Path) -> tuple[Path, int]:
    """An ext4 image holding copies of `trees`; its path and the bytes of files in it."""
    staging = work / "tree"
    staging.mkdir()
    for t in trees:
        shutil.copytree(t, staging / t.as_posix().strip("/").replace("/", "_"), symlinks=True)
    files = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
    image = work / "fs.img"
    size = (files * 3 // 2 + 64 * MiB) // MiB * MiB
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(staging), str(image), f"{size // MiB}M"],
                   check=True)  # fmt: skip
    shutil.rmtree(staging)
    return image, files


def measure(
    s3: S3Config, work: Path, image: Path, label: str, codec: str, enc: bool
) -> dict[str, Any]:
    """Write `image` through NBD into a new disk of this kind; its figures."""
    prefix = f"{label.replace(' ', '').replace('+', '-')}/"
    s3k = replace(s3, prefix=prefix)
    store = build_store(s3k)
    Volume.create(store, "fs", image.stat().st_size, compression=codec, encrypt=enc)
    stats = work / f"{prefix.strip('/')}.stats.json"
    exp = Export(ExportConfig(
        disk_id="fs", socket=work / f"{prefix.strip('/')}.sock", s3=s3k,
        extra_env={contract.ENV_KEK_DIR: str(work / "kek"), contract.ENV_STATS_FILE: str(stats)},
    )).start()  # fmt: skip
    try:
        cpu0, t0 = process_cpu_seconds(exp.pid or 0), time.monotonic()
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W", "-m", "4",
                        str(image), exp.uri], check=True)  # fmt: skip
        seconds = time.monotonic() - t0
        cpu = (process_cpu_seconds(exp.pid or 0) or 0) - (cpu0 or 0)
        back = work / "back.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", exp.uri, str(back)],
                       check=True)  # fmt: skip
        same = subprocess.run(["cmp", "-s", str(image), str(back)]).returncode == 0
        back.unlink()
        time.sleep(3)  # the stats file is rewritten every couple of seconds
        st = contract.read_stats(stats) or {}
    finally:
        exp.stop()
    written = st.get("io", {}).get("write", {}).get("bytes", 0)
    stored = sum(o.size for o in store.list(keys.disk_prefix("fs")))
    store.close()
    return {"label": label, "written": written, "stored": stored, "read_back_identical": same,
            "put_bytes": st.get("store", {}).get("bytes_uploaded", 0),
            "puts": st.get("store", {}).get("puts", 0), "seconds": seconds, "cpu": cpu}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, action="append")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    trees = args.tree or [Path("/usr/lib/python3"), Path("/usr/share/doc")]
    with tempfile.TemporaryDirectory(prefix="compress-") as t:
        work = Path(t)
        image, files = make_image(trees, work)
        image_mib = image.stat().st_size // MiB
        set_provider(LocalKeyFile(work / "kek"))
        server = EmbeddedSeaweed(work / "weed", Credentials("benchkey", "bench-secret-not-real"))
        server.start()
        try:
            s3 = S3Config(server.endpoint, "bench", "benchkey", "bench-secret-not-real")
            S3Store(s3).ensure_bucket()
            rows = [measure(s3, work, image, *k) for k in KINDS]
        finally:
            server.stop()
    plain = rows[0]
    print(f"ext4 image {image_mib} MiB holding {files / MiB:.0f} MiB of files "
          f"from {', '.join(map(str, trees))}")  # fmt: skip
    print("| disk | written via NBD | stored | stored / plain | PUT bytes | PUTs | write MB/s "
          "| nbdkit CPU s | read back |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['label']} | {r['written'] / MiB:.0f} MiB | {r['stored'] / MiB:.0f} MiB | "
              f"{r['stored'] / plain['stored']:.2f} | {r['put_bytes'] / MiB:.0f} MiB | {r['puts']} "
              f"| {r['written'] / r['seconds'] / 1e6:.0f} | {r['cpu']:.1f} | "
              f"{'identical' if r['read_back_identical'] else 'DIFFERS'} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"files": files, "trees": list(map(str, trees)),
                                         "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
