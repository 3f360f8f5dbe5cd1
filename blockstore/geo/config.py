"""The replicator's settings."""

from __future__ import annotations

from dataclasses import dataclass

from blockstore.engine.fence import FENCE_WINDOW

# Copies within one window may land out of order. The window is at most the engine's fence
# window, so a late copy can only land on a position a new writer on the target fences.
MAX_WINDOW = FENCE_WINDOW


@dataclass(frozen=True)
class ReplicationConfig:
    interval_seconds: float = 0.5  # pause between passes of one disk
    max_parallel: int = 4  # object copies at once per disk (at most MAX_WINDOW)
    mirror_every: int = 20  # passes between two mirrors of the source's deletions
    rpo_target_seconds: float = 300.0  # lag above this flags the disk
    marker_every_seconds: float = 5.0  # progress marker writes, at most this often
