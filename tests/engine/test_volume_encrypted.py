"""Encrypted volumes on real SeaweedFS (issue #20; docs/format.md, "Encryption"): the bucket
holds no plaintext; a flipped bit, a swapped segment, a segment moved to another position or
another disk, a replayed old segment and a forged unsealed one are each refused (IntegrityError,
EIO over NBD), never read as data; rotation rewrites no data object; a destroyed disk's
leftovers open with nothing left on the host."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from blockstore.crypto import disk as crypto_disk
from blockstore.crypto.keyring import LocalKeyFile, load_keys, rewrap
from blockstore.engine.config import VolumeConfig
from blockstore.engine.volume import Volume
from blockstore.errors import IntegrityError, NotFound
from blockstore.format import keys
from blockstore.format.segment import SEG_PREFIX_LEN, encode_segment
from blockstore.store.base import ObjectStore

KiB = 1 << 10
SIZE = 1 << 20
PATTERN = (b"blockstore plaintext pattern 0123456789abcdef!" * 200)[: 8 * KiB]
CFG = VolumeConfig(gc_interval_seconds=0, gc_min_age_seconds=0.0, commit_delay=3600.0)


@pytest.fixture
def kek(tmp_path: Path) -> Iterator[LocalKeyFile]:
    provider = LocalKeyFile(tmp_path / "kek")
    crypto_disk.set_provider(provider)
    yield provider
    crypto_disk.set_provider(None)


def everything(store: ObjectStore, prefix: str = "") -> dict[str, bytes]:
    return {o.key: store.get(o.key) for o in store.list(prefix)}


def written(store: ObjectStore, disk: str, writes: int = 4) -> list[int]:
    """`writes` durable writes of the pattern (one segment each), a checkpoint, and two more
    segments after it, which an open replays; returns their positions."""
    vol = Volume.open(store, disk, config=CFG)
    for i in range(writes):
        vol.write(i * 8 * KiB, PATTERN, durable=True)
    vol.checkpoint()
    positions = []
    for data in (PATTERN, PATTERN[::-1]):  # the second overwrites the first
        vol.write(64 * KiB, data, durable=True)
        positions.append(top(store, disk))
    vol.abandon()  # no checkpoint at close: opening replays these two segments
    return positions


def top(store: ObjectStore, disk: str) -> int:
    return max(keys.parse_segment_key(o.key)[1] for o in store.list(keys.segment_prefix(disk)))  # type: ignore[index]


def forge(blob: bytes, **fields: int) -> bytes:
    """`blob` with header fields (seq, epoch) changed and its xxh3 made to match again, as
    anyone who can write to the bucket could do: only the key-bound tag still tells."""
    magic, version, flags, body_len, _sum = struct.unpack_from("<8sHHIQ", blob)
    body = bytearray(blob[SEG_PREFIX_LEN : SEG_PREFIX_LEN + body_len])
    seq, epoch = struct.unpack_from("<QI", body)
    struct.pack_into("<QI", body, 0, fields.get("seq", seq), fields.get("epoch", epoch))
    prefix = struct.pack("<8sHHIQ", magic, version, flags, body_len, xxhash.xxh3_64_intdigest(body))
    return prefix + bytes(body) + blob[SEG_PREFIX_LEN + body_len :]


def test_the_bucket_holds_no_plaintext_and_the_disk_reads_back(
    s3_store_factory: Callable[..., ObjectStore], kek: LocalKeyFile
) -> None:
    store = s3_store_factory("enc")
    Volume.create(store, "d", SIZE, encrypt=True)
    written(store, "d")
    vol = Volume.open(store, "d", writable=False)
    assert vol.read(0, 8 * KiB) == PATTERN
    assert vol.read(64 * KiB, len(PATTERN)) == PATTERN[::-1]
    assert vol.read(64 * KiB + 4096 - 512, 1024) == PATTERN[::-1][4096 - 512 : 4096 + 512]
    vol.close()
    # A snapshot, and a clone of it with a key of its own, read and write on.
    vol = Volume.open(store, "d", config=CFG)
    vol.create_snapshot("s1")
    vol.close()
    Volume.create(store, "c", 0, source=("d", "s1"))
    clone = Volume.open(store, "c", config=CFG)
    assert clone.read(0, 8 * KiB) == PATTERN
    clone.write(0, PATTERN[:512], durable=True)
    clone.gc()  # compaction opens the source's records and seals them under the clone's key
    clone.close()
    clone = Volume.open(store, "c", writable=False)
    assert clone.read(0, 1024) == PATTERN[:1024]
    clone.close()
    assert set(load_keys(store, kek, "c")) != set(load_keys(store, kek, "d"))
    for key, blob in everything(store).items():
        for probe in (PATTERN[:64], PATTERN[::-1][:64], PATTERN[1000:1064]):
            assert probe not in blob, f"plaintext in {key}"


def test_a_flipped_bit_in_data_or_header_is_refused(
    s3_store_factory: Callable[..., ObjectStore], kek: LocalKeyFile
) -> None:
    store = s3_store_factory("enc-flip")
    Volume.create(store, "d", SIZE, encrypt=True)
    _, last = written(store, "d")
    key = keys.segment_key("d", last)
    blob = bytearray(store.get(key))
    blob[-100] ^= 0x01  # data: integrity fails (and authentication would)
    store.put(key, bytes(blob))
    vol = Volume.open(store, "d", writable=False)
    with pytest.raises(IntegrityError):
        vol.read(64 * KiB, len(PATTERN))
    assert vol.stats.checksum_failures == 1
    vol.close()
    blob[-100] ^= 0x01
    store.put(key, forge(bytes(blob), epoch=struct.unpack_from("<I", blob, SEG_PREFIX_LEN + 8)[0]))
    Volume.open(store, "d", writable=False).close()  # the forge helper itself changes nothing
    blob[SEG_PREFIX_LEN + 34] ^= 0x01  # the write moved 64 KiB on the disk, xxh3 made to match
    store.put(key, forge(bytes(blob)))
    with pytest.raises(IntegrityError, match="fails to authenticate"):
        Volume.open(store, "d", writable=False)


def test_swapped_moved_replayed_or_foreign_segments_are_refused(
    s3_store_factory: Callable[..., ObjectStore], kek: LocalKeyFile
) -> None:
    store = s3_store_factory("enc-move")
    for d in ("d", "e"):
        Volume.create(store, d, SIZE, encrypt=True)
    a, b = written(store, "d")
    written(store, "e")
    seg = {p: store.get(keys.segment_key("d", p)) for p in (a, b)}

    def refused(changes: dict[str, bytes], why: str) -> None:
        before = {k: store.get(k) if k in everything(store) else None for k in changes}
        for k, v in changes.items():
            store.put(k, v)
        with pytest.raises(IntegrityError):
            Volume.open(store, "d", writable=False)
        for k, v in before.items():
            if v is None:
                store.delete(k)
            else:
                store.put(k, v)
        Volume.open(store, "d", writable=False).close()  # restored: opens again

    ka, kb = keys.segment_key("d", a), keys.segment_key("d", b)
    refused({ka: seg[b], kb: seg[a]}, "swapped")
    refused({ka: forge(seg[b], seq=a), kb: forge(seg[a], seq=b)}, "swapped, headers forged")
    end = top(store, "d") + 1
    after = keys.segment_key("d", end)
    refused({after: forge(seg[a], seq=end)}, "an old segment replayed at the end")
    e_seg = store.get(keys.segment_key("e", a))
    foreign = e_seg.replace(b"\x01\x00e", b"\x01\x00d", 1)  # disk id "e" -> "d" in the header
    refused({after: forge(foreign, seq=end)}, "another disk's segment")
    plain = encode_segment(after, "d", end, 99, 4096, [])  # an unsealed fence of epoch 99
    refused({after: plain}, "a forged unsealed fence")


def test_restore_points_and_changed_ranges_of_an_encrypted_disk(
    s3_store_factory: Callable[..., ObjectStore], kek: LocalKeyFile
) -> None:
    store = s3_store_factory("enc-points")
    Volume.create(store, "d", SIZE, encrypt=True)
    vol = Volume.open(store, "d", config=CFG)
    vol.write(0, PATTERN, durable=True)
    before = top(store, "d")
    vol.create_snapshot("s1")
    vol.write(8 * KiB, PATTERN[::-1], durable=True)
    vol.create_snapshot("s2")
    assert vol.changed_ranges("s1", "s2") == [(8 * KiB, 8 * KiB + len(PATTERN))]  # [start, end)
    vol.close()
    view = Volume.open_at(store, "d", before)  # the restore point before the second write
    assert view.read(0, 16 * KiB) == PATTERN + bytes(8 * KiB)
    view.close()


def test_rotation_rewrites_no_data_and_a_destroyed_disk_opens_with_nothing(
    s3_store_factory: Callable[..., ObjectStore], kek: LocalKeyFile, tmp_path: Path
) -> None:
    store = s3_store_factory("enc-rot")
    Volume.create(store, "d", SIZE, encrypt=True)
    written(store, "d")
    data_before = {k: v for k, v in everything(store).items() if "/keys/" not in k}
    kek.rotate()
    assert rewrap(store, kek, "d") == 1
    (tmp_path / "kek" / "1.key").unlink()  # only the new KEK is left on the host
    assert {k: v for k, v in everything(store).items() if "/keys/" not in k} == data_before
    vol = Volume.open(store, "d", writable=False)
    assert vol.read(64 * KiB, len(PATTERN)) == PATTERN[::-1]
    vol.close()
    Volume.destroy(store, "d")
    assert everything(store) == {}
    for k, v in data_before.items():  # what a crash mid-destroy could leave behind
        store.put(k, v)
    with pytest.raises(NotFound, match="has no data key"):
        Volume.open(store, "d", writable=False)
