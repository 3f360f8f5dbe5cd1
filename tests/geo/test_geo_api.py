"""Geo-redundant disks through the API, on two real SeaweedFS servers and real nbdkit exports:
replication status and metrics, failover with an attached disk (the export moves to the
secondary region), failback, redundancy changes as operations, snapshot copies, and the
validation errors of each route.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.crypto import disk as crypto_disk
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.engine.volume import Volume
from blockstore.format import keys
from blockstore.host import contract
from tests.support.apihost import GeoHost, nbd_read, nbd_write, wait_op
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
_n = itertools.count()


@pytest.fixture
def geo(seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path: Path) -> Iterator[GeoHost]:
    # One host serves both regions: its KEK opens an encrypted disk's keys in either.
    crypto_disk.set_provider(LocalKeyFile(contract.kek_dir(tmp_path / "g")))
    host = GeoHost(seaweed, seaweed2, f"geoapi-{next(_n)}-{os.getpid()}/", tmp_path / "g")
    yield host
    host.close()
    crypto_disk.set_provider(None)


def test_grs_needs_a_secondary_region(seaweed: SeaweedServer, tmp_path: Path) -> None:
    host = GeoHost(seaweed, None, f"geoapi-{next(_n)}-{os.getpid()}/", tmp_path / "n")
    try:
        r = host(
            "POST",
            "/v1/disks",
            json={"name": "g", "size_bytes": MiB, "kind": "data", "redundancy": "grs"},
        )
        assert r.status_code == 422 and "secondary" in r.json()["detail"]
        host("POST", "/v1/disks", json={"name": "l", "size_bytes": MiB, "kind": "data"})
        r = host("PATCH", "/v1/disks/l", json={"redundancy": "grs"})
        assert r.status_code == 422 and "secondary" in r.json()["detail"]
    finally:
        host.close()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_attached_grs_disk_fails_over_and_back(geo: GeoHost, encrypted: bool) -> None:
    body = {"name": "g1", "size_bytes": 4 * MiB, "kind": "data", "redundancy": "grs",
            "encrypted": encrypted}  # fmt: skip
    r = geo("POST", "/v1/disks", json=body)
    assert r.status_code == 201, r.text
    att = geo("POST", "/v1/disks/g1/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"A" * 65536)
    geo("POST", "/v1/disks/g1/snapshots", json={"name": "s1"})
    nbd_write(att["socket"], 65536, b"B" * 65536)
    geo.replicate()
    shown = geo("GET", "/v1/disks/g1").json()
    rep = shown["replication"]
    assert shown["primary"] == "primary"
    assert rep["state"] == "synced" and rep["lag_bytes"] == 0 and rep["rpo_exceeded"] is False
    assert rep["lag_seconds"] < 60 and rep["last_sync_time"]
    metrics = geo.client.get("/metrics").text
    assert 'blockstore_replication_lag_seconds{disk="g1"}' in metrics
    assert 'blockstore_replication_rpo_exceeded{disk="g1"} 0.0' in metrics
    # The snapshot is in the secondary region too.
    vid = shown["volume_id"]
    assert geo.secondary is not None
    snap = Volume.open_snapshot(geo.secondary, vid, "s1")
    assert snap.read(0, 65536) == b"A" * 65536
    snap.close()
    copied = [o.key for o in geo.secondary.list(keys.disk_prefix(vid))
              if b"A" * 64 in geo.secondary.get(o.key)]  # fmt: skip
    assert bool(copied) is not encrypted, copied  # the secondary holds ciphertext only
    # Failover while attached: the export now runs on the secondary region.
    r = geo("POST", "/v1/disks/g1/failover")
    assert r.status_code == 200, r.text
    disk = r.json()
    assert disk["primary"] == "secondary" and disk["failover"]["primary_reachable"] is True
    assert disk["replication"]["state"] == "failed-over"
    sock = disk["attachment"]["socket"]
    assert nbd_read(sock, 0, 131072) == b"A" * 65536 + b"B" * 65536
    nbd_write(sock, 131072, b"C" * 65536)
    assert geo("POST", "/v1/disks/g1/failover").status_code == 409
    # The old primary's log is fenced: a writer there would now be superseded.
    assert any(True for _ in geo.store.list(keys.epoch_prefix(vid)))
    # Failback: an operation; afterwards the primary region serves everything.
    op = geo("POST", "/v1/disks/g1/failback")
    assert op.status_code == 202, op.text
    done = wait_op(geo, op.json())
    assert done["status"] == "succeeded", done
    disk = geo("GET", "/v1/disks/g1").json()
    assert disk["primary"] == "primary" and disk["failover"] is None
    sock = disk["attachment"]["socket"]
    assert nbd_read(sock, 0, 196608) == b"A" * 65536 + b"B" * 65536 + b"C" * 65536
    assert geo("POST", "/v1/disks/g1/failback").status_code == 409
    # Replication goes on from the primary again.
    nbd_write(sock, 0, b"D" * 4096)
    geo.replicate()
    assert geo("GET", "/v1/disks/g1").json()["replication"]["lag_bytes"] == 0
    view = Volume.open(geo.secondary, vid, writable=False)
    assert view.read(0, 4096) == b"D" * 4096
    view.close()
    geo("POST", "/v1/disks/g1/detach")
    op = geo("DELETE", "/v1/disks/g1").json()
    assert wait_op(geo, op)["status"] == "succeeded"
    assert not list(geo.secondary.list(keys.disk_prefix(vid)))


def test_redundancy_changes_and_snapshot_copy(geo: GeoHost) -> None:
    geo("POST", "/v1/disks", json={"name": "l1", "size_bytes": 4 * MiB, "kind": "data"})
    att = geo("POST", "/v1/disks/l1/attach", json={"vm": "vm2"}).json()
    nbd_write(att["socket"], 0, b"x" * 65536)
    geo("POST", "/v1/disks/l1/snapshots", json={"name": "a"})
    nbd_write(att["socket"], 0, b"y" * 65536)
    geo("POST", "/v1/disks/l1/snapshots", json={"name": "b"})
    vid = geo("GET", "/v1/disks/l1").json()["volume_id"]
    assert geo.secondary is not None
    # Copy one snapshot to the other region, then the next one: only what changed moves.
    op = geo("POST", "/v1/disks/l1/snapshots/a/copy")
    assert op.status_code == 202 and wait_op(geo, op.json())["status"] == "succeeded"
    first = {i.key for i in geo.secondary.list(keys.disk_prefix(vid))}
    op = geo("POST", "/v1/disks/l1/snapshots/b/copy")
    assert wait_op(geo, op.json())["status"] == "succeeded"
    second = {i.key for i in geo.secondary.list(keys.disk_prefix(vid))}
    assert first < second
    for name, byte in (("a", b"x"), ("b", b"y")):
        snap = Volume.open_snapshot(geo.secondary, vid, name)
        assert snap.read(0, 65536) == byte * 65536
        snap.close()
    assert geo("POST", "/v1/disks/l1/snapshots/nosuch/copy").status_code == 404
    assert geo("POST", "/v1/disks/l1/snapshots/BAD/copy").status_code == 422
    assert geo("POST", "/v1/disks/nosuch/snapshots/a/copy").status_code == 404
    # An lrs disk cannot fail over.
    assert geo("POST", "/v1/disks/l1/failover").status_code == 409
    assert geo("POST", "/v1/disks/nosuch/failover").status_code == 404
    assert geo("POST", "/v1/disks/NO_/failover").status_code == 422
    assert geo("PATCH", "/v1/disks/l1", json={"redundancy": "zrs"}).status_code == 422
    # lrs -> grs seeds the secondary as an operation.
    r = geo("PATCH", "/v1/disks/l1", json={"redundancy": "grs"})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "seed-secondary"
    assert wait_op(geo, r.json())["status"] == "succeeded"
    view = Volume.open(geo.secondary, vid, writable=False)
    assert view.read(0, 65536) == b"y" * 65536
    view.close()
    assert geo("PATCH", "/v1/disks/l1", json={"redundancy": "grs"}).status_code == 200
    # grs -> lrs removes the secondary copy.
    r = geo("PATCH", "/v1/disks/l1", json={"redundancy": "lrs"})
    assert r.status_code == 202 and r.json()["kind"] == "remove-secondary"
    assert wait_op(geo, r.json())["status"] == "succeeded"
    assert not list(geo.secondary.list(keys.disk_prefix(vid)))
    assert geo("GET", "/v1/disks/l1").json()["replication"] is None
    geo("POST", "/v1/disks/l1/detach")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_export_of_a_grs_disk_repairs_reads_from_the_secondary(
    geo: GeoHost, encrypted: bool
) -> None:
    """A segment lost in the primary region is read by the export from the secondary, served,
    and written back to the primary (an encrypted disk's as ciphertext, checked without the
    key and opened by the export)."""
    body = {"name": "rr", "size_bytes": 4 * MiB, "kind": "data", "redundancy": "grs",
            "encrypted": encrypted}  # fmt: skip
    r = geo("POST", "/v1/disks", json=body)
    assert r.status_code == 201, r.text
    vid = r.json()["volume_id"]
    att = geo("POST", "/v1/disks/rr/attach", json={"vm": "vm1"}).json()
    payload = os.urandom(65536)
    nbd_write(att["socket"], 65536, payload)
    geo.replicate()
    assert geo("GET", "/v1/disks/rr").json()["replication"]["lag_bytes"] == 0
    geo("POST", "/v1/disks/rr/detach")
    segments = [o.key for o in geo.store.list(keys.segment_prefix(vid)) if o.size > 1024]
    assert segments
    for key in segments:
        geo.store.delete(key)
    att = geo("POST", "/v1/disks/rr/attach", json={"vm": "vm1"}).json()
    assert nbd_read(att["socket"], 65536, len(payload)) == payload
    restored = {o.key for o in geo.store.list(keys.segment_prefix(vid))}
    assert set(segments) <= restored
    geo("POST", "/v1/disks/rr/detach")


def test_replication_wait_drains_or_says_what_is_pending(geo: GeoHost) -> None:
    """`POST .../replication/wait`: 409 saying what is pending while nothing copies; 200 with
    a synced status once a pass has copied every write acknowledged before the call."""
    body = {"name": "w", "size_bytes": 4 * MiB, "kind": "data", "redundancy": "grs"}
    assert geo("POST", "/v1/disks", json=body).status_code == 201
    geo.replicate()  # seeded
    att = geo("POST", "/v1/disks/w/attach", json={"vm": "vm1"}).json()
    payload = os.urandom(65536)
    nbd_write(att["socket"], 0, payload)  # written and flushed: acknowledged
    r = geo("POST", "/v1/disks/w/replication/wait", json={"timeout_seconds": 0.3})
    assert r.status_code == 409, r.text
    assert "bytes behind" in r.json()["detail"]
    shown = geo("GET", "/v1/disks/w").json()["replication"]
    assert shown["state"] == "lagging" and shown["lag_bytes"] > 0, shown
    drain = threading.Timer(0.3, geo.replicate)  # the replicator's next pass, while we wait
    drain.start()
    r = geo("POST", "/v1/disks/w/replication/wait", json={"timeout_seconds": 30})
    drain.join()
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "synced" and r.json()["lag_bytes"] == 0
    assert geo.secondary is not None
    vid = geo("GET", "/v1/disks/w").json()["volume_id"]
    view = Volume.open(geo.secondary, vid, writable=False)
    assert view.read(0, 65536) == payload
    view.close()
    # Without a body it waits the default time; bad input and other disks answer clearly.
    assert geo("POST", "/v1/disks/w/replication/wait").status_code == 200
    for bad in (
        {"timeout_seconds": 0},
        {"timeout_seconds": -1},
        {"timeout_seconds": "x"},
        {"timeout_seconds": 4000},
        {"timeout": 5},
    ):
        assert geo("POST", "/v1/disks/w/replication/wait", json=bad).status_code == 422, bad
    geo("POST", "/v1/disks", json={"name": "l", "size_bytes": MiB, "kind": "data"})
    r = geo("POST", "/v1/disks/l/replication/wait")
    assert r.status_code == 409 and "lrs" in r.json()["detail"]
    assert geo("POST", "/v1/disks/nosuch/replication/wait").status_code == 404
    assert geo("POST", "/v1/disks/BAD_/replication/wait").status_code == 422
    geo("POST", "/v1/disks/w/detach")
