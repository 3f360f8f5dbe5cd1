"""Consistency groups through the front door: real SeaweedFS, the API, nbdkit and libnbd.

A guest-like writer keeps two disks busy with dependent records: data record i on one disk,
then, once that write is acknowledged, log record i on the other (`readwrite`, so the log's
writes are acknowledged from the host cache). Group snapshots are taken at random moments
meanwhile; every one must hold, for every log record it has, that record's data (nothing
acknowledged after the cut shows without what was acknowledged before it), and every log record
acknowledged before the call."""

from __future__ import annotations

import itertools
import os
import random
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest

from blockstore.engine.volume import Volume
from tests.support.apihost import Host, nbd_read
from tests.support.seaweed import SeaweedServer

KiB, MiB = 1 << 10, 1 << 20
RECORDS = 2048  # records the disks have room for (4 KiB each)
_n = itertools.count()


@pytest.fixture
def hosts(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    prefix = f"groups-{next(_n)}-{os.getpid()}/"
    a, b = Host(seaweed, prefix, tmp_path / "a"), Host(seaweed, prefix, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def record(kind: bytes, i: int) -> bytes:
    return (kind + struct.pack("<Q", i)) * (4 * KiB // 9) + bytes(4 * KiB % 9)


class Writer:
    """Data record i, then log record i once the data write is acknowledged; `acked` is the
    last log record acknowledged."""

    def __init__(self, data_sock: str, log_sock: str) -> None:
        self.data, self.log = nbd.NBD(), nbd.NBD()
        self.data.connect_unix(data_sock)
        self.log.connect_unix(log_sock)
        self.acked = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i in range(1, RECORDS):
                if self.stop.is_set():
                    break
                self.data.pwrite(record(b"D", i), i * 4 * KiB)
                self.log.pwrite(record(b"L", i), i * 4 * KiB)
                self.acked = i
                if i % 16 == 0:
                    self.log.flush()
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        for h in (self.data, self.log):
            h.shutdown()


def members(host: Host, group: str, disks: dict[str, str]) -> dict[str, bytes]:
    """Each member's snapshot `group`, read whole from the store."""
    out = {}
    for name, disk_id in disks.items():
        view = Volume.open_snapshot(host.store, disk_id, group)
        out[name] = view.read(0, RECORDS * 4 * KiB)
        view.close()
    return out


def check_cut(data: bytes, log: bytes, acked_before: int) -> int:
    """The group's log records are 1..k with k >= acked_before, each with its data."""
    k = 0
    for i in range(1, RECORDS):
        if log[i * 4 * KiB : (i + 1) * 4 * KiB] != record(b"L", i):
            break
        k = i
    assert k >= acked_before, f"log record {acked_before}, acknowledged before the call, is missing"
    for i in range(1, k + 1):
        assert data[i * 4 * KiB : (i + 1) * 4 * KiB] == record(b"D", i), f"log {i} without data"
    assert log[(k + 1) * 4 * KiB :].count(0) == len(log) - (k + 1) * 4 * KiB, "a later log record"
    return k


def test_group_snapshots_hold_a_cut_under_a_dependent_writer(hosts: tuple[Host, Host]) -> None:
    api, other = hosts
    size = RECORDS * 4 * KiB
    for name, caching in (("data", "none"), ("log", "readwrite")):
        r = api("POST", "/v1/disks", json={"name": name, "size_bytes": size, "kind": "data",
                                           "caching": caching})  # fmt: skip
        assert r.status_code == 201, r.text
    socks = {n: api("POST", f"/v1/disks/{n}/attach", json={"vm": "vm1"}).json()["socket"]
             for n in ("data", "log")}  # fmt: skip
    ids = {n: api("GET", f"/v1/disks/{n}").json()["volume_id"] for n in ("data", "log")}
    writer = Writer(socks["data"], socks["log"])
    rng = random.Random(7)
    taken = []
    try:
        for g in range(8):
            time.sleep(rng.uniform(0.05, 0.4))
            before = writer.acked
            t0 = time.monotonic()
            r = api("POST", "/v1/snapshot-groups", json={"name": f"g{g}", "disks": ["data", "log"]})
            assert r.status_code == 201, r.text
            assert time.monotonic() - t0 < 10
            taken.append((f"g{g}", before))
    finally:
        writer.close()
    assert writer.error is None, writer.error
    assert writer.acked > taken[-1][1], "the writer went on after the freezes"
    ks = []
    for group, before in taken:
        snap = members(api, group, ids)
        ks.append(check_cut(snap["data"], snap["log"], before))
    assert ks == sorted(ks) and ks[-1] > ks[0], ks

    # The cut after restore: a whole group cloned, attached and read through NBD.
    group, before = taken[3]
    r = api("POST", f"/v1/snapshot-groups/{group}/clone", json={"prefix": "r"})
    assert r.status_code == 201, r.text
    assert sorted(d["name"] for d in r.json()["disks"]) == ["r-data", "r-log"]
    restored = {}
    for n in ("data", "log"):
        sock = api("POST", f"/v1/disks/r-{n}/attach", json={"vm": "vm2"}).json()["socket"]
        restored[n] = nbd_read(sock, 0, size)
    assert check_cut(restored["data"], restored["log"], before) == ks[3]

    listed = api("GET", "/v1/snapshot-groups").json()["groups"]
    assert [g["name"] for g in listed] == [g for g, _ in taken]
    changes = api("GET", "/v1/snapshot-groups/g5/changes", params={"since": "g4"}).json()
    assert [m["disk"] for m in changes["members"]] == ["data", "log"]
    assert all(m["changed_bytes"] > 0 for m in changes["members"])

    # Refusals: a member cloned from; attached on another host; bad input.
    r = api("DELETE", f"/v1/snapshot-groups/{group}")
    assert r.status_code == 409 and "r-" in r.json()["detail"]
    assert api("DELETE", "/v1/snapshot-groups/g0").status_code == 204
    assert api("GET", "/v1/snapshot-groups/g0").status_code == 404
    assert api("POST", "/v1/disks/data/detach").status_code == 200
    other("POST", "/v1/disks/data/attach", json={"vm": "vm3"})
    r = api("POST", "/v1/snapshot-groups", json={"name": "x", "disks": ["data", "log"]})
    assert r.status_code == 409 and "attached on host" in r.json()["detail"]
    cases = [
        ({"name": "y", "disks": []}, 422),
        ({"name": "y", "disks": ["log", "log"]}, 422),
        ({"name": "y", "disks": ["nosuch"]}, 404),
        ({"name": "g1", "disks": ["log"]}, 409),
        ({"name": "Bad", "disks": ["log"]}, 422),
    ]
    for body, status in cases:
        r = api("POST", "/v1/snapshot-groups", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]
