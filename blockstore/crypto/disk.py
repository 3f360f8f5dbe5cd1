"""The keys one open volume works with: `DiskKeys` (issue #20; docs/format.md, "Encryption").

Place: handed by `Volume` to the segment and checkpoint codecs, the replay and the reader. An
encrypted disk's volume record names its own data key and every key it reads with
(`"encryption": {"key_id": ..., "keys": {key id: disk}}`): a clone's source's and a restored
backup's original's records stay sealed under their own disk's key, which the disk holds
rewrapped under its own id (a clone copies them at create). Keys are looked up by the key id
each record carries.

- `writer`: the sealer of this disk's own key (None: the disk is not encrypted). Everything the
  volume writes (segments, fences, checkpoints) is sealed or authenticated with it.
- `sealer(raw)`: the sealer of any key a record or header names; `IntegrityError` for a key
  that is not this disk's nor its sources'.
- An encrypted disk accepts from its own log only what is authenticated under its own key: an
  unsealed segment or checkpoint at one of its positions is `IntegrityError` (someone with
  write access to the bucket put it there), never applied.

The process's KEK provider (blockstore/crypto/keyring.py) is set once at start-up
(`set_provider`): by the service (its home's key files, or `BLOCKSTORE_KEK`), by an export from
the environment its launcher passes (host/contract.py). A process that opens an encrypted disk
without one gets `InvalidArgument`.
"""

from __future__ import annotations

from typing import Any, Protocol

from blockstore.crypto.keyring import KekProvider, load_keys
from blockstore.crypto.seal import CIPHER, Sealer, key_id_of
from blockstore.errors import IntegrityError, InvalidArgument, NotFound
from blockstore.store.base import ObjectStore

_provider: KekProvider | None = None


def set_provider(provider: KekProvider | None) -> None:
    """The KEK provider this process unwraps data keys with (start-up configuration)."""
    global _provider
    _provider = provider


def provider() -> KekProvider:
    if _provider is None:
        raise InvalidArgument(
            "this disk is encrypted and this process has no key-encryption key provider "
            "(`blockstore serve` sets one from <home>/kek/ or BLOCKSTORE_KEK)"
        )
    return _provider


class DiskKeys:
    """The sealers an open volume needs (module docstring). `DiskKeys()` is a plain disk."""

    def __init__(self, writer: Sealer | None = None, others: list[Sealer] | None = None) -> None:
        self.writer = writer
        every = [*(others or []), *([writer] if writer else [])]
        self._by_raw = {s.key_raw: s for s in every}
        self._by_disk = {s.disk_id: s for s in every}

    def sealer(self, raw: bytes) -> Sealer:
        found = self._by_raw.get(raw)
        if found is None:
            raise IntegrityError(
                f"data sealed under key {key_id_of(raw)}, which is not this disk's nor its "
                "sources' (moved from another disk?)"
            )
        return found

    def check(self, owner: str, sealed: SealedObject, what: str) -> None:
        """Authenticate a segment header or checkpoint of disk `owner`: sealed under that
        disk's key if it is encrypted, unsealed if it is not; else `IntegrityError`."""
        want = self._by_disk.get(owner)
        if want is None:
            if sealed.key_raw:
                raise IntegrityError(f"{what} is sealed, but disk {owner!r} is not encrypted here")
            return
        if sealed.key_raw != want.key_raw:
            raise IntegrityError(
                f"{what} is not sealed under disk {owner!r}'s key {want.key_id} (an encrypted "
                "disk accepts nothing else in its log)"
            )
        want.check_mac(sealed.signed, sealed.mac, what)


class SealedObject(Protocol):
    """A decoded segment header or checkpoint, as far as authentication goes."""

    key_raw: bytes
    mac: bytes
    signed: bytes


PLAIN = DiskKeys()


def key_owners(meta: dict[str, Any]) -> dict[str, str]:
    """Every data key an encrypted volume reads with -> the disk that sealed with it (whose id
    its chunks are bound to): its own, and those of the disks its map came from (a clone's
    source, a restored backup's original), each stored wrapped under this disk."""
    enc = meta.get("encryption")
    if not isinstance(enc, dict):
        return {}
    return {str(k): str(v) for k, v in enc.get("keys", {enc["key_id"]: meta["disk_id"]}).items()}


def encryption_record(own: str, disk_id: str, inherited: dict[str, str]) -> dict[str, Any]:
    """What a volume record says of an encrypted disk (`own`: its data key)."""
    return {"cipher": CIPHER, "key_id": own, "keys": {**inherited, own: disk_id}}


def disk_keys(store: ObjectStore, disk_id: str, meta: dict[str, Any]) -> DiskKeys:
    """The keys of disk `disk_id` (volume record `meta`): one LIST and a GET per key, none
    for a disk that is not encrypted."""
    owners = key_owners(meta)
    if not owners:
        return PLAIN
    secrets = load_keys(store, provider(), disk_id)
    missing = sorted(owners.keys() - secrets.keys())
    if missing:
        raise NotFound(f"disk {disk_id!r}: data keys {missing} are gone (shredded?)")
    sealers = {kid: Sealer(owner, kid, secrets[kid]) for kid, owner in owners.items()}
    own = sealers.pop(str(meta["encryption"]["key_id"]))
    return DiskKeys(own, list(sealers.values()))
