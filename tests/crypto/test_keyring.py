"""Data keys and their wrapping (blockstore/crypto/keyring.py): only wrapped in the store, bound
to their disk and id, rewrapped under a new KEK without any data changing, gone for good when
shredded."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from blockstore.crypto.keyring import (
    EnvKey,
    LocalKeyFile,
    create_key,
    load_keys,
    rewrap,
    shred,
)
from blockstore.errors import IntegrityError, InvalidArgument, NotFound, Unavailable
from blockstore.format import keys
from blockstore.store.memory import MemoryStore


def test_a_data_key_is_stored_wrapped_and_bound_to_its_disk(tmp_path: Path) -> None:
    store, kek = MemoryStore(), LocalKeyFile(tmp_path / "kek")
    key_id = create_key(store, kek, "d1")
    assert oct((tmp_path / "kek").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "kek" / "1.key").stat().st_mode & 0o777) == "0o600"
    secret = load_keys(store, kek, "d1")[key_id]
    assert len(secret) == 32
    raw = store.raw()  # type: ignore[attr-defined]
    assert all(secret not in blob for blob in raw.values()), "a data key in the clear"
    (obj,) = [k for k in raw if k.startswith(keys.data_key_prefix("d1"))]
    # Copied to another disk, or tampered with, it does not unwrap.
    store.put(obj.replace("disks/d1/", "disks/d2/"), raw[obj])
    with pytest.raises(IntegrityError, match="do not unwrap"):
        load_keys(store, kek, "d2")
    body = json.loads(raw[obj])
    wrapped = bytearray(base64.b64decode(body["wrapped"]))
    wrapped[-1] ^= 1
    store.put(obj, json.dumps({**body, "wrapped": base64.b64encode(wrapped).decode()}).encode())
    with pytest.raises(IntegrityError):
        load_keys(store, kek, "d1")


def test_rotation_rewraps_without_changing_a_data_key(tmp_path: Path) -> None:
    store, kek = MemoryStore(), LocalKeyFile(tmp_path / "kek")
    ids = [create_key(store, kek, "d1") for _ in range(3)]
    before = load_keys(store, kek, "d1")
    assert kek.rotate() == "local-2"
    assert rewrap(store, kek, "d1") == 3
    names = [k for k in store.raw() if k.startswith(keys.data_key_prefix("d1"))]  # type: ignore[attr-defined]
    assert sorted(keys.parse_data_key_key(k) for k in names) == sorted((i, "local-2") for i in ids)  # type: ignore[misc]
    (tmp_path / "kek" / "1.key").unlink()  # the old KEK is gone: nothing needs it any more
    assert load_keys(store, kek, "d1") == before


def test_environment_keks_and_their_mistakes() -> None:
    a, b = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
    store = MemoryStore()
    old = EnvKey({"BLOCKSTORE_KEK": a})
    key_id = create_key(store, old, "d1")
    new = EnvKey({"BLOCKSTORE_KEK": b, "BLOCKSTORE_KEK_OLD": a})
    assert new.current() != old.current() and len(new.known()) == 2
    assert load_keys(store, new, "d1")[key_id] == load_keys(store, old, "d1")[key_id]
    rewrap(store, new, "d1")
    with pytest.raises(Unavailable, match="this host does not have"):
        load_keys(store, old, "d1")  # only the new KEK opens it now: 503, not tampering
    for env, says in [({}, "is not set"), ({"BLOCKSTORE_KEK": "c2hvcnQ="}, "32 bytes"),
                      ({"BLOCKSTORE_KEK": a, "BLOCKSTORE_KEK_OLD": "!!"}, "_OLD")]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=says):
            EnvKey(env)


def test_shredding_leaves_nothing_that_opens(tmp_path: Path) -> None:
    store, kek = MemoryStore(), LocalKeyFile(tmp_path / "kek")
    create_key(store, kek, "d1")
    assert shred(store, "d1") == 1
    with pytest.raises(NotFound):
        load_keys(store, kek, "d1")
