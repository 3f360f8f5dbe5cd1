"""Encryption at rest as the control plane shows and runs it (issue #20): which key-encryption
key (KEK) this host wraps with, each encrypted disk's data key, and KEK rotation.

The data path is the engine's (blockstore/crypto/, docs/format.md "Encryption"): an encrypted
disk's data is sealed under its own data key, stored only wrapped under a KEK. Rotation here
makes a new KEK current (the local key file provider makes one; with `BLOCKSTORE_KEK` the
operator sets the new key and lists the old one in `BLOCKSTORE_KEK_OLD`) and rewraps every
encrypted disk's data keys under it: one small object per key, no data object is read or
written. Once every disk reports its keys under the new KEK, the old KEK can go.

Failure: a disk whose keys do not unwrap with any KEK here is reported in the result with the
error and left as it was; the other disks are still rewrapped, and running the rotation again
finishes the rest (rewrapping under the current KEK is idempotent).
"""

from __future__ import annotations

from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import DiskKind, disk_id_of
from blockstore.control.records import Record
from blockstore.crypto import disk as crypto_disk
from blockstore.crypto import keyring
from blockstore.crypto.seal import CIPHER
from blockstore.errors import BlockstoreError
from blockstore.format import keys


def disk_encryption(ctx: ControlContext, disk: Record) -> dict[str, Any] | None:
    """What GET /v1/disks/{name} shows of a disk's encryption (None: not encrypted): its data
    keys and the KEKs they are wrapped under (one LIST)."""
    if not disk.get("encrypted"):
        return None
    wrapped = [
        ids
        for o in ctx.data_store(disk).list(keys.data_key_prefix(disk_id_of(disk)))
        if (ids := keys.parse_data_key_key(o.key)) is not None
    ]
    return {
        "cipher": CIPHER,
        "data_keys": sorted({k for k, _kek in wrapped}),
        "wrapped_by": sorted({kek for _k, kek in wrapped}),
    }


class EncryptionService:
    """KEK status and rotation over the disks in `context`'s records."""

    def __init__(self, context: ControlContext) -> None:
        self.ctx = context

    def _encrypted(self) -> list[Record]:
        return [
            d
            for _n, d in self.ctx.disks.items()
            if d.get("encrypted") and d.get("kind") != DiskKind.ephemeral
        ]

    def status(self) -> dict[str, Any]:
        """The KEK provider of this host, its current and known KEKs, the encrypted disks."""
        provider = crypto_disk.provider()
        return {
            "cipher": CIPHER,
            "provider": "env" if isinstance(provider, keyring.EnvKey) else "local",
            "current_kek": provider.current(),
            "known_keks": provider.known(),
            "encrypted_disks": sorted(d["name"] for d in self._encrypted()),
        }

    def rotate(self) -> dict[str, Any]:
        """A new current KEK (local provider), then every encrypted disk's data keys rewrapped
        under the current KEK; per disk, how many keys or the error."""
        provider = crypto_disk.provider()
        if isinstance(provider, keyring.LocalKeyFile):
            provider.rotate()
        current = provider.current()
        disks: list[dict[str, Any]] = []
        for disk in self._encrypted():
            try:
                n = keyring.rewrap(self.ctx.data_store(disk), provider, disk_id_of(disk))
                disks.append({"disk": disk["name"], "keys_rewrapped": n})
            except BlockstoreError as exc:
                disks.append({"disk": disk["name"], "error": str(exc)})
        return {"current_kek": current, "disks": disks}
