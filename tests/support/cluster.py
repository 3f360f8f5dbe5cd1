"""A multi-process SeaweedFS cluster from `scripts/seaweedfs-cluster.sh`, for the slow cluster
tests and the chunk-size bench (bench/chunk_reads.py): free ports, start, stop."""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

from tests.support.paths import REPO

SCRIPT = REPO / "scripts" / "seaweedfs-cluster.sh"


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections: fixed listening ports stay
    below it, or a connection of the moment can hold one when its server starts."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def free_port_base(span: int = 16) -> int:
    """A base port whose next `span` ports are all free on 127.0.0.1 (below the ephemeral
    range)."""
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, _ephemeral_low() - span)
        try:
            for p in range(base, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def script(*args: str | Path) -> str:
    """Run the cluster script; its standard output (fails the caller on a non-zero exit)."""
    done = subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def start_cluster(d: Path, *args: str) -> dict[str, str]:
    """Start a cluster in `d` on free ports; the BLOCKSTORE_S3_* settings the script printed."""
    out = script("start", d, *args, "--port-base", str(free_port_base()))
    return dict(
        line.split("=", 1) for line in out.splitlines() if line.startswith("BLOCKSTORE_S3_")
    )
