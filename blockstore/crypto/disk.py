"""The keys one open volume works with: `DiskKeys` (issue #20; docs/format.md, "Encryption").

Place: handed by `Volume` to the segment and checkpoint codecs, the replay and the reader. An
encrypted disk's volume record names its data key (`"encryption": {"key_id": ...}`); a volume
reads records of other disks too (a clone's source, a restored backup's original), each sealed
under its own disk's key, so the keys are looked up by the key id each record carries.

- `writer`: the sealer of this disk's own key (None: the disk is not encrypted). Everything the
  volume writes (segments, fences, checkpoints) is sealed or authenticated with it.
- `sealer(raw)`: the sealer of any key a record or header names; `IntegrityError` for a key
  that is not this disk's nor its sources'.
- An encrypted disk accepts from its own log only what is authenticated under its own key: an
  unsealed segment or checkpoint at one of its positions is `IntegrityError` (someone with
  write access to the bucket put it there), never applied.

The process's KEK provider (blockstore/crypto/keyring.py) is set once at start-up
(`set_provider`): by the service from its settings, by an export from the environment its
launcher passes. A process that opens an encrypted disk without one gets `InvalidArgument`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from blockstore.crypto.keyring import KekProvider, load_keys
from blockstore.crypto.seal import Sealer, key_id_of
from blockstore.errors import IntegrityError, InvalidArgument, NotFound
from blockstore.format import keys
from blockstore.store.base import ObjectStore

_provider: KekProvider | None = None


def set_provider(provider: KekProvider | None) -> None:
    """The KEK provider this process unwraps data keys with (start-up configuration)."""
    global _provider
    _provider = provider


def provider() -> KekProvider:
    if _provider is None:
        raise InvalidArgument(
            "this disk is encrypted and no key-encryption key is configured in this process "
            "(set [encryption] in the config, or BLOCKSTORE_KEK)"
        )
    return _provider


class DiskKeys:
    """The sealers an open volume needs (module docstring). `DiskKeys()` is a plain disk."""

    def __init__(self, writer: Sealer | None = None, others: list[Sealer] | None = None) -> None:
        self.writer = writer
        every = [*(others or []), *([writer] if writer else [])]
        self._by_raw = {s.key_raw: s for s in every}
        self._by_disk = {s.disk_id: s for s in every}

    @property
    def encrypted(self) -> bool:
        return self.writer is not None

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


def key_id(meta: dict[str, Any]) -> str | None:
    """The data key a volume record names, or None for a disk that is not encrypted."""
    enc = meta.get("encryption")
    return str(enc["key_id"]) if isinstance(enc, dict) else None


def disk_keys(store: ObjectStore, disk_id: str, meta: dict[str, Any]) -> DiskKeys:
    """The keys of disk `disk_id` (volume record `meta`) and of the disks its map starts from.
    A disk that is not encrypted and whose sources are not either costs no request."""
    chain = _sources(store, disk_id, meta)
    if not any(key_id(m) for _d, m in chain):
        return PLAIN
    kek = provider()
    writer: Sealer | None = None
    others: list[Sealer] = []
    for d, m in chain:
        kid = key_id(m)
        if kid is None:
            continue
        secrets = load_keys(store, kek, d)
        if kid not in secrets:
            raise NotFound(f"disk {d!r}: its data key {kid} is gone (the disk was shredded?)")
        sealer = Sealer(d, kid, secrets[kid])
        if d == disk_id:
            writer = sealer
        else:
            others.append(sealer)
    return DiskKeys(writer, others)


def _sources(
    store: ObjectStore, disk_id: str, meta: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(disk id, volume record) of the disk and each disk its map came from, nearest first.
    A restored disk names itself as source; a source that is gone ends the chain (its
    records are then unreadable anyway, which reads report)."""
    out = [(disk_id, meta)]
    seen = {disk_id}
    src = meta.get("source")
    while src and src.get("disk_id") not in seen:
        d = str(src["disk_id"])
        seen.add(d)
        try:
            m = _read(store, d)
        except NotFound:
            break
        out.append((d, m))
        src = m.get("source")
    return out


def _read(store: ObjectStore, disk_id: str) -> dict[str, Any]:
    meta = json.loads(store.get(keys.volume_key(disk_id)))
    if not isinstance(meta, dict):
        raise IntegrityError(f"{keys.volume_key(disk_id)}: expected a JSON object")
    return meta
