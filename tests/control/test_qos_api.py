"""QoS caps through the API, without load (the load tests: tests/nbd/test_nbd_qos.py): set at
create, shown by GET, changed and lifted by PATCH, refused with a reason when they make no
sense (422), and kept off ephemeral disks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.apihost import Host, new_host
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
_n = itertools.count()


@pytest.fixture
def api(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[Host]:
    with new_host(seaweed, tmp_path / "home", "qosapi") as host:
        yield host


def test_caps_are_set_shown_changed_and_lifted(api: Host) -> None:
    body = {"name": "d", "size_bytes": 16 * MiB, "kind": "data", "iops_limit": 500,
            "mbps_limit": 25.5, "burst_iops": 2000, "burst_seconds": 60}  # fmt: skip
    r = api("POST", "/v1/disks", json=body)
    assert r.status_code == 201, r.text
    qos = r.json()["qos"]
    assert qos == {"iops_limit": 500, "mbps_limit": 25.5, "burst_iops": 2000, "burst_mbps": 0.0,
                   "burst_seconds": 60, "live": None}  # fmt: skip
    assert api("POST", "/v1/disks", json=body).status_code == 200  # the same again
    r = api("POST", "/v1/disks", json={**body, "iops_limit": 600})
    assert r.status_code == 409 and "qos" in r.json()["detail"]

    r = api("PATCH", "/v1/disks/d", json={"mbps_limit": 0})  # lifts that cap only
    assert r.status_code == 200, r.text
    assert r.json()["qos"]["mbps_limit"] == 0 and r.json()["qos"]["iops_limit"] == 500
    r = api("PATCH", "/v1/disks/d", json={"iops_limit": 0})
    assert r.status_code == 422  # the burst would be left without a baseline
    assert "burst_iops needs iops_limit" in r.json()["detail"]
    r = api("PATCH", "/v1/disks/d", json={"iops_limit": 0, "burst_iops": 0})
    assert r.status_code == 200, r.text
    assert api("GET", "/v1/disks/d").json()["qos"]["iops_limit"] == 0
    plain = api("POST", "/v1/disks", json={"name": "p", "size_bytes": 16 * MiB, "kind": "data"})
    assert plain.status_code == 201 and plain.json()["qos"]["iops_limit"] == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"iops_limit": -1}, "greater than or equal to 0"),
        ({"iops_limit": 1.5}, "valid integer"),
        ({"mbps_limit": "10"}, "valid number"),
        ({"burst_iops": 100}, "burst_iops needs iops_limit"),
        ({"burst_seconds": 100}, "burst settings need iops_limit or mbps_limit"),
        ({"iops_limit": 500, "burst_iops": 100}, "burst_iops (100) must be at least iops_limit"),
        ({"mbps_limit": 5, "burst_seconds": 0}, "greater than 0"),
        ({"kind": "ephemeral", "iops_limit": 100}, "ephemeral disks"),
    ],
)
def test_bad_caps_are_refused_with_a_reason(api: Host, body: dict[str, object], says: str) -> None:
    r = api(
        "POST", "/v1/disks", json={"name": "bad", "size_bytes": 16 * MiB, "kind": "data", **body}
    )
    assert r.status_code == 422, r.text
    assert says in r.text
    assert api("GET", "/v1/disks/bad").status_code == 404


def test_caps_of_a_disk_attached_elsewhere_change_on_that_host(
    seaweed: SeaweedServer, tmp_path: Path
) -> None:
    """Two hosts on one bucket: only the host serving the disk can hand its export new caps
    (409 elsewhere, naming the host); that host's PATCH is applied to its running export."""
    prefix = f"qos2-{next(_n)}-{os.getpid()}/"
    a, b = Host(seaweed, prefix, tmp_path / "a"), Host(seaweed, prefix, tmp_path / "b")
    try:
        r = a("POST", "/v1/disks", json={"name": "d", "size_bytes": 16 * MiB, "kind": "data"})
        assert r.status_code == 201, r.text
        assert a("POST", "/v1/disks/d/attach", json={"vm": "vm1"}).status_code == 200
        r = b("PATCH", "/v1/disks/d", json={"iops_limit": 100})
        assert r.status_code == 409 and "attached on host" in r.json()["detail"], r.text
        r = a("PATCH", "/v1/disks/d", json={"iops_limit": 100})
        assert r.status_code == 200 and r.json()["qos"]["iops_limit"] == 100, r.text
        assert b("GET", "/v1/disks/d").json()["qos"]["iops_limit"] == 100
    finally:
        a.close()
        b.close()
