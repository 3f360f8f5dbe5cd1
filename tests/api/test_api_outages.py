"""The API while the (primary region's) store is completely down.

The primary SeaweedFS sits behind a fault proxy that, armed with "down", resets every
connection without answering: nothing of the primary bucket can be read or written.

- Failover: the disk record is read from its mirror in the secondary region, the failover is
  recorded there, the export moves to the secondary, and once the primary answers again the
  old primary's writer is fenced and the disk fails back with every write made in between.
- Detach refuses to drop writes it cannot make durable; a host cache left behind by an earlier
  attachment is never replayed over what other hosts wrote since.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest

from blockstore.control.records import RecordStore
from blockstore.engine.volume import Volume
from blockstore.errors import Fenced
from blockstore.format import keys
from blockstore.store.base import ObjectStore
from blockstore.store.retry import RetryConfig
from blockstore.store.stack import build_store
from tests.support.apihost import GeoHost, nbd_read, nbd_write, wait_op
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
_n = itertools.count()


@pytest.fixture
def outage(
    seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path: Path
) -> Iterator[tuple[GeoHost, FaultProxy, ObjectStore]]:
    proxy = FaultProxy(seaweed.endpoint)
    prefix = f"geodown-{next(_n)}-{os.getpid()}/"
    direct = build_store(seaweed.s3_config(prefix), RetryConfig(deadline_seconds=2.0))
    host = GeoHost(
        seaweed,
        seaweed2,
        prefix,
        tmp_path / "g",
        primary_endpoint=proxy.endpoint,
        retry_seconds=2.0,
        primary_hold_seconds=1.0,
    )
    yield host, proxy, direct
    proxy.clear()
    host.close()
    proxy.close()
    direct.close()


def test_failover_with_the_primary_down_then_fence_and_failback(
    outage: tuple[GeoHost, FaultProxy, ObjectStore],
) -> None:
    geo, proxy, direct = outage
    body = {"name": "g", "size_bytes": 4 * MiB, "kind": "data", "redundancy": "grs"}
    assert geo("POST", "/v1/disks", json=body).status_code == 201
    plain = {"name": "l", "size_bytes": MiB, "kind": "data"}
    assert geo("POST", "/v1/disks", json=plain).status_code == 201
    att = geo("POST", "/v1/disks/g/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"A" * 65536)
    geo.replicate()
    assert geo("GET", "/v1/disks/g").json()["replication"]["lag_bytes"] == 0
    vid = geo("GET", "/v1/disks/g").json()["volume_id"]

    proxy.arm("down")
    r = geo("POST", "/v1/disks/g/failover")
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["primary"] == "secondary"
    assert moved["failover"]["primary_reachable"] is False
    assert moved["failover"]["fence_pending"] is True
    assert proxy.stats["down"] > 0

    # While the primary is down: the disk is shown and served from the secondary region ...
    shown = geo("GET", "/v1/disks/g")
    assert shown.status_code == 200 and shown.json()["primary"] == "secondary"
    socket = moved["attachment"]["socket"]
    assert nbd_read(socket, 0, 65536) == b"A" * 65536
    nbd_write(socket, 65536, b"B" * 65536)
    # A partition: a writer elsewhere still reaches the primary and takes writes there. They
    # come after the fork and are lost by the failover (the RPO); it must be fenced.
    zombie = Volume.open(direct, vid, writable=True)
    zombie.write(0, b"Z" * 4096)
    zombie.flush()
    # ... and what only the primary holds answers 503 with a reason, never 500.
    for method, path in (("GET", "/v1/disks/l"), ("GET", "/v1/disks")):
        r = geo(method, path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.json()["detail"]

    proxy.clear()
    time.sleep(1.1)  # the hold on the primary after its last failure
    geo.replicate()  # its follow-up fences the old primary
    shown = geo("GET", "/v1/disks/g").json()
    assert shown["primary"] == "secondary"
    assert shown["failover"]["fence_pending"] is False and shown["failover"]["fenced_at"]
    # The primary's own copy of the record now carries the failover too (mirrored).
    in_primary = RecordStore(geo.store, keys.CONTROL_DISKS_PREFIX).get("g")
    assert in_primary["primary"] == "secondary"
    zombie.write(4096, b"Z" * 4096)
    with pytest.raises(Fenced):
        zombie.flush()
    zombie.abandon()
    assert geo("GET", "/v1/disks/l").status_code == 200

    op = geo("POST", "/v1/disks/g/failback").json()
    assert wait_op(geo, op)["status"] == "succeeded", op
    back = geo("GET", "/v1/disks/g").json()
    assert back["primary"] == "primary"
    socket = back["attachment"]["socket"]
    assert nbd_read(socket, 0, 131072) == b"A" * 65536 + b"B" * 65536


def test_a_readwrite_cache_never_mixes_unreplicated_writes_into_the_failed_over_disk(
    outage: tuple[GeoHost, FaultProxy, ObjectStore],
) -> None:
    """The secondary holds the disk as of an earlier flush; the host cache's journal holds
    writes from after a later one. Replaying that journal on the secondary would give a disk
    that never existed (C without B), so a failover with the primary down discards it."""
    geo, proxy, _ = outage
    body = {"name": "os", "size_bytes": 4 * MiB, "kind": "os", "redundancy": "grs"}
    assert geo("POST", "/v1/disks", json=body).json()["caching"] == "readwrite"
    att = geo("POST", "/v1/disks/os/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"A" * 65536)  # flushed and replicated
    geo.replicate()
    nbd_write(att["socket"], 65536, b"B" * 65536)  # flushed, not replicated
    proxy.arm("down")
    h = nbd.NBD()
    h.connect_unix(att["socket"])
    h.pwrite(b"C" * 65536, 131072)  # acknowledged by the cache; the store never gets it
    h.shutdown()

    r = geo("POST", "/v1/disks/os/failover")
    assert r.status_code == 200, r.text
    failover = r.json()["failover"]
    assert failover["primary_reachable"] is False
    assert failover["host_cache_discarded_bytes"] >= 65536
    socket = r.json()["attachment"]["socket"]
    assert nbd_read(socket, 0, 196608) == b"A" * 65536 + bytes(131072)


def test_detach_fails_while_the_store_is_down_and_loses_nothing(
    outage: tuple[GeoHost, FaultProxy, ObjectStore],
) -> None:
    geo, proxy, _ = outage
    geo("POST", "/v1/disks", json={"name": "os", "size_bytes": 4 * MiB, "kind": "os"})
    att = geo("POST", "/v1/disks/os/attach", json={"vm": "vm1"}).json()
    proxy.arm("down")
    h = nbd.NBD()
    h.connect_unix(att["socket"])
    h.pwrite(b"X" * 65536, 0)  # readwrite: acknowledged by the host cache
    h.shutdown()
    r = geo("POST", "/v1/disks/os/detach")
    assert r.status_code == 503, r.text
    proxy.clear()
    time.sleep(1.1)  # the hold on the primary after its last failure
    assert geo.control.disks.get("os")["attachment"]["vm"] == "vm1"
    assert geo("POST", "/v1/disks/os/detach").status_code == 200
    assert Volume.open(geo.store, geo.control.disks.get("os")["volume_id"]).read(0, 65536) == (
        b"X" * 65536
    )


def test_a_cache_left_by_an_earlier_attachment_is_not_replayed_over_newer_writes(
    outage: tuple[GeoHost, FaultProxy, ObjectStore],
    seaweed: SeaweedServer,
    seaweed2: SeaweedServer,
    tmp_path: Path,
) -> None:
    a, proxy, _ = outage
    b = GeoHost(seaweed, seaweed2, a.prefix, tmp_path / "b")  # reaches the store directly
    try:
        a("POST", "/v1/disks", json={"name": "os", "size_bytes": 4 * MiB, "kind": "os"})
        r = a("POST", "/v1/disks/os/attach", json={"vm": "vm1"})
        assert r.status_code == 200, r.text
        att = r.json()
        proxy.arm("down")  # host a is cut off from the store with a write in its cache
        h = nbd.NBD()
        h.connect_unix(att["socket"])
        h.pwrite(b"X" * 65536, 0)
        h.shutdown()
        moved = b("POST", "/v1/disks/os/attach", json={"vm": "vm2", "force": True})
        assert moved.status_code == 200, moved.text
        nbd_write(moved.json()["socket"], 0, b"Y" * 65536)
        assert b("POST", "/v1/disks/os/detach").status_code == 200
        proxy.clear()
        time.sleep(1.1)
        again = a("POST", "/v1/disks/os/attach", json={"vm": "vm1"})
        assert again.status_code == 200, again.text
        assert nbd_read(again.json()["socket"], 0, 65536) == b"Y" * 65536
    finally:
        b.close()
