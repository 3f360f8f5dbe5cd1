"""Data keys of encrypted disks, and the key-encryption keys (KEKs) that wrap them (issue #20).

Place: below the engine. An encrypted disk's bytes are sealed with its data keys (the segment
format's part is to come: docs/format.md, "Encryption"); this module makes, wraps, finds,
rewraps and destroys those keys. The store never holds a data key in the clear.

- A *data key* is 32 random bytes with an id (`k` + 16 hex). It is stored only wrapped:
  AES-256-GCM under a KEK, with the disk id and key id as associated data, so a wrapped key
  copied to another disk or id does not unwrap. One object per (key, KEK):
  `disks/<id>/keys/<key-id>.<kek-id>.json`.
- A *KEK provider* wraps and unwraps; it names the KEK new wraps use (`current`). Built in:
  `LocalKeyFile` (the default: `<home>/kek/<n>.key`, 0600 in a 0700 directory, made on first
  use; `rotate()` adds the next one) and `EnvKey` (`BLOCKSTORE_KEK`, base64 of 32 bytes; older
  ones in `BLOCKSTORE_KEK_OLD`, comma-separated, still unwrap). An external KMS (e.g. Vault's
  transit engine) is one more class with `current`, `wrap` and `unwrap`.
- *Rotation* (`rewrap`) unwraps every data key of a disk with whatever KEK it is under and
  wraps it under the current one: a new object first, then the old ones go. No data is
  rewritten: the data keys do not change.
- *Crypto-shred* (`shred`): deleting a disk deletes its key objects first; its data objects
  are then ciphertext nobody can open (the KEK alone opens nothing).

Failure: a key wrapped under a KEK this host does not have is `Unavailable` (503: the host
needs the KEK, see the README); a key that does not unwrap, or whose object was tampered with,
is `IntegrityError`; a disk with no key is `NotFound`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockstore.errors import IntegrityError, InvalidArgument, NotFound, Unavailable
from blockstore.format import keys
from blockstore.store.base import ObjectStore

KEY_BYTES = 32
_NONCE = 12


class KekProvider(Protocol):
    """Wraps and unwraps data keys under key-encryption keys it names by id."""

    def current(self) -> str: ...

    def wrap(self, kek_id: str, secret: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes: ...

    def known(self) -> list[str]: ...


def _seal(kek: bytes, secret: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)  # one wrap per object: a random nonce never repeats in practice
    return nonce + AESGCM(kek).encrypt(nonce, secret, aad)


def _open(kek: bytes, wrapped: bytes, aad: bytes) -> bytes:
    return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)


class LocalKeyFile:
    """KEKs in files of this host's home: `<dir>/<n>.key`, the highest `n` current."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, kek_id: str) -> Path:
        if not kek_id.startswith("local-") or not kek_id[6:].isdigit():
            raise IntegrityError(f"KEK {kek_id!r} is not one of this host's key files")
        return self.directory / f"{kek_id[6:]}.key"

    def known(self) -> list[str]:
        if not self.directory.exists():
            return []
        found = sorted(int(p.stem) for p in self.directory.glob("*.key") if p.stem.isdigit())
        return [f"local-{n}" for n in found]

    def current(self) -> str:
        known = self.known()
        return known[-1] if known else self.rotate()

    def rotate(self) -> str:
        """Make the next KEK and return its id; new wraps use it from now on."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        n = len(self.known()) + 1
        fd = os.open(self.directory / f"{n}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        return f"local-{n}"

    def _kek(self, kek_id: str) -> bytes:
        try:
            kek = self._path(kek_id).read_bytes()
        except FileNotFoundError:
            raise Unavailable(f"KEK {kek_id} is not on this host ({self.directory})") from None
        if len(kek) != KEY_BYTES:
            raise IntegrityError(f"KEK file of {kek_id} is not {KEY_BYTES} bytes")
        return kek

    def wrap(self, kek_id: str, secret: bytes, aad: bytes) -> bytes:
        return _seal(self._kek(kek_id), secret, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return _open(self._kek(kek_id), wrapped, aad)


class EnvKey:
    """KEKs from the environment: `BLOCKSTORE_KEK` current, `BLOCKSTORE_KEK_OLD` older ones.
    A KEK's id is `env-` and 8 hex of its SHA-256, so a rotated variable is noticed."""

    def __init__(self, env: dict[str, str]) -> None:
        def decode(text: str, name: str) -> bytes:
            try:
                raw = base64.b64decode(text.strip(), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != KEY_BYTES:
                raise InvalidArgument(f"{name} must be base64 of {KEY_BYTES} bytes")
            return raw

        if "BLOCKSTORE_KEK" not in env:
            raise InvalidArgument("BLOCKSTORE_KEK is not set")
        self._current = decode(env["BLOCKSTORE_KEK"], "BLOCKSTORE_KEK")
        old = [t for t in env.get("BLOCKSTORE_KEK_OLD", "").split(",") if t.strip()]
        self._keys = {self._id(k): k for k in [decode(t, "BLOCKSTORE_KEK_OLD") for t in old]}
        self._keys[self._id(self._current)] = self._current

    @staticmethod
    def _id(kek: bytes) -> str:
        return "env-" + hashlib.sha256(kek).hexdigest()[:8]

    def known(self) -> list[str]:
        return sorted(self._keys)

    def current(self) -> str:
        return self._id(self._current)

    def _kek(self, kek_id: str) -> bytes:
        if kek_id not in self._keys:
            raise Unavailable(f"KEK {kek_id} is in neither BLOCKSTORE_KEK nor _KEK_OLD")
        return self._keys[kek_id]

    def wrap(self, kek_id: str, secret: bytes, aad: bytes) -> bytes:
        return _seal(self._kek(kek_id), secret, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return _open(self._kek(kek_id), wrapped, aad)


def provider_from(env: Mapping[str, str], kek_dir: Path | None) -> KekProvider | None:
    """The KEK provider a process configures: `EnvKey` when `BLOCKSTORE_KEK` is set, else the
    key files in `kek_dir`, else none (InvalidArgument for a malformed variable)."""
    if "BLOCKSTORE_KEK" in env:
        return EnvKey(dict(env))
    return LocalKeyFile(kek_dir) if kek_dir is not None else None


# -- the keys of one disk ----------------------------------------------------------------------


def _aad(disk_id: str, key_id: str) -> bytes:
    return f"blockstore data key|{disk_id}|{key_id}".encode()


def _put(
    store: ObjectStore, provider: KekProvider, disk_id: str, key_id: str, secret: bytes
) -> None:
    kek_id = provider.current()
    wrapped = provider.wrap(kek_id, secret, _aad(disk_id, key_id))
    body = {"format": 1, "key_id": key_id, "kek_id": kek_id,
            "wrapped": base64.b64encode(wrapped).decode()}  # fmt: skip
    store.put(keys.data_key_key(disk_id, key_id, kek_id), json.dumps(body).encode())


def create_key(store: ObjectStore, provider: KekProvider, disk_id: str) -> str:
    """A new data key for `disk_id`, stored wrapped; returns its id."""
    key_id = "k" + secrets.token_hex(8)
    _put(store, provider, disk_id, key_id, secrets.token_bytes(KEY_BYTES))
    return key_id


def import_key(
    store: ObjectStore, provider: KekProvider, disk_id: str, key_id: str, secret: bytes
) -> None:
    """Store another disk's data key under `disk_id` (a clone's source's, a restored backup's
    original's), wrapped and bound to `disk_id`."""
    _put(store, provider, disk_id, key_id, secret)


def unwrap_object(provider: KekProvider, disk_id: str, blob: bytes) -> tuple[str, bytes]:
    """(key id, secret) of a wrapped data key object of disk `disk_id` (a copy kept in a
    backup); `IntegrityError` when no KEK here opens it."""
    body = json.loads(blob)
    key_id, kek_id = str(body["key_id"]), str(body["kek_id"])
    try:
        secret = provider.unwrap(kek_id, base64.b64decode(body["wrapped"]), _aad(disk_id, key_id))
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError(f"data key {key_id} of disk {disk_id!r} does not unwrap") from exc
    return key_id, secret


def load_keys(store: ObjectStore, provider: KekProvider, disk_id: str) -> dict[str, bytes]:
    """Every data key of `disk_id` the provider can unwrap: key id -> secret."""
    out: dict[str, bytes] = {}
    errors: list[str] = []
    absent = False  # a key wrapped under a KEK this host does not have (not tampering)
    for o in store.list(keys.data_key_prefix(disk_id)):
        body = json.loads(store.get(o.key))
        key_id, kek_id = str(body["key_id"]), str(body["kek_id"])
        if key_id in out:
            continue
        try:
            out[key_id] = provider.unwrap(
                kek_id, base64.b64decode(body["wrapped"]), _aad(disk_id, key_id)
            )
        except Unavailable as exc:
            absent = True
            errors.append(f"{o.key}: {exc}")
        except (InvalidTag, IntegrityError, ValueError) as exc:
            errors.append(f"{o.key}: {exc or 'authentication failed'}")
    missing = {k for k in _key_ids(store, disk_id)} - out.keys()
    if missing and absent:
        raise Unavailable(
            f"disk {disk_id!r}: data keys {sorted(missing)} are wrapped under KEKs this host "
            f"does not have ({'; '.join(errors)}): copy the KEK files into <home>/kek/, or "
            "set BLOCKSTORE_KEK / BLOCKSTORE_KEK_OLD"
        )
    if missing:
        raise IntegrityError(
            f"disk {disk_id!r}: data keys {sorted(missing)} do not unwrap with the KEKs here "
            f"({'; '.join(errors)})"
        )
    if not out:
        raise NotFound(f"disk {disk_id!r} has no data key")
    return out


def _wrapped(store: ObjectStore, disk_id: str) -> list[tuple[str, str, str]]:
    """(object key, data key id, KEK id) of every wrapped data key of the disk."""
    out = []
    for o in store.list(keys.data_key_prefix(disk_id)):
        ids = keys.parse_data_key_key(o.key)
        if ids is not None:
            out.append((o.key, *ids))
    return out


def _key_ids(store: ObjectStore, disk_id: str) -> set[str]:
    return {key_id for _k, key_id, _kek in _wrapped(store, disk_id)}


def rewrap(store: ObjectStore, provider: KekProvider, disk_id: str) -> int:
    """Wrap every data key of the disk under the provider's current KEK (new objects first,
    then the old ones go); returns how many keys were rewrapped. No data changes."""
    secrets_ = load_keys(store, provider, disk_id)
    current = provider.current()
    done = 0
    for key_id, secret in secrets_.items():
        _put(store, provider, disk_id, key_id, secret)
        for obj, k, kek in _wrapped(store, disk_id):
            if k == key_id and kek != current:
                store.delete(obj)
        done += 1
    return done


def discard_key(store: ObjectStore, disk_id: str, key_id: str) -> None:
    """Delete every wrapped copy of one data key (a disk create that lost its race)."""
    for obj, k, _kek in _wrapped(store, disk_id):
        if k == key_id:
            store.delete(obj)


def shred(store: ObjectStore, disk_id: str) -> int:
    """Delete every data key object of the disk (crypto-shred); returns how many."""
    gone = 0
    for o in store.list(keys.data_key_prefix(disk_id)):
        store.delete(o.key)
        gone += 1
    return gone
