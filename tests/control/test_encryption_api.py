"""Encrypted disks through the front door (issue #20): real SeaweedFS, the API, nbdkit exports
and libnbd. An encrypted disk written through NBD (readwrite caching) leaves no plaintext in the
bucket and reads back; its clone is encrypted under a key of its own; a plain disk beside it is
stored as before; rotating the KEK over the API rewrites no data object and the disk still
reads with only the new KEK on the host; deleting the disk leaves no key behind."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.crypto import disk as crypto_disk
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.host import contract
from tests.support.apihost import Host, nbd_read, nbd_write_all, wait_op
from tests.support.seaweed import SeaweedServer

MiB, KiB = 1 << 20, 1 << 10
_n = itertools.count()
PATTERN = (b"front door plaintext pattern, never in the bucket. " * 2000)[: 64 * KiB]


@pytest.fixture
def api(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[Host]:
    home = tmp_path / "a"
    # What `blockstore serve` does at start-up; the exports get the directory from the
    # supervisor (host/contract.py).
    crypto_disk.set_provider(LocalKeyFile(contract.kek_dir(home)))
    host = Host(seaweed, f"enc-{next(_n)}-{os.getpid()}/", home)
    yield host
    host.close()
    crypto_disk.set_provider(None)


def objects(api: Host) -> dict[str, bytes]:
    return {o.key: api.store.get(o.key) for o in api.store.list("disks/")}


def create(api: Host, name: str, **extra: object) -> dict[str, object]:
    body = {"name": name, "size_bytes": 16 * MiB, "kind": "data", **extra}
    r = api("POST", "/v1/disks", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_encrypted_disk_through_the_api_nbd_rotation_and_delete(api: Host) -> None:
    disk = create(api, "sec", encrypted=True, caching="readwrite")
    assert disk["encrypted"] is True
    assert disk["encryption"]["wrapped_by"] == ["local-1"]  # type: ignore[index]
    assert create(api, "plain")["encryption"] is None
    writes = [(0, PATTERN), (5 * MiB + 4 * KiB, PATTERN[: 8 * KiB]), (15 * MiB, PATTERN)]
    for name in ("sec", "plain"):
        sock = api("POST", f"/v1/disks/{name}/attach", json={"vm": f"vm-{name}"}).json()["socket"]
        nbd_write_all(sock, writes)
        want = bytes(4 * KiB) + PATTERN[: 8 * KiB] + bytes(4 * KiB)
        assert nbd_read(sock, 5 * MiB, 16 * KiB) == want
        assert api("POST", f"/v1/disks/{name}/detach").status_code == 200
    sec_id, plain_id = (api("GET", f"/v1/disks/{n}").json()["volume_id"] for n in ("sec", "plain"))
    stored = objects(api)
    probe = PATTERN[:48]
    assert not [k for k, v in stored.items() if f"/{sec_id}/" in k and probe in v]
    assert [k for k, v in stored.items() if f"/{plain_id}/" in k and probe in v], "plain disk"

    # A clone is encrypted too, under a key of its own, and reads its source's records.
    assert api("POST", "/v1/disks/sec/snapshots", json={"name": "s1"}).status_code == 201
    clone = create(api, "copy", source_snapshot="sec/s1")
    assert clone["encrypted"] is True
    # Its own key, and its source's rewrapped under it (the source may be deleted first).
    (own,) = set(clone["encryption"]["data_keys"]) - set(disk["encryption"]["data_keys"])  # type: ignore[index]
    assert set(clone["encryption"]["data_keys"]) == {own, *disk["encryption"]["data_keys"]}  # type: ignore[index]
    sock = api("POST", "/v1/disks/copy/attach", json={"vm": "vm-copy"}).json()["socket"]
    assert nbd_read(sock, 15 * MiB, len(PATTERN)) == PATTERN
    api("POST", "/v1/disks/copy/detach")

    # Rotation: new KEK, every encrypted disk's keys rewrapped, no data object touched.
    before = {k: v for k, v in objects(api).items() if "/keys/" not in k}
    r = api("POST", "/v1/encryption/rotate")
    assert r.status_code == 200, r.text
    assert r.json()["current_kek"] == "local-2"
    assert sorted(d["disk"] for d in r.json()["disks"]) == ["copy", "sec"]
    assert {d["disk"]: d["keys_rewrapped"] for d in r.json()["disks"]} == {"sec": 1, "copy": 2}
    after = {k: v for k, v in objects(api).items() if "/keys/" not in k}
    assert after == before
    assert api("GET", "/v1/disks/sec").json()["encryption"]["wrapped_by"] == ["local-2"]
    status = api("GET", "/v1/encryption").json()
    assert status["current_kek"] == "local-2" and status["encrypted_disks"] == ["copy", "sec"]
    (contract.kek_dir(api.supervisor.config.home) / "1.key").unlink()  # the old KEK is gone
    sock = api("POST", "/v1/disks/sec/attach", json={"vm": "vm-sec"}).json()["socket"]
    assert nbd_read(sock, 0, len(PATTERN)) == PATTERN
    api("POST", "/v1/disks/sec/detach")

    # A host without the KEK cannot open the disk: 503 with what to do, nothing changed.
    kek_dir = contract.kek_dir(api.supervisor.config.home)
    kek_dir.rename(kek_dir.with_name("kek-away"))
    r = api("POST", "/v1/disks/sec/snapshots", json={"name": "s2"})
    assert r.status_code == 503 and "KEK" in r.json()["detail"], r.text
    kek_dir.with_name("kek-away").rename(kek_dir)

    # Bad input: an ephemeral disk never reaches the store, so it cannot be encrypted.
    r = api("POST", "/v1/disks", json={"name": "eph", "size_bytes": MiB, "kind": "ephemeral",
                                       "encrypted": True})  # fmt: skip
    assert r.status_code == 422 and "encryption" in r.json()["detail"]

    # Delete: the keys go first; nothing of the disk is left.
    for name in ("copy", "sec"):
        r = api("DELETE", f"/v1/disks/{name}")
        assert wait_op(api, r.json())["status"] == "succeeded", r.text
    assert not [k for k in objects(api) if f"/{sec_id}/" in k]


def test_compressed_disks_through_the_api_and_nbd(api: Host) -> None:
    """zstd and lz4 disks, one of them encrypted too, take text through NBD in readwrite and
    none, read it back, and store less than a plain disk; a clone compresses as its source."""
    text = b"".join(f"{i:08d} compressible text in a real file\n".encode() for i in range(60000))
    text = text[: 2 * MiB]
    disks: dict[str, dict[str, object]] = {
        "plain": {},
        "z": {"compression": "zstd", "caching": "readwrite"},
        "lz": {"compression": "lz4"},
        "ze": {"compression": "zstd", "encrypted": True},
    }
    for name, extra in disks.items():
        assert create(api, name, **extra)["compression"] == extra.get("compression", "none")
        sock = api("POST", f"/v1/disks/{name}/attach", json={"vm": f"vm-{name}"}).json()["socket"]
        nbd_write_all(sock, [(0, text), (8 * MiB, os.urandom(256 * KiB))])
        assert nbd_read(sock, 4 * KiB, 64 * KiB) == text[4 * KiB : 68 * KiB]
        assert api("POST", f"/v1/disks/{name}/detach").status_code == 200
    stored = {n: api("GET", f"/v1/disks/{n}").json()["bytes_stored"] for n in disks}
    for name in ("z", "lz", "ze"):
        assert stored[name] < stored["plain"] - MiB, stored
    sock = api("POST", "/v1/disks/ze/attach", json={"vm": "vm-ze"}).json()["socket"]
    assert nbd_read(sock, 0, 2 * MiB) == text
    api("POST", "/v1/disks/ze/detach")
    assert api("POST", "/v1/disks/z/snapshots", json={"name": "s"}).status_code == 201
    assert create(api, "zc", source_snapshot="z/s")["compression"] == "zstd"
    r = api("POST", "/v1/disks", json={"name": "g", "size_bytes": MiB, "kind": "data",
                                       "compression": "gzip"})  # fmt: skip
    assert r.status_code == 422, r.text
    r = api("POST", "/v1/disks", json={"name": "e", "size_bytes": MiB, "kind": "ephemeral",
                                       "compression": "zstd"})  # fmt: skip
    assert r.status_code == 422 and "compression" in r.json()["detail"]
