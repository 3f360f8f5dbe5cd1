"""Checkpoints: the durable map written whole at the acknowledged log position, so that an open
replays only the segments after it.

When: the committer writes one, off the write path, once `due_locked` says enough segments
were acknowledged since the last (`checkpoint_every_segments`, stretched for a big map, since a
checkpoint costs CPU and bytes in proportion to the map: docs/engine-measurements.md); GC,
snapshots, `Volume.checkpoint()` and a clean close write one too. One at a time
(`Checkpointer.lock`).

A checkpoint is immutable and created if absent: one already at the same seq describes the same
log prefix, so the same content. A crash while writing one loses nothing (the log still holds
every segment after the previous one); a checkpoint a crash left is simply the newest.
"""

from __future__ import annotations

import contextlib
import threading

from blockstore.engine.state import Context
from blockstore.errors import PreconditionFailed
from blockstore.format import keys
from blockstore.format.checkpoint import encode_checkpoint


class Checkpointer:
    """Writes one volume's checkpoints and decides when the next is due."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self.lock = threading.Lock()  # one checkpoint at a time
        self._asked_seq = 0  # acked seq when the last checkpoint was asked for (state.lock)

    def due_locked(self) -> bool:
        """Whether enough was acknowledged since the last checkpoint to write one; when it is,
        the position is taken as asked for (called under `state.lock` after acknowledging).

        A checkpoint costs CPU and bytes in proportion to the map, so a big map is checkpointed
        less often (one per `checkpoint_extents_per_segment` extents, up to
        `checkpoint_max_segments`): its cost per segment stays bounded."""
        st, cfg = self.state, self.ctx.config
        extents = len(st.durable) // cfg.checkpoint_extents_per_segment
        every = max(cfg.checkpoint_every_segments, min(cfg.checkpoint_max_segments, extents))
        if st.acked_seq - max(st.last_ckpt_seq, self._asked_seq, 0) < every:
            return False
        self._asked_seq = st.acked_seq
        return True

    def write(self) -> tuple[int, set[str]]:
        """Checkpoint the durable map at the acknowledged seq (if it moved since the last);
        returns (seq, segments named)."""
        st = self.state
        with self.lock:
            with st.lock:
                seq = st.acked_seq
                if seq <= st.last_ckpt_seq:
                    return st.last_ckpt_seq, st.last_ckpt_refs
                starts, ends, vals = st.durable.copy().lists()
                size = st.durable_size
                sizes = dict(st.segments)
                fences = list(st.fences)
            refs = {rec.seg_key for rec, _d in vals}
            blob = encode_checkpoint(
                st.disk_id, seq, st.log_epoch, size, starts, ends, vals, sizes, fences,
                self.ctx.keys.writer,
            )  # fmt: skip
            # A checkpoint already at this seq describes the same log prefix: same content.
            with contextlib.suppress(PreconditionFailed):
                self.ctx.store.put(keys.checkpoint_key(st.disk_id, seq), blob, if_none_match=True)
            with st.lock:
                st.last_ckpt_seq = seq
                st.last_ckpt_refs = refs
                st.last_ckpt_size = size
                # Forget sizes of segments nothing will name again (bounded memory).
                newer = keys.segment_key(st.disk_id, seq)
                st.segments = {k: v for k, v in st.segments.items() if k in refs or k > newer}
                born = st.segment_acked_at
                st.segment_acked_at = {k: t for k, t in born.items() if k in st.segments}
                self.ctx.stats.checkpoints_written += 1
            return seq, refs
