"""blockstore on a real multi-process SeaweedFS cluster from `scripts/seaweedfs-cluster.sh`.

The script starts a master with replication 001, two volume servers, a filer and an S3 gateway
on 127.0.0.1; a real `blockstore serve` runs against it with the BLOCKSTORE_S3_* settings the
script printed. A `none` data disk is written through NBD (libnbd) by a writer that records
every acknowledged write; one volume server is killed with SIGKILL while it writes. Every
acknowledged write must read back exactly, from the surviving replica. The killed server is
then started again by the script, and writes go on. Meanwhile `nobody` gets nothing from
the filer's and master's own ports, nor from S3 without the keys. On a cluster with
SeaweedFS's default 4 MiB filer chunks, `serve` logs one start-up warning
(blockstore/store/chunkprobe.py); with the script's 1 MiB chunks, none.

Slow (about a minute and a half): run with `pytest -m slow tests/system/test_seaweedfs_cluster.py`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest

from tests.support.cluster import SCRIPT, script, start_cluster
from tests.support.servehost import ServeHost, connect, wait_for

pytestmark = pytest.mark.slow

MiB = 1 << 20
BLOCK = 64 * 1024
DISK = 256 * MiB


@contextlib.contextmanager
def _cluster(d: Path, *args: str) -> Iterator[dict[str, str]]:
    """Start a cluster with the script; yield the BLOCKSTORE_S3_* settings it printed."""
    settings = start_cluster(d, *args)
    assert set(settings) >= {
        "BLOCKSTORE_S3_ENDPOINT", "BLOCKSTORE_S3_ACCESS_KEY", "BLOCKSTORE_S3_SECRET_KEY",
        "BLOCKSTORE_S3_BUCKET",
    }  # fmt: skip
    assert (d / "s3.json").stat().st_mode & 0o777 == 0o600
    assert (d / "blockstore.env").stat().st_mode & 0o777 == 0o600
    try:
        yield settings
    finally:
        script("stop", d)
        assert (
            "running"
            not in subprocess.run([str(SCRIPT), "status", d], capture_output=True, text=True).stdout
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    d = tmp_path / "cluster"
    with _cluster(d, "--volumes", "2", "--replication", "001") as settings:
        yield d, settings


def _serve(home: Path, s3: dict[str, str]) -> ServeHost:
    return ServeHost(
        home,
        endpoint=s3["BLOCKSTORE_S3_ENDPOINT"],
        bucket=s3["BLOCKSTORE_S3_BUCKET"],
        prefix="cluster-test/",
        access_key=s3["BLOCKSTORE_S3_ACCESS_KEY"],
        secret_key=s3["BLOCKSTORE_S3_SECRET_KEY"],
        retry_seconds=10,
    ).start()


SLOW_WARNING = "reads small ranges of large objects slowly"


def _payload(i: int) -> bytes:
    return i.to_bytes(8, "little") + random.Random(i).randbytes(BLOCK - 8)


class Writer:
    """Durable 64 KiB writes at distinct offsets until told to stop; remembers what was acked."""

    def __init__(self, sock: str, first: int) -> None:
        self.h = connect(sock)
        self.next = first
        self.acked: list[int] = []
        self.failed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set() and (self.next + 1) * BLOCK <= DISK:
            i = self.next
            self.next += 1
            try:
                self.h.pwrite(_payload(i), i * BLOCK)
            except nbd.Error:
                self.failed.append(i)
                continue
            self.acked.append(i)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)
        assert not self.thread.is_alive()


def _verify(sock: str, acked: list[int]) -> None:
    h = connect(sock)
    for i in acked:
        got = h.pread(BLOCK, i * BLOCK)
        assert got == _payload(i), f"acknowledged write {i} reads back wrong"
    h.shutdown()


def test_blockstore_on_a_replicated_cluster_survives_a_volume_server_kill(
    cluster: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    d, s3 = cluster
    host = _serve(tmp_path / "home", s3)
    try:
        # 1 MiB filer chunks (the script's default): no start-up warning.
        wait_for(lambda: "small-read probe:" in host.log_tail(20000), 30, "the probe's line")
        assert SLOW_WARNING not in host.log_tail(20000)
        host.ok("POST", "/v1/disks", {"name": "rep1", "size_bytes": DISK, "kind": "data"})
        att = host.ok("POST", "/v1/disks/rep1/attach", {"vm": "vm1"})
        assert att["caching"] == "none"
        sock = att["socket"]

        with Writer(sock, 0) as w:
            wait_for(lambda: len(w.acked) >= 50, 60, "50 acknowledged writes")
            victim = int((d / "pids" / "volume2.pid").read_text())
            os.kill(victim, signal.SIGKILL)
            killed_at = len(w.acked)
            time.sleep(15)  # writes stall, fail with EIO or go on, as the store decides
        acked = w.acked
        assert killed_at >= 50 and acked
        assert not set(acked) & set(w.failed)
        status = subprocess.run([str(SCRIPT), "status", d], capture_output=True, text=True)
        assert "volume2 stopped" in status.stdout and status.returncode == 1

        # Another local user cannot reach the data through the cluster's own ports.
        base = int(re.search(r"base=(\d+)", (d / "settings").read_text())[1])  # type: ignore[index]
        bucket = s3["BLOCKSTORE_S3_BUCKET"]
        for url in (f"http://127.0.0.1:{base + 2}/buckets/{bucket}/",  # filer listing
                    f"http://127.0.0.1:{base + 2}/buckets/{bucket}/cluster-test/",
                    f"https://127.0.0.1:{base}/col/delete?collection={bucket}",  # master
                    f"http://127.0.0.1:{base}/col/delete?collection={bucket}",
                    f"http://127.0.0.1:{base + 4}/{bucket}"):  # S3 without keys  # fmt: skip
            code = subprocess.run(
                ["runuser", "-u", "nobody", "--", "curl", "-sk", "-m", "5", "-o", "/dev/null",
                 "-w", "%{http_code}", url], capture_output=True, text=True,
            ).stdout  # fmt: skip
            assert code in ("000", "400", "401", "403"), f"nobody got {code} from {url}"

        # Every acknowledged write, read while one replica is gone.
        _verify(sock, acked)

        # The script brings the dead server back; writes go on and everything reads back.
        script("start", d)
        with Writer(sock, w.next) as w2:
            wait_for(lambda: len(w2.acked) >= 20, 120, "writes after the restart")
        _verify(sock, acked + w2.acked)
        print(
            f"acked {len(acked)} writes ({killed_at} before the kill), failed {len(w.failed)}; "
            f"{len(w2.acked)} after the volume server came back"
        )
    finally:
        host.stop()


def test_serve_warns_once_at_start_up_on_a_cluster_with_4_mib_filer_chunks(tmp_path: Path) -> None:
    args = ("--volumes", "1", "--replication", "000", "--chunk-mb", "4")
    with _cluster(tmp_path / "c4", *args) as s3:
        host = _serve(tmp_path / "home", s3)
        try:
            try:
                wait_for(lambda: SLOW_WARNING in host.log_tail(20000), 30, "the warning")
            except AssertionError:
                probe = [ln for ln in host.log_tail(20000).splitlines() if "probe" in ln.lower()]
                raise AssertionError(f"no slow-read warning; the probe said: {probe}") from None
            time.sleep(1)
            log = host.log_tail(20000)
            assert log.count(SLOW_WARNING) == 1, log
            assert "-maxMB=1" in log
        finally:
            host.stop()
