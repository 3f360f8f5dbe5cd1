"""A grs disk's replication status counts what the primary has acknowledged (issue #23).

Through the API and NBD, with the replicator running in the background as in the service:
write and flush, then poll `GET /v1/disks/{name}` as fast as it answers; the first answer that
says "synced, 0 bytes behind" is followed at once by a failover with the primary region
unreachable (a fault proxy in front of its SeaweedFS drops every connection), and every
flushed byte must read back from the secondary. Twenty rounds with random write sizes in the
slow suite (CI runs it), four in the default one (each round is a failover: about 8 s). A
second host on the same bucket, which runs no replicator for the disk, must never say
"synced" while the first still has something pending.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockstore.geo.config import ReplicationConfig
from tests.support.apihost import GeoHost, nbd_read, nbd_write_all
from tests.support.faultproxy import FaultProxy
from tests.support.paths import BIN
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import TOKEN, ServeHost

MiB = 1 << 20
FAR = 100 * MiB  # the second write: 1 MiB at 100 MiB
_n = itertools.count()


@pytest.fixture
def hosts(
    seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path: Path
) -> Iterator[tuple[GeoHost, GeoHost, FaultProxy]]:
    proxy = FaultProxy(seaweed.endpoint)
    prefix = f"rpo-{next(_n)}-{os.getpid()}/"
    replicating = GeoHost(
        seaweed,
        seaweed2,
        prefix,
        tmp_path / "a",
        primary_endpoint=proxy.endpoint,
        retry_seconds=1.0,
        primary_hold_seconds=0.5,
        replication=ReplicationConfig(interval_seconds=0.2, rpo_target_seconds=60),
    )
    observer = GeoHost(seaweed, seaweed2, prefix, tmp_path / "b")  # runs no replicator
    assert replicating.control.replication is not None
    replicating.control.replication.start()
    yield replicating, observer, proxy
    proxy.clear()
    replicating.close()
    observer.close()
    proxy.close()


def status(host: GeoHost, name: str) -> dict[str, Any]:
    r = host("GET", f"/v1/disks/{name}")
    assert r.status_code == 200, r.text
    return r.json()["replication"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "rounds",
    [pytest.param(4, id="4-rounds"), pytest.param(20, id="20-rounds", marks=pytest.mark.slow)],
)
def test_the_first_synced_answer_is_true_at_failover(
    hosts: tuple[GeoHost, GeoHost, FaultProxy], rounds: int
) -> None:
    geo, observer, proxy = hosts
    rng = random.Random(23 + rounds)
    lagging_answers = 0
    for i in range(rounds):
        name = f"r{i}"
        body = {"name": name, "size_bytes": 128 * MiB, "kind": "data", "redundancy": "grs"}
        assert geo("POST", "/v1/disks", json=body).status_code == 201
        r = geo("POST", f"/v1/disks/{name}/attach", json={"vm": f"vm{i}"})
        assert r.status_code == 200, r.text
        att = r.json()
        writes = [
            (0, rng.randbytes(rng.randrange(1, 1025) * 4096)),  # 4 KiB .. 4 MiB at 0
            (FAR, rng.randbytes(rng.randrange(1, 257) * 4096)),  # 4 KiB .. 1 MiB at 100 MiB
        ]
        nbd_write_all(att["socket"], writes)
        deadline = time.monotonic() + 60
        while True:
            st = status(geo, name)
            seen = status(observer, name)
            if st["state"] == "synced" and st["lag_bytes"] == 0:
                break
            lagging_answers += 1
            assert st["lag_bytes"] > 0 and st["source_seq"] > st["frontier_seq"], st
            assert st["state"] in ("lagging", "seeding"), st
            assert st["lag_seconds"] >= 0 and not st["rpo_exceeded"], st
            # The other host measures the same stores: it may see the copy land before the
            # first host is asked again, never a synced state before the copy could exist.
            assert seen["state"] in ("synced", "lagging", "seeding"), seen
            assert time.monotonic() < deadline, f"round {i}: never synced: {st}"
        assert st["lag_seconds"] == 0 and st["source_seq"] == st["frontier_seq"], st
        assert status(observer, name)["state"] == "synced"
        proxy.arm("down")  # the primary region is gone: nothing more can be copied
        moved = geo("POST", f"/v1/disks/{name}/failover")
        assert moved.status_code == 200, moved.text
        assert moved.json()["failover"]["primary_reachable"] is False
        socket = moved.json()["attachment"]["socket"]
        for offset, data in writes:
            assert nbd_read(socket, offset, len(data)) == data, f"round {i}: lost at {offset}"
        proxy.clear()
        time.sleep(0.6)  # past the hold on the primary after its last failure
        assert geo("POST", f"/v1/disks/{name}/detach").status_code == 200
    # The status did report the lag at first (the bug was answering "synced" here).
    assert lagging_answers > 0


def test_a_real_service_reports_the_measured_lag_in_the_api_metrics_and_cli(
    seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path: Path
) -> None:
    """`blockstore serve` with a secondary region: after a flush, `blockstore disk replication
    --wait` drains, and then the API, `/metrics` and the CLI all say synced with no lag."""
    prefix = f"rpo-serve-{next(_n)}-{os.getpid()}/"
    host = ServeHost(
        tmp_path / "h",
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=prefix,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        extra_env=seaweed2.secondary_env(prefix),
    ).start()
    url = f"http://127.0.0.1:{host.port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN, *args, "--url", url, "--token", TOKEN, "--json"],
            env=host.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        host.ok(
            "POST",
            "/v1/disks",
            {"name": "g", "size_bytes": 8 * MiB, "kind": "data", "redundancy": "grs"},
        )
        host.ok("POST", "/v1/disks", {"name": "l", "size_bytes": MiB, "kind": "data"})
        att = host.ok("POST", "/v1/disks/g/attach", {"vm": "vm1"})
        nbd_write_all(att["socket"], [(0, os.urandom(2 * MiB))])
        drained = cli("disk", "replication", "g", "--wait", "--timeout", "60")
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["state"] == "synced"
        shown = cli("disk", "replication", "g")
        assert shown.returncode == 0, shown.stderr
        st = json.loads(shown.stdout)
        assert (st["state"], st["lag_bytes"], st["lag_seconds"]) == ("synced", 0, 0), st
        req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        assert 'blockstore_replication_lag_bytes{disk="g"} 0.0' in text, text[-2000:]
        assert 'blockstore_replication_rpo_exceeded{disk="g"} 0.0' in text
        lrs = cli("disk", "replication", "l")
        assert lrs.returncode == 1 and "lrs" in lrs.stderr
        host.ok("POST", "/v1/disks/g/detach")
    finally:
        host.stop()
