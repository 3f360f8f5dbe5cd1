"""The committer thread of a writable volume: it moves the commit pipeline's batches along when
no writer is waiting to do it, and does the pipeline's slow jobs off the write path.

Each turn, under the volume lock: seal the open batch when it is due (`commit_delay` after its
first write, or asked for, and a PUT slot free), forget a PUT error once someone asked again,
send sealed and failed batches, acknowledge what is stored. Outside the lock, one job at a time:
write a checkpoint that acknowledgement found due (blockstore/engine/checkpoints.py), or take
the log up again past a torn PUT of ours once every PUT in flight has finished
(`fencing.resume_position`), moving every batch not acknowledged to new positions.

It returns when the volume stops (after the last batch is acknowledged, or failed for good) or
is abandoned; a checkpoint that fails counts `commit_errors` and is tried again later.
"""

from __future__ import annotations

import threading
import time

from blockstore.engine.commit import CommitPipeline
from blockstore.engine.fencing import resume_position
from blockstore.errors import BlockstoreError, Fenced

_RESUME = "resume"
_CHECKPOINT = "checkpoint"


class Committer:
    """The thread that runs `pipeline` (see the module docstring)."""

    def __init__(self, pipeline: CommitPipeline) -> None:
        self.p = pipeline
        self.state = pipeline.state

    def start(self) -> threading.Thread:
        """Start the pipeline's PUT pool and this thread; returns the thread."""
        self.p.start_puts()
        name = f"commit-{self.state.disk_id}"
        t = threading.Thread(target=self.run, name=name, daemon=True)
        t.start()
        return t

    def run(self) -> None:
        while True:
            with self.state.lock:
                job = self._next_job_locked()
            if job is None:
                return
            if job == _RESUME:
                self._resume()
                continue
            try:
                self.p.checkpointer.write()
            except BlockstoreError:
                with self.p.ctx.stats.lock:
                    self.p.ctx.stats.commit_errors += 1  # the next one will try again

    def _next_job_locked(self) -> str | None:
        """Move the batches along until there is a job outside the lock (`_RESUME`,
        `_CHECKPOINT`) or the thread should return (None)."""
        p, st, cfg = self.p, self.state, self.p.ctx.config
        while True:
            if st.abandoned:
                return None
            now = time.monotonic()
            room = len(p.inflight) + len(p.sealed) < cfg.max_inflight_segments
            self._seal_if_due_locked(now, room)
            if p.error is not None and p.flush_gen > p.error_gen:
                p.error = None  # someone asked again: retry the queued batches
            if p.error is None and st.fatal is None:
                p.submit_locked()
            if p.ack_stored_locked():
                continue  # slots freed: seal and submit again
            running = any(b.future is not None and not b.future.done() for b in p.inflight)
            if (
                p.resume_at is not None
                and p.error is None
                and st.fatal is None
                and not (st.abandoned or running)
            ):
                return _RESUME  # every PUT has finished: take the log up again past the torn one
            if p.checkpoint_due:
                p.checkpoint_due = False
                return _CHECKPOINT
            if st.stopping and not running:
                idle = not p.inflight and not p.sealed and p.open is None
                if idle or p.error is not None or st.fatal is not None:
                    st.cv.notify_all()
                    return None
            ob = p.open
            timeout = None
            if ob is not None and room:
                timeout = max(1e-4, cfg.commit_delay - (now - ob.first))
            st.cv.wait(timeout)

    def _seal_if_due_locked(self, now: float, room: bool) -> None:
        """Seal the open batch if it may go. While every PUT slot is busy it stays open, and
        writes arriving meanwhile join it: under load segments grow instead of queueing as
        many small PUTs (it could not be sent any sooner anyway)."""
        p, stopping = self.p, self.state.stopping
        ob = p.open
        if (
            ob is not None
            and (room or stopping)
            and (stopping or p.flush_target >= ob.n or now - ob.first >= p.ctx.config.commit_delay)
        ):
            p.seal_locked()

    def _resume(self) -> None:
        """Take the log up again, in our own epoch, past the torn object our PUT left; every
        batch not acknowledged moves, in order, to the positions after the resume fence.
        Fenced for good when a newer writer may exist; any other failure is the pipeline's
        error, and the next flush tries again."""
        p, st = self.p, self.state
        with st.lock:
            torn = p.resume_at
        if torn is None:
            return
        try:
            ctx = p.ctx
            at = resume_position(
                ctx.store, ctx.stats, st.disk_id, st.epoch, torn, ctx.config, ctx.keys
            )
        except Fenced as exc:
            with st.lock:
                if st.fatal is None:
                    st.fatal = exc
                st.cv.notify_all()
            return
        except BlockstoreError as exc:
            with st.lock:
                p.set_error_locked(exc)
            return
        with st.lock:
            if not (st.abandoned or st.fatal is not None):
                p.move_batches_locked(torn, at)
