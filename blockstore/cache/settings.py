"""Settings, counters and the inner layer of the host cache, shared by its parts.

Like the one header nbdkit's cache filter shares between its files: `HostCacheConfig` (frozen,
checked when built, so a bad setting fails before anything is served), `HostCacheStats` (the
counters /metrics and the bench read; nobody re-counts) and `VolumeLike`, all the cache needs of
the layer below it (`blockstore.engine.volume.Volume`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from blockstore.errors import InvalidArgument
from blockstore.store.base import Buffer

MODES = ("none", "readonly", "readwrite")


class VolumeLike(Protocol):
    """What the cache needs of a `blockstore.engine.volume.Volume` (kept narrow on purpose)."""

    @property
    def size(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    @property
    def prior_epoch(self) -> int: ...

    @property
    def writable(self) -> bool: ...

    def readinto(self, offset: int, buf: memoryview) -> None: ...

    def write(self, offset: int, data: Buffer, *, durable: bool = False) -> None: ...

    def write_group(
        self, records: Sequence[tuple[int, int, bytes | memoryview | None]]
    ) -> None: ...

    def trim(self, offset: int, length: int, *, durable: bool = False) -> None: ...

    def zero(self, offset: int, length: int, *, durable: bool = False) -> None: ...

    def resize(self, new_size: int, *, allow_shrink: bool = False) -> None: ...

    def flush(self) -> None: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]: ...


@dataclass(frozen=True)
class HostCacheConfig:
    """Settings of one host cache. Sizes are bytes."""

    mode: str = "none"
    block_size: int = 64 * 1024  # unit of fill, eviction and the present map
    cache_size: int = 1 << 30  # bound on the blocks the cache file may hold
    # readwrite: data not yet durable in the store, counting each cache block at most once
    # however often it is rewritten; the journal may hold four times this.
    dirty_limit: int = 256 << 20
    readahead: int = 1 << 20  # extra bytes fetched when a miss continues a sequential stream
    write_wait_seconds: float = 30.0  # readwrite: how long a write waits for dirty room -> EIO
    # readwrite: the uploader sends writes no flush has asked for once the oldest is this old
    # (seconds), or once `upload_batch` bytes of them wait, whichever is first. Until then a
    # flush sends them itself, in one segment: one PUT per flush (issue #21). Lower it to
    # upload earlier between flushes, at the price of more PUTs.
    upload_delay: float = 1.0
    upload_batch: int = 4 << 20
    journal_file_size: int = 64 << 20  # the journal rolls to a new file past this size
    upload_retry_max_delay: float = 2.0  # uploader backoff cap while the store fails
    # readwrite: bytes of pending writes also kept in memory, so that the uploader need not
    # read them back from the journal (a pread per entry was most of its CPU; see
    # docs/cache-measurements.md); past it, entries are read from the journal as before.
    upload_memory: int = 16 << 20
    # readwrite: an upload round whose journal entries overwrite each other goes up as one
    # segment of at most this many bytes, without the overwritten parts (cache/coalesce.py);
    # 0 sends every round entry by entry.
    upload_group_max: int = 64 << 20

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(
                f"cache mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        bs = self.block_size
        if bs < 4096 or bs & (bs - 1):
            raise InvalidArgument(f"cache block size must be a power of two >= 4096, not {bs}")
        if self.upload_delay < 0:
            raise InvalidArgument(f"upload delay must be >= 0 seconds, not {self.upload_delay}")
        if self.upload_batch < 0:
            raise InvalidArgument(f"upload batch must be >= 0 bytes, not {self.upload_batch}")
        if self.upload_group_max < 0:
            raise InvalidArgument(f"upload group max must be >= 0, not {self.upload_group_max}")
        if self.cache_size < 16 * bs:
            raise InvalidArgument("cache size must hold at least 16 cache blocks")
        if self.mode == "readwrite" and not 0 < self.dirty_limit <= self.cache_size // 2:
            # Dirty blocks cannot be evicted: keep room for clean ones so reads still cache.
            raise InvalidArgument("dirty limit must be positive and at most half the cache size")


@dataclass
class HostCacheStats:
    """Counters of one host cache; read by the bench and /metrics (nobody re-counts)."""

    hits: int = 0  # reads served wholly from the cache file
    misses: int = 0  # reads that had to fetch from the volume
    fills: int = 0  # blocks installed into the cache file from the volume
    evictions: int = 0
    dirty_bytes: int = 0  # readwrite: data not yet durable, each cache block at most once
    journal_bytes: int = 0  # readwrite: journal bytes not yet durable in the store
    readahead: int = 0  # blocks fetched beyond what the read asked for
    uploads: int = 0  # journal entries applied to the volume
    coalesced_bytes: int = 0  # journal bytes never sent: a later write of their round replaced them
    syncs: int = 0  # successful upload+volume.flush rounds
    replayed: int = 0  # journal entries replayed at open
    journal_discarded: int = 0  # entries of a fenced epoch's journal dropped at open
    write_waits: int = 0  # writes that had to wait for dirty room
    upload_errors: int = 0  # failed upload rounds (the uploader retries)
