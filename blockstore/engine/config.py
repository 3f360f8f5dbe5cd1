"""The engine's settings (`VolumeConfig`), counters (`VolumeStats`) and size rules.

`SECTOR` is the unit of every offset and length the engine takes; the host cache and the
adapters use the same one. `MAX_SIZE` bounds what a disk may be created or grown to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from blockstore.engine.fence import FENCE_WINDOW
from blockstore.errors import InvalidArgument
from blockstore.store.segment_head import HEADER_READ_BYTES

SECTOR = 512
MAX_SIZE = 64 << 40  # 64 TiB, the largest disk we create or grow to


def check_size(name: str, size: object) -> int:
    """`size` as a disk size: a positive multiple of `SECTOR` up to `MAX_SIZE`."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidArgument(f"{name} {size!r} is not an integer")
    if size <= 0 or size % SECTOR or size > MAX_SIZE:
        raise InvalidArgument(
            f"{name} {size} must be a positive multiple of 512 no larger than {MAX_SIZE} (64 TiB)"
        )
    return size


@dataclass(frozen=True)
class VolumeConfig:
    segment_max_bytes: int = 4 << 20  # a batch closes at this size
    commit_delay: float = 0.0005  # group-commit window after the first write of a batch
    checksum_chunk: int = 4096  # data checksummed per chunk so a small read verifies little
    # An encrypted or compressed disk's chunk: each is sealed (one AES-GCM call and tag) and
    # compressed on its own; at 4 KiB sealing costs 0.4-0.8 ms of CPU per MiB, at 16 KiB 0.23,
    # and zstd compresses better (docs/format.md). A 4 KiB read of it fetches and opens
    # 16 KiB, in the same one GET.
    coded_chunk: int = 16384
    checkpoint_every_segments: int = 256  # at least this many segments between checkpoints
    checkpoint_extents_per_segment: int = 8  # ...and one per this many extents of the map
    checkpoint_max_segments: int = 2048  # ...stretched so far at most (replay reads each header)
    gc_live_threshold: float = 0.5  # segments under this live fraction are compacted
    # Segments smaller than this (and than a quarter of segment_max_bytes) are merged, their
    # live data rewritten in disk order, once together they make at least one segment this
    # big: small random writes otherwise leave a region spread over one object per write, and
    # a sequential read of it then costs one GET per write (docs/engine-measurements.md).
    # 0 disables merging.
    gc_merge_below_bytes: int = 1 << 20
    # ...and only once they are this old: data still being rewritten is mostly dead before
    # then (nothing to copy), and a burst of small writes is not slowed by GC re-reading it.
    gc_merge_min_age_seconds: float = 120.0
    gc_min_age_seconds: float = 300.0  # nothing is deleted until unreferenced this long
    max_inflight_segments: int = 4  # segment PUTs may be pipelined; acks stay in order
    gc_interval_seconds: float = 60.0  # background GC period in writable volumes; 0 disables
    # A volume with no write since a pass that left nothing to do skips its passes (an idle
    # disk sends no requests) for up to this long; then one pass looks again (what an API
    # call elsewhere may have freed: a deleted snapshot, a shorter retention window; and what
    # left an idle disk's retention window meanwhile, deleted up to this much later).
    gc_idle_interval_seconds: float = 3600.0
    header_read_bytes: int = HEADER_READ_BYTES  # first ranged GET of a segment header

    def __post_init__(self) -> None:
        if self.segment_max_bytes < SECTOR:
            raise InvalidArgument(f"segment_max_bytes {self.segment_max_bytes} is too small")
        for name in ("checksum_chunk", "coded_chunk"):
            value = getattr(self, name)
            if value < SECTOR or value % SECTOR:
                raise InvalidArgument(f"{name} {value} must be a positive multiple of 512")
        if not 1 <= self.max_inflight_segments <= FENCE_WINDOW:
            raise InvalidArgument(
                f"max_inflight_segments {self.max_inflight_segments} must be 1..{FENCE_WINDOW}"
            )
        if self.gc_merge_min_age_seconds < 0:
            raise InvalidArgument(
                f"gc_merge_min_age_seconds {self.gc_merge_min_age_seconds} must be >= 0"
            )
        if self.checkpoint_every_segments < 1:
            raise InvalidArgument(f"checkpoint_every_segments {self.checkpoint_every_segments} < 1")
        if self.checkpoint_extents_per_segment < 1:
            raise InvalidArgument(
                f"checkpoint_extents_per_segment {self.checkpoint_extents_per_segment} < 1"
            )

    @property
    def write_step(self) -> int:
        """The most data one record carries: a segment's worth, in whole sectors."""
        return self.segment_max_bytes - self.segment_max_bytes % SECTOR


@dataclass
class VolumeStats:
    """Counters of one open volume; /metrics and the bench read these, nobody re-counts.
    Changed under `lock` (not a field: `blockstore.stats.counters` copies the counters only)."""

    writes: int = 0
    bytes_written: int = 0  # bytes the caller wrote (not counting trims)
    trims: int = 0
    reads: int = 0
    bytes_read: int = 0
    flushes: int = 0
    segments_written: int = 0
    segments_replayed: int = 0
    segments_void: int = 0  # stale segments of superseded writers, skipped (never applied)
    fences_written: int = 0
    log_resumes: int = 0  # times this writer took the log up again past its own torn PUT
    bytes_uploaded: int = 0  # every byte this volume PUT (segments, checkpoints, records)
    puts: int = 0
    gets: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0
    bytes_fetched: int = 0
    checksum_failures: int = 0
    checkpoints_written: int = 0
    commit_errors: int = 0
    gc_passes: int = 0
    gc_segments_compacted: int = 0
    gc_bytes_rewritten: int = 0
    gc_objects_deleted: int = 0
    gc_bytes_deleted: int = 0
    gc_errors: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
