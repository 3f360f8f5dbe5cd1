"""Compression of a disk's data, chunk by chunk (issue #20; docs/format.md, "Compression").

Place: called by the segment codec (segment.py) when it encodes a WRITE record of a disk whose
volume record names a codec, and by the engine's reader when it opens one. Each chunk of the
record is compressed on its own, so a read of one chunk fetches and decompresses that chunk
alone; a chunk that does not shrink by at least `MIN_SAVING` is stored as it is (its stored
length is then its plain length, which is how a reader tells). Compression comes before
sealing: an encrypted disk seals the compressed chunks.

Codecs: `zstd` (level 1: compression at write speed) and `lz4` (block format). Compressor
objects are not thread-safe, and encoding and reading run in several threads: one per thread.

Failure: bytes that do not decompress to exactly the chunk's plain length raise
`IntegrityError` (they passed their checksum, so only a bug or a forged record gets here).
"""

from __future__ import annotations

import threading

import lz4.block
import zstandard

from blockstore.errors import IntegrityError, InvalidArgument

NONE, ZSTD, LZ4 = 0, 1, 2
CODECS = {"none": NONE, "zstd": ZSTD, "lz4": LZ4}  # the API's names -> the format's ids
NAMES = {v: k for k, v in CODECS.items()}
MIN_SAVING = 512  # a chunk compressed by less than this is stored as it is
ZSTD_LEVEL = 1

_local = threading.local()


def codec_id(name: str) -> int:
    try:
        return CODECS[name]
    except KeyError:
        raise InvalidArgument(
            f"compression {name!r} is not one of {', '.join(sorted(CODECS))}"
        ) from None


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    pair = getattr(_local, "zstd", None)
    if pair is None:
        pair = _local.zstd = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=False),
            zstandard.ZstdDecompressor(),
        )
    return pair


def compress(codec: int, chunk: bytes | memoryview) -> bytes | memoryview:
    """The chunk as stored: compressed, or `chunk` itself when that saves too little."""
    if codec == ZSTD:
        out = _zstd()[0].compress(chunk)
    elif codec == LZ4:
        out = lz4.block.compress(chunk, store_size=False)
    else:
        return chunk
    return out if len(out) + MIN_SAVING <= len(chunk) else chunk


def decompress(codec: int, stored: bytes | memoryview, plain_len: int) -> bytes | memoryview:
    """The plain chunk of `plain_len` bytes from its stored bytes."""
    if len(stored) == plain_len:
        return stored  # stored as it is
    try:
        if codec == ZSTD:
            out = _zstd()[1].decompress(stored, max_output_size=plain_len)
        elif codec == LZ4:
            out = lz4.block.decompress(stored, uncompressed_size=plain_len)
        else:
            raise IntegrityError(f"a chunk is stored compressed under unknown codec {codec}")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise IntegrityError(f"a {NAMES.get(codec)} chunk does not decompress: {exc}") from None
    if len(out) != plain_len:
        raise IntegrityError(f"a chunk decompressed to {len(out)} bytes, not {plain_len}")
    return out
