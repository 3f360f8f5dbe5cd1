"""Helpers shared by the NBD tests: disks on their own prefix of the test bucket, exports of
them, and the clients (libnbd, qemu-io, qemu-img, fio)."""

from __future__ import annotations

import itertools
import random
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nbd

from blockstore.engine.volume import Volume
from blockstore.host.export import Export, ExportConfig
from blockstore.store.s3 import S3Config
from blockstore.store.stack import build_store

MiB = 1 << 20
MODES = ["none", "readonly", "readwrite"]
_disks = itertools.count()


@dataclass
class Disk:
    """A disk created on its own prefix of the test bucket, and how to serve it."""

    config: ExportConfig

    def export(self, **changes: Any) -> Export:
        return Export(replace(self.config, **changes))


def create_disk(
    s3: S3Config, tmp_path: Path, mode: str, size: int = 64 * MiB, **changes: Any
) -> Disk:
    n = next(_disks)
    prefix = f"{s3.prefix}nbd-{n}-{random.randrange(1 << 30):x}/"
    s3 = replace(s3, prefix=prefix)
    store = build_store(s3)
    disk_id = f"disk{n}"
    Volume.create(store, disk_id, size)
    store.close()
    cfg = ExportConfig(
        disk_id=disk_id,
        socket=tmp_path / f"nbd{n}.sock",
        s3=s3,
        cache_mode=mode,
        cache_dir=None if mode == "none" else tmp_path / f"cache{n}",
        cache_size="32M",
        dirty_limit="8M",
        retry_seconds=5.0,
        write_wait_seconds=5.0,
    )
    return Disk(replace(cfg, **changes))


def connect(exp: Export) -> nbd.NBD:
    h = nbd.NBD()
    h.connect_uri(exp.uri)
    return h


def read_all(h: nbd.NBD, size: int, chunk: int = 4 * MiB) -> bytes:
    return b"".join(h.pread(min(chunk, size - o), o) for o in range(0, size, chunk))


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def prefill(disk: Disk, data: dict[int, bytes]) -> None:
    """Write through the engine directly (before any export runs), so reads must fetch it."""
    store = build_store(disk.config.s3)
    vol = Volume.open(store, disk.config.disk_id)
    for off, d in data.items():
        vol.write(off, d)
    vol.flush()
    vol.close()
    store.close()
