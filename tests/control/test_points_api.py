"""Restore points through the front door: real SeaweedFS, the API, nbdkit and libnbd. A disk
with a retention window takes a burst of writes; a new disk made from the point before the
burst holds the state before it; the changed ranges name the burst; a revert in place brings the
disk back, and reverting to the undo position brings the burst back."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.apihost import Host, nbd_read, nbd_write, nbd_write_all, wait_op
from tests.support.seaweed import SeaweedServer

MiB, KiB = 1 << 20, 1 << 10
_n = itertools.count()


@pytest.fixture
def api(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[Host]:
    host = Host(seaweed, f"points-{next(_n)}-{os.getpid()}/", tmp_path / "a")
    yield host
    host.close()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def test_restore_points_clone_changes_revert_and_undo(api: Host) -> None:
    r = api(
        "POST",
        "/v1/disks",
        json={"name": "src", "size_bytes": 16 * MiB, "kind": "data", "retention_seconds": 3600},
    )
    assert r.status_code == 201, r.text
    assert r.json()["retention_seconds"] == 3600
    sock = api("POST", "/v1/disks/src/attach", json={"vm": "vm1"}).json()["socket"]
    good = os.urandom(64 * KiB)
    nbd_write(sock, 0, good)
    t_good = time.time()
    time.sleep(1.5)  # the store's times are whole seconds: the burst lands in a later one
    burst = [(0, b"X" * 64 * KiB), (4 * MiB, b"Y" * 8 * KiB)]
    nbd_write_all(sock, burst)

    listed = api("GET", "/v1/disks/src/restore-points").json()
    assert listed["count"] >= 2 and listed["retention_seconds"] == 3600
    assert sum(m["bytes"] for m in listed["per_minute"]) == sum(
        p["bytes"] for p in listed["points"]
    )
    before = api("GET", "/v1/disks/src/restore-points", params={"to": iso(t_good)}).json()
    assert before["newest"]["position"] < listed["newest"]["position"]

    # A new disk from the point before the burst.
    r = api(
        "POST",
        "/v1/disks",
        json={"name": "pit", "kind": "data", "source_point": {"disk": "src", "time": iso(t_good)}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["source_snapshot"].startswith("src/at-")
    pit = api("POST", "/v1/disks/pit/attach", json={"vm": "vm2"}).json()["socket"]
    assert nbd_read(pit, 0, 64 * KiB) == good
    assert nbd_read(pit, 4 * MiB, 8 * KiB) == bytes(8 * KiB)

    changes = api(
        "GET", "/v1/disks/src/restore-points/changes", params={"since_time": iso(t_good)}
    ).json()
    assert changes["ranges"] == [
        {"offset": 0, "length": 64 * KiB},
        {"offset": 4 * MiB, "length": 8 * KiB},
    ]

    # Revert in place: refused while attached, then done as an operation.
    r = api("POST", "/v1/disks/src/revert", json={"time": iso(t_good)})
    assert r.status_code == 409 and "detach" in r.json()["detail"]
    api("POST", "/v1/disks/src/detach")
    r = api("POST", "/v1/disks/src/revert", json={"time": iso(t_good)})
    assert r.status_code == 202, r.text
    undo = r.json()["undo_position"]
    assert wait_op(api, r.json()["operation"])["status"] == "succeeded"
    sock = api("POST", "/v1/disks/src/attach", json={"vm": "vm1"}).json()["socket"]
    assert nbd_read(sock, 0, 64 * KiB) == good
    assert nbd_read(sock, 4 * MiB, 8 * KiB) == bytes(8 * KiB)

    # Undo: revert to the position the answer named.
    api("POST", "/v1/disks/src/detach")
    r = api("POST", "/v1/disks/src/revert", json={"position": undo})
    assert wait_op(api, r.json()["operation"])["status"] == "succeeded"
    sock = api("POST", "/v1/disks/src/attach", json={"vm": "vm1"}).json()["socket"]
    assert nbd_read(sock, 0, 64 * KiB) == b"X" * 64 * KiB
    assert nbd_read(sock, 4 * MiB, 8 * KiB) == b"Y" * 8 * KiB


def test_bad_points_are_clear_errors(api: Host) -> None:
    api("POST", "/v1/disks", json={"name": "d", "size_bytes": 4 * MiB, "kind": "data"})
    cases = [
        ("POST", "/v1/disks/d/revert", {"position": 1, "time": "2026-01-01T00:00:00Z"}, 422),
        ("POST", "/v1/disks/d/revert", {}, 422),
        ("POST", "/v1/disks/d/revert", {"position": 999999}, 404),
        ("POST", "/v1/disks/d/revert", {"time": "1999-01-01T00:00:00Z"}, 404),
        ("POST", "/v1/disks/nosuch/revert", {"position": 3}, 404),
        (
            "POST",
            "/v1/disks",
            {"name": "e", "kind": "data", "source_point": {"disk": "d", "position": 999999}},
            404,
        ),
        (
            "POST",
            "/v1/disks",
            {
                "name": "e",
                "kind": "data",
                "source_snapshot": "d/s",
                "source_point": {"disk": "d", "position": 1},
            },
            422,
        ),
        ("PATCH", "/v1/disks/d", {"retention_seconds": -1}, 422),
        ("PATCH", "/v1/disks/d", {"retention_seconds": 91 * 86400}, 422),
    ]
    for method, path, body, status in cases:
        r = api(method, path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["detail"]
    r = api("GET", "/v1/disks/d/restore-points/changes")
    assert r.status_code == 422 and "since" in r.json()["detail"]
    r = api("PATCH", "/v1/disks/d", json={"retention_seconds": 600})
    assert r.status_code == 200 and r.json()["retention_seconds"] == 600
    r = api(
        "POST",
        "/v1/disks",
        json={"name": "eph", "size_bytes": 4 * MiB, "kind": "ephemeral", "retention_seconds": 60},
    )
    assert r.status_code == 422 and "restore points" in r.json()["detail"]
