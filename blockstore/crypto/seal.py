"""Sealing an encrypted disk's data chunk by chunk, and authenticating its segment headers and
checkpoints (issue #20; docs/format.md, "Encryption"). The segment and checkpoint codecs
(blockstore/format/) call it; the engine hands them a `DiskKeys` (blockstore/crypto/disk.py).

Each checksum chunk of a record (4 KiB by default) is sealed on its own with AES-256-GCM under
the writing disk's data key, so a 4 KiB read fetches and opens 4 KiB, as it verifies 4 KiB
before. Its 16-byte tag goes in the header after the record's sums (xxh3 of the ciphertext,
so integrity is checked without the key).

Nonces never repeat under one key: a data key seals only its own disk's segments (a clone
gets a key of its own and reads its source's records with the source's key), and the nonce is
the writer's epoch (32 bits), the segment's log position (40 bits) and the chunk's index within
the segment (24 bits). One epoch writes one position at most once with given contents: a PUT
sent again carries the same batch, so the same bytes under the same nonce; a batch moved past a
torn PUT takes new positions; GC's rewrites are new writes.

Associated data binds a chunk to where it belongs: the disk id, the key id, the position, the
epoch and the record's disk offset (the chunk's place within the segment is in its nonce). A
chunk moved to another disk, position, offset or place, or a segment swapped for another one's,
fails to open: `IntegrityError` (EIO), never wrong bytes.

Cost: one `encrypt_into` / `decrypt_into` per chunk (16 KiB on an encrypted disk,
`VolumeConfig.coded_chunk`), written straight into its place (a read decrypts in the caller's
buffer); docs/format.md has the figures.

Headers and checkpoints are authenticated as a whole with HMAC-SHA256 (a key derived from the
data key, no nonce to manage; 16 bytes kept): a trim record added to a header, or a checkpoint
edited to point at older records, fails as a moved chunk does.
"""

from __future__ import annotations

import hashlib
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
# Position, epoch, the record's disk offset. A chunk's place in the record needs no binding
# here: the nonce holds its index in the segment, so a chunk moved within it fails as well.
_AAD = struct.Struct("<QIQ")
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
        mac_key = hmac.digest(key, f"blockstore mac|{disk_id}|{key_id}".encode(), "sha256")
        # Keyed once: each tag copies the keyed state (a one-shot HMAC sets OpenSSL up anew
        # on every call, which was most of an encrypted 4 KiB write's extra CPU).
        self._hmac = hmac.new(mac_key, digestmod=hashlib.sha256)

    def mac(self, data: bytes | memoryview) -> bytes:
        """The authentication tag of a header or checkpoint body."""
        h = self._hmac.copy()
        h.update(data)
        return h.digest()[:MAC_BYTES]

    def check_mac(self, data: bytes | memoryview, tag: bytes, what: str) -> None:
        if not hmac.compare_digest(self.mac(data), tag):
            raise IntegrityError(
                f"{what} fails to authenticate under key {self.key_id} of disk {self.disk_id} "
                "(altered, moved from another disk, or written under another key)"
            )

    def info(self, seq: int, epoch: int, first_index: int, offset: int) -> bytes:
        return SEAL_INFO.pack(self.key_raw, epoch, seq, first_index, offset)

    @staticmethod
    def _base(seq: int, first_index: int, n_chunks: int) -> int:
        """The nonce's low 64 bits for the segment's chunk 0; chunk i's is base + i."""
        if not 0 <= seq <= MAX_SEQ or not 0 <= first_index <= MAX_CHUNKS - n_chunks:
            raise ValueError(f"position {seq} / chunk {first_index} is past what a nonce holds")
        return seq << 24 | first_index

    def _aad(self, seq: int, epoch: int, offset: int) -> bytes:
        return self._prefix + _AAD.pack(seq, epoch, offset)

    def seal(
        self, seq: int, epoch: int, first_index: int, offset: int, data: memoryview, chunk: int
    ) -> tuple[memoryview, bytes]:
        """Seal a record's data (`offset`: its disk offset; `first_index`: the index in the
        segment of its first chunk): (ciphertext, one tag per chunk), the ciphertext the
        length of `data`."""
        n_chunks = -(-len(data) // chunk)
        # Each chunk is sealed in place: its tag lands where the next chunk's ciphertext goes
        # and is moved out before that chunk overwrites it (no copy of the data itself).
        out = memoryview(bytearray(len(data) + TAG_BYTES))
        tags = bytearray(TAG_BYTES * n_chunks)
        aad = self._aad(seq, epoch, offset)
        encrypt_into, pack = self._aead.encrypt_into, _NONCE.pack
        base = self._base(seq, first_index, n_chunks)
        for n in range(n_chunks):
            at = n * chunk
            piece = data[at : at + chunk]
            end = at + len(piece)
            encrypt_into(pack(epoch, base + n), piece, aad, out[at : end + TAG_BYTES])
            tags[n * TAG_BYTES : (n + 1) * TAG_BYTES] = out[end : end + TAG_BYTES]
        return out[: len(data)], bytes(tags)

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
        out = bytearray(len(ciphertext))
        info = (seq, epoch, first_index, offset)
        self._open_into(info, first_chunk, ciphertext, tags, memoryview(out), chunk)
        return bytes(out)

    def _open_into(
        self,
        info: tuple[int, int, int, int],
        first_chunk: int,
        ciphertext: memoryview,
        tags: bytes | memoryview,
        dst: memoryview,
        chunk: int,
    ) -> None:
        """Open chunks into `dst` (as long as `ciphertext`; it may be the very same memory:
        each chunk is copied out, with its tag, before its plaintext is written)."""
        seq, epoch, first_index, offset = info
        n_chunks = -(-len(ciphertext) // chunk)
        aad = self._aad(seq, epoch, offset)
        decrypt_into, pack = self._aead.decrypt_into, _NONCE.pack
        base = self._base(seq, first_index + first_chunk, n_chunks)
        for n in range(n_chunks):
            at = n * chunk
            sealed = b"".join(
                (ciphertext[at : at + chunk], tags[n * TAG_BYTES : (n + 1) * TAG_BYTES])
            )
            try:
                decrypt_into(
                    pack(epoch, base + n), sealed, aad, dst[at : at + len(sealed) - TAG_BYTES]
                )
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {first_chunk + n} of the record at disk offset {offset} in position "
                    f"{seq} fails to authenticate (damaged, moved, or sealed under another key)"
                ) from None

    def seal_pieces(
        self, seq: int, epoch: int, first_index: int, offset: int, pieces: list[bytes | memoryview]
    ) -> tuple[bytes, bytes]:
        """`seal` for chunks of any length (a compressed record's): (ciphertext, tags)."""
        aad, pack = self._aad(seq, epoch, offset), _NONCE.pack
        base = self._base(seq, first_index, len(pieces))
        sealed = [self._aead.encrypt(pack(epoch, base + n), p, aad) for n, p in enumerate(pieces)]
        return b"".join(s[:-TAG_BYTES] for s in sealed), b"".join(s[-TAG_BYTES:] for s in sealed)

    def open_pieces(self, seal: bytes, first_chunk: int, pieces: list[memoryview]) -> list[bytes]:
        """Open a compressed record's stored chunks `first_chunk`, ... (`IntegrityError` if any
        fails to authenticate)."""
        _k, epoch, seq, first_index, offset = SEAL_INFO.unpack_from(seal)
        tags = memoryview(seal)[SEAL_INFO.size + first_chunk * TAG_BYTES :]
        aad, pack = self._aad(seq, epoch, offset), _NONCE.pack
        base = self._base(seq, first_index + first_chunk, len(pieces))
        out = []
        for n, p in enumerate(pieces):
            tag = tags[n * TAG_BYTES : (n + 1) * TAG_BYTES]
            try:
                out.append(self._aead.decrypt(pack(epoch, base + n), b"".join((p, tag)), aad))
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {first_chunk + n} of the record at disk offset {offset} in position "
                    f"{seq} fails to authenticate (damaged, moved, or sealed under another key)"
                ) from None
        return out

    def open_record(
        self, seal: bytes, first_chunk: int, ciphertext: memoryview, dst: memoryview, chunk: int
    ) -> None:
        """Open whole chunks `first_chunk`, ... of a record by its `LogRecord.seal` (info, then
        tags) into `dst`, which may be `ciphertext` itself (decrypted in place)."""
        _k, epoch, seq, first_index, offset = SEAL_INFO.unpack_from(seal)
        tags = memoryview(seal)[SEAL_INFO.size + first_chunk * TAG_BYTES :]
        info = (seq, epoch, first_index, offset)
        self._open_into(info, first_chunk, ciphertext, tags, dst, chunk)
