"""Compressed volumes (issue #20; docs/format.md, "Compression"): whatever is written reads back
byte for byte from any offset, across reopen, checkpoints, GC compaction and clones, alone and
with encryption; compressible data takes less room in the store; a damaged compressed chunk is
refused (IntegrityError), never decompressed into wrong data."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore.crypto import disk as crypto_disk
from blockstore.crypto.keyring import LocalKeyFile
from blockstore.engine.config import VolumeConfig
from blockstore.engine.volume import Volume
from blockstore.errors import IntegrityError, InvalidArgument
from blockstore.format import keys
from blockstore.store.base import ObjectStore
from blockstore.store.memory import MemoryStore

KiB, MiB = 1 << 10, 1 << 20
SIZE = 4 * MiB
CFG = VolumeConfig(gc_interval_seconds=0, gc_min_age_seconds=0.0, commit_delay=3600.0,
                   checkpoint_every_segments=4)  # fmt: skip
TEXT = b"".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n".encode()
    for i in range(40000)
)


@pytest.fixture(autouse=True)
def kek(tmp_path: Path) -> Iterator[None]:
    crypto_disk.set_provider(LocalKeyFile(tmp_path / "kek"))
    yield
    crypto_disk.set_provider(None)


def stored_bytes(store: ObjectStore, disk: str) -> int:
    return sum(o.size for o in store.list(keys.segment_prefix(disk)))


def mixed(rng: random.Random, n: int) -> bytes:
    """Text, zeros and random bytes, interleaved in 4 KiB pieces."""
    parts = []
    for _ in range(0, n, 4 * KiB):
        kind = rng.randrange(3)
        at = rng.randrange(0, len(TEXT) - 4 * KiB)
        parts.append((TEXT[at : at + 4 * KiB], bytes(4 * KiB), os.urandom(4 * KiB))[kind])
    return b"".join(parts)[:n]


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    codec=st.sampled_from(["zstd", "lz4"]),
    encrypt=st.booleans(),
)
def test_random_writes_read_back_across_reopen_gc_and_clones(
    seed: int, codec: str, encrypt: bool
) -> None:
    rng = random.Random(seed)
    store = MemoryStore()
    Volume.create(store, "d", SIZE, compression=codec, encrypt=encrypt)
    vol = Volume.open(store, "d", config=CFG)
    image = bytearray(SIZE)
    for _ in range(rng.randint(4, 14)):
        off = rng.randrange(0, SIZE // 512 - 512) * 512
        n = rng.randint(1, 400) * 512
        if rng.random() < 0.15:
            vol.trim(off, n)
            image[off : off + n] = bytes(n)
        else:
            data = mixed(rng, n)
            vol.write(off, data, durable=rng.random() < 0.5)
            image[off : off + n] = data
        if rng.random() < 0.3:
            vol.flush()
    vol.flush()
    for _ in range(20):  # any sector-aligned range, across chunk and record edges
        off = rng.randrange(0, SIZE // 512 - 1) * 512
        n = rng.randint(1, min(600, SIZE // 512 - off // 512)) * 512
        assert vol.read(off, n) == image[off : off + n]
    vol.create_snapshot("s")
    vol.gc()
    vol.abandon()  # no checkpoint at close: the next open replays
    vol = Volume.open(store, "d", writable=False)
    assert vol.read(0, SIZE) == image
    vol.close()
    Volume.create(store, "c", 0, source=("d", "s"))
    clone = Volume.open(store, "c", writable=False)
    assert clone.read(0, SIZE) == image
    clone.close()


def test_compressible_data_takes_less_room_and_damage_is_refused(
    s3_store_factory: Callable[..., ObjectStore],
) -> None:
    store = s3_store_factory("zstd")
    for disk, codec in (("plain", "none"), ("z", "zstd"), ("l", "lz4"), ("ze", "zstd")):
        Volume.create(store, disk, SIZE, compression=codec, encrypt=disk == "ze")
        vol = Volume.open(store, disk, config=CFG)
        vol.write(0, TEXT[: 2 * MiB], durable=True)
        vol.write(2 * MiB, os.urandom(MiB), durable=True)  # incompressible: stored as is
        assert vol.read(0, 2 * MiB) == TEXT[: 2 * MiB]
        vol.close()
    plain = stored_bytes(store, "plain")
    for disk in ("z", "l", "ze"):
        assert stored_bytes(store, disk) < plain - MiB // 2, (disk, stored_bytes(store, disk))
        vol = Volume.open(store, disk, writable=False)
        assert vol.read(4 * KiB, 8 * KiB) == TEXT[4 * KiB : 12 * KiB]
        vol.close()
    ze = {o.key: store.get(o.key) for o in store.list(keys.disk_prefix("ze"))}
    assert not [k for k, v in ze.items() if TEXT[:64] in v], "plaintext of an encrypted disk"
    # A flipped bit inside a compressed chunk: the checksum refuses it.
    first = min(o.key for o in store.list(keys.segment_prefix("z")) if o.size > 1000)
    blob = bytearray(store.get(first))
    blob[len(blob) // 2] ^= 0x10
    store.put(first, bytes(blob))
    vol = Volume.open(store, "z", writable=False)
    with pytest.raises(IntegrityError):
        vol.read(0, 2 * MiB)
    vol.close()
    with pytest.raises(InvalidArgument, match="compression"):
        Volume.create(store, "bad", SIZE, compression="gzip")
