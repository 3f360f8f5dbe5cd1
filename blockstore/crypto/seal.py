"""Sealing an encrypted disk's data chunk by chunk, and authenticating its segment headers and
checkpoints (issue #20; docs/format.md, "Encryption"). The segment and checkpoint codecs
(blockstore/format/) call it; the engine hands them a `DiskKeys` (blockstore/crypto/disk.py).

Each checksum chunk of a record (4 KiB by default) is sealed on its own with AES-256-GCM under
the writing disk's data key, so a 4 KiB read fetches and opens 4 KiB, as it verifies 4 KiB
today. The 16-byte tag of each chunk takes the place of its xxh3 in the record's sums.

Nonces never repeat under one key: a data key seals only its own disk's segments (a clone
gets a key of its own and reads its source's records with the source's key), and the nonce is
the writer's epoch (32 bits), the segment's log position (40 bits) and the chunk's index within
the segment (24 bits). One epoch writes one position at most once with given contents: a PUT
sent again carries the same batch, so the same bytes under the same nonce; a batch moved past a
torn PUT takes new positions; GC's rewrites are new writes. Measured on this machine (AES-NI):
AES-GCM 0.26 ms of CPU per MiB in 4 KiB chunks, AES-GCM-SIV 2.05 ms, ChaCha20-Poly1305 0.95 ms.

Associated data binds a chunk to where it belongs: the disk id, the key id, the position, the
epoch, the record's disk offset and the chunk's index in the record. A chunk moved to another
disk, position or offset, or a segment swapped for another one's, fails to open: `IntegrityError`
(EIO), never wrong bytes.

Headers and checkpoints are authenticated as a whole with HMAC-SHA256 (a key derived from the
data key, no nonce to manage; 16 bytes kept): a trim record added to a header, or a checkpoint
edited to point at older records, fails as a moved chunk does.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockstore.errors import IntegrityError

CIPHER = "aes-256-gcm"  # what a volume record names as its disk's cipher
TAG_BYTES = 16
MAX_SEQ = (1 << 40) - 1
MAX_CHUNKS = 1 << 24  # chunks in one segment
_NONCE = struct.Struct(">IQ")  # epoch, then position << 24 | chunk index: 12 bytes
_AAD = struct.Struct("<QIQI")  # position, epoch, record disk offset, chunk index in the record
# What a sealed record carries (LogRecord.seal) ahead of its tags, so that it opens wherever it
# is referenced from (a segment header, a checkpoint, a clone's map): the key, the writer's
# epoch, the position, the index of its first chunk in the segment, its disk offset.
SEAL_INFO = struct.Struct("<8sIQIQ")
KEY_RAW = 8  # a key id `k` + 16 hex is 8 bytes in the formats
MAC_BYTES = 16


def key_raw(key_id: str) -> bytes:
    """The 8 bytes a key id is stored as."""
    return bytes.fromhex(key_id[1:])


def key_id_of(raw: bytes) -> str:
    return "k" + raw.hex()


class Sealer:
    """Seals and opens the chunks of one disk's records under one data key."""

    def __init__(self, disk_id: str, key_id: str, key: bytes) -> None:
        self.disk_id = disk_id
        self.key_id = key_id
        self.key_raw = key_raw(key_id)
        self._aead = AESGCM(key)
        self._prefix = f"blockstore chunk|{disk_id}|{key_id}|".encode()
        self._mac_key = hmac.digest(key, f"blockstore mac|{disk_id}|{key_id}".encode(), "sha256")

    def mac(self, data: bytes | memoryview) -> bytes:
        """The authentication tag of a header or checkpoint body."""
        return hmac.digest(self._mac_key, data, "sha256")[:MAC_BYTES]

    def check_mac(self, data: bytes | memoryview, tag: bytes, what: str) -> None:
        if not hmac.compare_digest(self.mac(data), tag):
            raise IntegrityError(
                f"{what} fails to authenticate under key {self.key_id} of disk {self.disk_id} "
                "(altered, moved from another disk, or written under another key)"
            )

    def info(self, seq: int, epoch: int, first_index: int, offset: int) -> bytes:
        return SEAL_INFO.pack(self.key_raw, epoch, seq, first_index, offset)

    @staticmethod
    def _nonce(epoch: int, seq: int, index: int) -> bytes:
        if not 0 <= seq <= MAX_SEQ or not 0 <= index < MAX_CHUNKS:
            raise ValueError(f"position {seq} / chunk {index} is past what a nonce holds")
        return _NONCE.pack(epoch, seq << 24 | index)

    def _aad(self, seq: int, epoch: int, offset: int, chunk_no: int) -> bytes:
        return self._prefix + _AAD.pack(seq, epoch, offset, chunk_no)

    def seal(
        self, seq: int, epoch: int, first_index: int, offset: int, data: memoryview, chunk: int
    ) -> tuple[bytes, bytes]:
        """Seal a record's data (`offset`: its disk offset; `first_index`: the index in the
        segment of its first chunk): (ciphertext, one tag per chunk), the ciphertext the
        length of `data`."""
        out, tags = bytearray(), bytearray()
        for n, at in enumerate(range(0, len(data), chunk)):
            nonce = self._nonce(epoch, seq, first_index + n)
            sealed = self._aead.encrypt(
                nonce, data[at : at + chunk], self._aad(seq, epoch, offset, n)
            )
            out += sealed[:-TAG_BYTES]
            tags += sealed[-TAG_BYTES:]
        return bytes(out), bytes(tags)

    def open(
        self,
        seq: int,
        epoch: int,
        first_index: int,
        offset: int,
        first_chunk: int,
        ciphertext: memoryview,
        tags: bytes,
        chunk: int,
    ) -> bytes:
        """Open whole chunks `first_chunk`, ... of a record (`tags` from that chunk on);
        `IntegrityError` if any fails to authenticate."""
        out = bytearray()
        for n, at in enumerate(range(0, len(ciphertext), chunk)):
            c = first_chunk + n
            tag = tags[n * TAG_BYTES : (n + 1) * TAG_BYTES]
            try:
                out += self._aead.decrypt(
                    self._nonce(epoch, seq, first_index + c),
                    bytes(ciphertext[at : at + chunk]) + tag,
                    self._aad(seq, epoch, offset, c),
                )
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {c} of the record at disk offset {offset} in position {seq} fails "
                    "to authenticate (damaged, moved, or sealed under another key)"
                ) from None
        return bytes(out)

    def open_record(
        self, seal: bytes, first_chunk: int, ciphertext: memoryview, chunk: int
    ) -> bytes:
        """`open` for a record by its `LogRecord.seal` (info, then tags)."""
        _k, epoch, seq, first_index, offset = SEAL_INFO.unpack_from(seal)
        tags = seal[SEAL_INFO.size + first_chunk * TAG_BYTES :]
        return self.open(seq, epoch, first_index, offset, first_chunk, ciphertext, tags, chunk)
