"""Backups through the front door, across two real SeaweedFS servers: the primary and a backup
target. A snapshot backs up; a second backup after 1% of the disk changed copies only what is
new; the source disk is deleted and a restore brings its data back, read through NBD. A target
that is unreachable, full, or holds a damaged copy fails with a clear error and leaves no
backup listed."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.crypto import disk as crypto_disk
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.format import keys
from blockstore.host import contract
from blockstore.store.base import ObjectStore
from blockstore.store.retry import RetryConfig
from blockstore.store.stack import build_store
from tests.support.apihost import Host, nbd_read, nbd_write_all, wait_op
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import SeaweedServer

MiB, KiB = 1 << 20, 1 << 10
_n = itertools.count()


@pytest.fixture
def setup(
    seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path: Path
) -> Iterator[tuple[Host, ObjectStore, FaultProxy]]:
    prefix = f"backups-{next(_n)}-{os.getpid()}/"
    retry = RetryConfig(deadline_seconds=3)
    target = build_store(seaweed2.s3_config(prefix + "vault/"), retry)
    proxy = FaultProxy(seaweed2.endpoint)
    flaky = build_store(dataclasses.replace(seaweed2.s3_config(prefix + "flaky/"),
                                            endpoint=proxy.endpoint), retry)  # fmt: skip
    dead = dataclasses.replace(seaweed2.s3_config(prefix), endpoint="http://127.0.0.1:9")
    gone = build_store(dead, retry)
    crypto_disk.set_provider(LocalKeyFile(contract.kek_dir(tmp_path / "a")))  # as serve does
    host = Host(seaweed, prefix, tmp_path / "a",
                backups={"vault": target, "flaky": flaky, "gone": gone})  # fmt: skip
    yield host, target, proxy
    host.close()
    crypto_disk.set_provider(None)
    for s in (target, flaky, gone):
        s.close()
    proxy.close()


def backup(api: Host, disk: str, snap: str, target: str) -> dict:  # type: ignore[type-arg]
    r = api("POST", f"/v1/disks/{disk}/snapshots/{snap}/backup", json={"target": target})
    assert r.status_code == 202, r.text
    return wait_op(api, r.json())


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_incremental_backup_and_restore_after_the_source_is_gone(
    setup: tuple[Host, ObjectStore, FaultProxy], encrypted: bool
) -> None:
    api, target, _proxy = setup
    size = 16 * MiB
    body = {"name": "src", "size_bytes": size, "kind": "data", "encrypted": encrypted}
    assert api("POST", "/v1/disks", json=body).status_code == 201
    sock = api("POST", "/v1/disks/src/attach", json={"vm": "vm1"}).json()["socket"]
    image = bytearray(os.urandom(size))
    nbd_write_all(sock, [(off, bytes(image[off : off + MiB])) for off in range(0, size, MiB)])
    assert api("POST", "/v1/disks/src/snapshots", json={"name": "s1"}).status_code == 201
    assert backup(api, "src", "s1", "vault")["status"] == "succeeded"
    first = api("GET", "/v1/backups", params={"target": "vault"}).json()["backups"]
    assert len(first) == 1 and first[0]["snapshot"] == "s1"
    assert first[0]["copied_bytes"] >= size
    # An encrypted disk's backup is ciphertext: the target never sees its bytes.
    in_target = [
        o.key for o in target.list("") if bytes(image[MiB : MiB + 64]) in target.get(o.key)
    ]
    assert bool(in_target) is not encrypted, in_target

    # 1% of the disk changes; the second backup copies about that, not the disk again.
    change = [(off, os.urandom(4 * KiB)) for off in range(0, size, 400 * KiB)]
    nbd_write_all(sock, change)
    for off, data in change:
        image[off : off + len(data)] = data
    api("POST", "/v1/disks/src/snapshots", json={"name": "s2"})
    assert backup(api, "src", "s2", "vault")["status"] == "succeeded"
    second = next(b for b in api("GET", "/v1/backups").json()["backups"] if b["snapshot"] == "s2")
    # Only the segments of the 41 writes (one each in caching none) and the new checkpoint.
    assert second["copied_bytes"] < size // 20, second
    assert second["copied_objects"] <= len(change) + 1, second
    print(
        f"backup 1: {first[0]['copied_objects']} objects, {first[0]['copied_bytes']} bytes; "
        f"after 1% changed: {second['copied_objects']} objects, {second['copied_bytes']} bytes"
    )

    # The source disk is deleted; the backup restores it.
    api("POST", "/v1/disks/src/detach")
    for s in ("s1", "s2"):
        api("DELETE", f"/v1/disks/src/snapshots/{s}")
    assert wait_op(api, api("DELETE", "/v1/disks/src").json())["status"] == "succeeded"
    r = api("POST", f"/v1/backups/vault/{second['id']}/restore", json={"name": "back"})
    assert r.status_code == 202, r.text
    assert wait_op(api, r.json()["operation"])["status"] == "succeeded"
    disk = api("GET", "/v1/disks/back").json()
    assert disk["source_backup"] == {"target": "vault", "id": second["id"]}
    assert bool(disk["encryption"]) is encrypted
    sock = api("POST", "/v1/disks/back/attach", json={"vm": "vm2"}).json()["socket"]
    assert nbd_read(sock, 0, size) == bytes(image)
    nbd_write_all(sock, [(0, b"n" * 4096)])  # the restored disk takes writes like any other
    assert nbd_read(sock, 0, 4096) == b"n" * 4096
    image[:4096] = b"n" * 4096

    # A restored disk backs up and restores again (its objects are verified like any).
    assert api("POST", "/v1/disks/back/snapshots", json={"name": "r1"}).status_code == 201
    assert backup(api, "back", "r1", "vault")["status"] == "succeeded"
    again = next(b for b in api("GET", "/v1/backups").json()["backups"] if b["disk"] == "back")
    r = api("POST", f"/v1/backups/vault/{again['id']}/restore", json={"name": "back3"})
    assert wait_op(api, r.json()["operation"])["status"] == "succeeded"
    sock3 = api("POST", "/v1/disks/back3/attach", json={"vm": "vm3"}).json()["socket"]
    assert nbd_read(sock3, 0, size) == bytes(image)

    # A damaged copy in the target: the next backup stops with a clear error, lists nothing.
    held_by = api("GET", f"/v1/backups/vault/{second['id']}").json()["objects"]
    victim = keys.backup_object_key(next(k for k in sorted(held_by) if "/seg/" in k))
    blob = bytearray(target.get(victim))
    blob[-1] ^= 1
    target.put(victim, bytes(blob))
    restore = api("POST", f"/v1/backups/vault/{second['id']}/restore", json={"name": "back2"})
    op = wait_op(api, restore.json()["operation"])
    assert op["status"] == "failed" and "damaged" in op["error"]
    assert api("GET", "/v1/disks/back2").status_code == 404, "a failed restore leaves nothing"
    held = {o.key.split("/")[1] for o in api.store.list("disks/")}
    back3 = api("GET", "/v1/disks/back3").json()["volume_id"]
    assert held == {disk["volume_id"], back3}, "the failed restore's objects are gone"


def test_unreachable_full_or_damaged_targets_fail_clearly(
    setup: tuple[Host, ObjectStore, FaultProxy],
) -> None:
    api, target, proxy = setup
    api("POST", "/v1/disks", json={"name": "d", "size_bytes": 4 * MiB, "kind": "data"})
    sock = api("POST", "/v1/disks/d/attach", json={"vm": "vm1"}).json()["socket"]
    nbd_write_all(sock, [(0, os.urandom(MiB))])
    api("POST", "/v1/disks/d/snapshots", json={"name": "s"})
    op = backup(api, "d", "s", "gone")
    assert op["status"] == "failed" and op["error"], op
    proxy.arm("full", methods={"PUT"})
    op = backup(api, "d", "s", "flaky")
    assert op["status"] == "failed" and ("507" in op["error"] or "Storage" in op["error"]), op
    proxy.clear()
    listed = api("GET", "/v1/backups").json()["backups"]
    assert [b["target"] for b in listed] == [], "a failed backup is never listed"
    assert backup(api, "d", "s", "flaky")["status"] == "succeeded"
    (done,) = api("GET", "/v1/backups", params={"target": "flaky"}).json()["backups"]
    # A copy in the target that a complete backup recorded, damaged since: the next backup
    # that needs it stops and is not listed.
    assert backup(api, "d", "s", "vault")["status"] == "succeeded"
    seg = next(o for o in target.list(keys.BACKUP_OBJECTS_PREFIX) if "/seg/" in o.key)
    target.put(seg.key, b"not what was copied")
    api("POST", "/v1/disks/d/snapshots", json={"name": "s2"})
    op = backup(api, "d", "s2", "vault")
    assert op["status"] == "failed" and "damaged or replaced" in op["error"], op
    vault = api("GET", "/v1/backups", params={"target": "vault"}).json()["backups"]
    assert [b["snapshot"] for b in vault] == ["s"]
    for body, path, status in [
        ({"target": "nosuch"}, "/v1/disks/d/snapshots/s/backup", 404),
        ({"target": "vault"}, "/v1/disks/d/snapshots/nosnap/backup", 404),
        ({"target": "vault", "x": 1}, "/v1/disks/d/snapshots/s/backup", 422),
        ({"name": "z"}, "/v1/backups/vault/nosuch/restore", 404),
        ({"name": "d"}, f"/v1/backups/flaky/{done['id']}/restore", 409),
        ({"name": "Bad"}, f"/v1/backups/flaky/{done['id']}/restore", 422),
    ]:
        r = api("POST", path, json=body)
        assert r.status_code == status, (path, r.text)
        assert r.json()["detail"]
