"""The control plane through the API, on a real SeaweedFS and real nbdkit exports.

Covers the disk story of DESIGN.md: defaults by kind, idempotent create, validation errors,
attach/detach with the hypervisor connection details, exclusive attach, snapshots and clones,
changed ranges, resize (offline and online), delete as an operation, ephemeral disks.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from tests.support.apihost import Host, nbd_read, nbd_write, wait_op
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
_n = itertools.count()


@pytest.fixture
def hosts(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    prefix = f"control-{next(_n)}-{os.getpid()}/"
    a = Host(seaweed, prefix, tmp_path / "a")
    b = Host(seaweed, prefix, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def api(hosts: tuple[Host, Host]) -> Host:
    return hosts[0]


def test_create_defaults_and_idempotency(api: Host) -> None:
    r = api("POST", "/v1/disks", json={"name": "os1", "size_gib": 2, "kind": "os"})
    assert r.status_code == 201, r.text
    disk = r.json()
    assert disk["caching"] == "readwrite" and disk["size_bytes"] == 2 << 30
    assert disk["redundancy"] == "lrs" and disk["attachment"] is None
    assert disk["state"] == "ready" and disk["created"]
    data = api("POST", "/v1/disks", json={"name": "data1", "size_bytes": 8 * MiB, "kind": "data"})
    assert data.json()["caching"] == "none"
    again = api("POST", "/v1/disks", json={"name": "os1", "size_gib": 2, "kind": "os"})
    assert again.status_code == 200 and again.json()["volume_id"] == disk["volume_id"]
    clash = api("POST", "/v1/disks", json={"name": "os1", "size_gib": 3, "kind": "os"})
    assert clash.status_code == 409 and "size_bytes" in clash.json()["detail"]
    names = [d["name"] for d in api("GET", "/v1/disks").json()["disks"]]
    assert names == ["data1", "os1"]
    shown = api("GET", "/v1/disks/os1").json()
    assert shown["bytes_stored"] >= 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "Bad_Name", "size_gib": 1, "kind": "data"}, "name"),
        ({"name": "x", "size_bytes": 1000, "kind": "data"}, "multiple of 512"),
        ({"name": "x", "size_bytes": 512, "kind": "data"}, "minimum of 1 MiB"),
        ({"name": "x", "size_gib": 65537, "kind": "data"}, "size_gib"),
        ({"name": "x", "size_gib": 1, "kind": "floppy"}, "kind"),
        ({"name": "x", "size_gib": 1, "kind": "data", "caching": "fast"}, "caching"),
        ({"name": "x", "size_gib": 1, "size_bytes": 1 << 30, "kind": "data"}, "not both"),
        ({"name": "x", "kind": "data"}, "size_bytes or size_gib"),
        ({"name": "x", "size_gib": 1, "kind": "ephemeral", "caching": "readwrite"}, "caching"),
        ({"name": "x", "size_gib": 1, "kind": "data", "colour": "red"}, "colour"),
        ({"name": "x", "size_gib": 1, "kind": "data", "source_snapshot": "nosuch"}, "source"),
    ],
)
def test_bad_input_is_422_with_a_message(api: Host, body: dict[str, Any], words: str) -> None:
    r = api("POST", "/v1/disks", json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]


def test_not_found_and_bad_names(api: Host) -> None:
    assert api("GET", "/v1/disks/nosuch").status_code == 404
    assert api("GET", "/v1/disks/UPPER").status_code == 422
    assert api("POST", "/v1/disks/nosuch/attach", json={"vm": "vm1"}).status_code == 404
    assert api("GET", "/v1/operations/op-0000").status_code == 404
    r = api(
        "POST",
        "/v1/disks",
        json={"name": "y", "size_gib": 1, "kind": "data", "source_snapshot": "nosuch/snap"},
    )
    assert r.status_code == 404 and "nosuch" in r.json()["detail"]


def test_attach_write_detach_reattach_elsewhere(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a("POST", "/v1/disks", json={"name": "d1", "size_bytes": 16 * MiB, "kind": "data"})
    att = a("POST", "/v1/disks/d1/attach", json={"vm": "penguin1"}).json()
    assert att["nbd_uri"] == f"nbd+unix:///d1?socket={att['socket']}"
    assert "driver=nbd" in att["qemu_blockdev"] and att["socket"] in att["qemu_blockdev"]
    assert "<disk type='network'" in att["libvirt_xml"] and "protocol='nbd'" in att["libvirt_xml"]
    assert oct(Path(att["socket"]).parent.stat().st_mode & 0o777) == "0o700"
    assert a("POST", "/v1/disks/d1/attach", json={"vm": "penguin1"}).json() == att
    payload = os.urandom(64 * 1024)
    nbd_write(att["socket"], 4 * MiB, payload)

    r = a("DELETE", "/v1/disks/d1")
    assert r.status_code == 409 and "detach" in r.json()["detail"]
    r = a("POST", "/v1/disks/d1/attach", json={"vm": "penguin2"})
    assert r.status_code == 409 and "penguin1" in r.json()["detail"]
    r = b("POST", "/v1/disks/d1/attach", json={"vm": "penguin2"})
    assert r.status_code == 409  # the other host sees the attachment too

    detached = a("POST", "/v1/disks/d1/detach").json()
    assert detached["attachment"] is None
    assert not Path(att["socket"]).exists()
    att2 = b("POST", "/v1/disks/d1/attach", json={"vm": "penguin2"}).json()
    assert nbd_read(att2["socket"], 4 * MiB, len(payload)) == payload
    b("POST", "/v1/disks/d1/detach")


def test_force_attach_fences_the_old_host(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a("POST", "/v1/disks", json={"name": "d2", "size_bytes": 16 * MiB, "kind": "data"})
    old = a("POST", "/v1/disks/d2/attach", json={"vm": "vm-a"}).json()
    nbd_write(old["socket"], 0, b"A" * 4096)
    new = b("POST", "/v1/disks/d2/attach", json={"vm": "vm-b", "force": True}).json()
    assert new["host"] != old["host"]
    # The old host's writer is fenced: its next durable write fails and is never visible.
    h = nbd.NBD()
    h.connect_unix(old["socket"])
    with pytest.raises(nbd.Error):
        h.pwrite(b"B" * 4096, 0)
        h.flush()
    h.shutdown()
    assert nbd_read(new["socket"], 0, 4096) == b"A" * 4096
    b("POST", "/v1/disks/d2/detach")


def test_snapshot_clone_and_changes(api: Host) -> None:
    api("POST", "/v1/disks", json={"name": "src", "size_bytes": 16 * MiB, "kind": "data"})
    att = api("POST", "/v1/disks/src/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"1" * 8192)
    r = api("POST", "/v1/disks/src/snapshots", json={"name": "s1"})
    assert r.status_code == 201, r.text
    assert api("POST", "/v1/disks/src/snapshots", json={"name": "s1"}).status_code == 200
    nbd_write(att["socket"], 1 * MiB, b"2" * 4096)
    assert api("POST", "/v1/disks/src/snapshots", json={"name": "s2"}).status_code == 201
    snaps = api("GET", "/v1/disks/src/snapshots").json()["snapshots"]
    assert [s["name"] for s in snaps] == ["s1", "s2"]
    changes = api("GET", "/v1/disks/src/snapshots/s2/changes", params={"since": "s1"}).json()
    assert changes["ranges"] == [{"offset": MiB, "length": 4096}]
    full = api("GET", "/v1/disks/src/snapshots/s1/changes").json()
    assert full["ranges"] == [{"offset": 0, "length": 8192}]
    assert api("GET", "/v1/disks/src/snapshots/nope/changes").status_code == 404

    r = api(
        "POST", "/v1/disks", json={"name": "clone", "kind": "data", "source_snapshot": "src/s1"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["size_bytes"] == 16 * MiB
    c = api("POST", "/v1/disks/clone/attach", json={"vm": "vm2"}).json()
    assert nbd_read(c["socket"], 0, 8192) == b"1" * 8192
    assert nbd_read(c["socket"], MiB, 4096) == bytes(4096)  # written after s1
    nbd_write(c["socket"], 0, b"3" * 4096)  # the clone diverges
    assert nbd_read(att["socket"], 0, 4096) == b"1" * 4096

    r = api("DELETE", "/v1/disks/src/snapshots/s1")
    assert r.status_code == 409 and "clone" in r.json()["detail"]
    api("POST", "/v1/disks/src/detach")
    r = api("DELETE", "/v1/disks/src")
    assert r.status_code == 409 and "clone" in r.json()["detail"]
    assert api("DELETE", "/v1/disks/src/snapshots/s2").status_code == 204
    assert api("DELETE", "/v1/disks/src/snapshots/s2").status_code == 404
    api("POST", "/v1/disks/clone/detach")


def test_resize_offline_online_and_shrink_rules(api: Host) -> None:
    api("POST", "/v1/disks", json={"name": "r1", "size_bytes": 8 * MiB, "kind": "os"})
    r = api("PATCH", "/v1/disks/r1", json={"size_bytes": 16 * MiB})
    assert r.status_code == 200 and r.json()["size_bytes"] == 16 * MiB
    att = api("POST", "/v1/disks/r1/attach", json={"vm": "vm1"}).json()
    h = nbd.NBD()
    h.connect_unix(att["socket"])
    assert h.get_size() == 16 * MiB
    h.shutdown()
    r = api("PATCH", "/v1/disks/r1", json={"size_bytes": 32 * MiB})
    assert r.status_code == 200, r.text
    h = nbd.NBD()
    h.connect_unix(att["socket"])
    assert h.get_size() == 32 * MiB  # new connections see the new size
    h.pwrite(b"x" * 4096, 32 * MiB - 4096)
    h.flush()
    h.shutdown()
    r = api("PATCH", "/v1/disks/r1", json={"size_bytes": 8 * MiB})
    assert r.status_code == 409 and "allow_shrink" in r.json()["detail"]
    api("POST", "/v1/disks/r1/detach")
    r = api("PATCH", "/v1/disks/r1", json={"size_bytes": 8 * MiB, "allow_shrink": True})
    assert r.status_code == 200 and r.json()["size_bytes"] == 8 * MiB
    r = api("PATCH", "/v1/disks/r1", json={"caching": "readonly"})
    assert r.json()["caching"] == "readonly"


def test_delete_is_an_operation_and_frees_the_name(api: Host) -> None:
    api("POST", "/v1/disks", json={"name": "gone", "size_bytes": 8 * MiB, "kind": "data"})
    att = api("POST", "/v1/disks/gone/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"z" * 65536)
    api("POST", "/v1/disks/gone/detach")
    vid = api("GET", "/v1/disks/gone").json()["volume_id"]
    r = api("DELETE", "/v1/disks/gone")
    assert r.status_code == 202
    assert api("GET", "/v1/disks/gone").status_code == 404  # gone from listings at once
    op = wait_op(api, r.json())
    assert op["status"] == "succeeded", op
    assert list(api.store.list(f"disks/{vid}/")) == []
    r = api("POST", "/v1/disks", json={"name": "gone", "size_bytes": 8 * MiB, "kind": "data"})
    assert r.status_code == 201
    listed = api("GET", "/v1/operations", params={"target": "gone"}).json()
    assert [(o["id"], o["kind"], o["status"]) for o in listed] == [
        (op["id"], "delete-disk", "succeeded")
    ]
    assert api("GET", "/v1/operations", params={"status": "running"}).json() == []
    r = api("GET", "/v1/operations", params={"status": "done"})
    assert r.status_code == 422 and "running, succeeded, failed" in r.json()["detail"]


def test_ephemeral_disk_is_local_to_its_host(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    r = a("POST", "/v1/disks", json={"name": "tmp1", "size_bytes": 8 * MiB, "kind": "ephemeral"})
    assert r.status_code == 201 and r.json()["caching"] == "none"
    att = a("POST", "/v1/disks/tmp1/attach", json={"vm": "vm1"}).json()
    nbd_write(att["socket"], 0, b"e" * 4096)
    assert nbd_read(att["socket"], 0, 4096) == b"e" * 4096
    assert a("POST", "/v1/disks/tmp1/snapshots", json={"name": "s"}).status_code == 422
    a("POST", "/v1/disks/tmp1/detach")
    moved = b("POST", "/v1/disks/tmp1/attach", json={"vm": "vm1"}).json()
    assert nbd_read(moved["socket"], 0, 4096) == bytes(4096)  # a new host: an empty disk
    b("POST", "/v1/disks/tmp1/detach")
    back = a("POST", "/v1/disks/tmp1/attach", json={"vm": "vm1"}).json()
    assert nbd_read(back["socket"], 0, 4096) == b"e" * 4096
    a("POST", "/v1/disks/tmp1/detach")


def test_metrics_show_per_disk_io(api: Host) -> None:
    api("POST", "/v1/disks", json={"name": "m1", "size_bytes": 8 * MiB, "kind": "os"})
    att = api("POST", "/v1/disks/m1/attach", json={"vm": "vm1"}).json()
    for i in range(5):
        nbd_write(att["socket"], i * 4096, b"m" * 4096)
    nbd_read(att["socket"], 0, 4096)
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        text = api.client.get("/metrics").text
        if 'blockstore_disk_ops_total{disk="m1",op="write"} 5.0' in text:
            break
        time.sleep(0.5)
    assert 'blockstore_disk_ops_total{disk="m1",op="write"} 5.0' in text
    assert 'blockstore_disk_bytes_total{disk="m1",op="write"} 20480.0' in text
    assert 'blockstore_disk_latency_seconds_count{disk="m1",op="flush"} 5.0' in text
    assert 'blockstore_disk_cache_hits_total{disk="m1"}' in text
    assert 'blockstore_disk_dirty_bytes{disk="m1"}' in text
    assert 'blockstore_store_requests_total{op="put"}' in text
    api("POST", "/v1/disks/m1/detach")


def test_each_disk_of_a_vm_gets_its_own_target_and_a_valid_node_name(api: Host) -> None:
    """libvirt refuses two disks with one target, QEMU node names over 31 characters: every
    attachment of a VM has its own target for its life, and every valid disk name (up to 63
    characters) gives a valid node name."""
    long_a, long_b = "d" * 62 + "a", "d" * 62 + "b"
    for name, kind in (("root1", "os"), (long_a, "data"), (long_b, "data"), ("extra", "data")):
        assert api("POST", "/v1/disks", json={"name": name, "size_gib": 1, "kind": kind}).is_success
    got = {}
    for name in ("root1", long_a, long_b):
        att = api("POST", f"/v1/disks/{name}/attach", json={"vm": "vm-t"}).json()
        got[name] = att
    assert [got[n]["target"] for n in ("root1", long_a, long_b)] == ["vda", "vdb", "vdc"]
    nodes = set()
    for att in got.values():
        node = att["qemu_blockdev"].split("node-name=")[1]
        assert len(node) <= 31 and node[0].isalpha(), node
        assert all(c.isalnum() or c in "-_." for c in node), node
        assert f"<target dev='{att['target']}' bus='virtio'/>" in att["libvirt_xml"]
        nodes.add(node)
    assert len(nodes) == 3
    # Re-attaching (an export restart renews the epoch) keeps the target; a freed one is reused.
    assert api("POST", f"/v1/disks/{long_a}/attach", json={"vm": "vm-t"}).json()["target"] == "vdb"
    assert api("POST", f"/v1/disks/{long_a}/detach").status_code == 200
    assert api("POST", "/v1/disks/extra/attach", json={"vm": "vm-t"}).json()["target"] == "vdb"
    for name in ("root1", long_b, "extra"):
        assert api("POST", f"/v1/disks/{name}/detach").status_code == 200
