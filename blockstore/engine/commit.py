"""The write path: records join batches, batches become segments (group commit), segments are
acknowledged in log order.

States of a batch: *open* (records still join it; at most one), *sealed* (closed, waiting for a
PUT slot), *in flight* (its PUT running, or failed and waiting to be re-sent), *acknowledged*
(its records moved from the pending overlay into the durable map). A batch is sealed when it
reaches `segment_max_bytes`, or, once a PUT slot is free, when a durable write or flush waits
for it (the waiting thread seals and PUTs it itself) or `commit_delay` after its first write;
while every slot is busy, later writes keep joining it, so under load segments grow instead of
queueing as many small PUTs. PUTs run up to `max_inflight_segments` at a time
(`uploader.SegmentUploader`; the committer thread, `committer.py`, sends them when no writer
does), but are acknowledged strictly in seq order, by whichever thread sees the head PUT done
first, under the volume lock, exactly once.

Invariants: batches are numbered in order (`n`, which waiters wait for) and hold consecutive
log positions (`seq`); nothing is acknowledged that the store did not acknowledge, nor before
every earlier batch; the writer never has a PUT outstanding more than `max_inflight_segments`
(at most FENCE_WINDOW) positions past the last it acknowledged.

Failures: a failed PUT is not retried in a loop here: the waiting flush or durable write gets
the error, the batch stays queued and is re-sent on the next request. Inside an NBD request the
request's deadline rules instead (blockstore/deadline.py): a durable write or flush waits until
that deadline and no longer, and a transient failure re-sends the batch rather than failing a
request whose deadline is still ahead. A fenced writer (`Fenced`) acknowledges nothing again; a
writer whose PUT left a torn object resumes past it (`fencing.resume_position`). A crash loses
exactly what was not acknowledged.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from blockstore import deadline as request_deadline
from blockstore.engine.checkpoints import Checkpointer
from blockstore.engine.config import check_size
from blockstore.engine.state import Context
from blockstore.engine.uploader import Batch, SegmentUploader, TornPosition
from blockstore.errors import BlockstoreError, Conflict, Fenced, Unavailable
from blockstore.format import keys
from blockstore.format.segment import RESIZE, TRIM, WRITE, LogRecord, encoded_size


class CommitPipeline:
    """The batches of one writable volume, from append to acknowledgement."""

    def __init__(self, ctx: Context, checkpointer: Checkpointer) -> None:
        self.ctx = ctx
        self.state = state = ctx.state
        self.checkpointer = checkpointer
        self.uploader = SegmentUploader(
            ctx.store, state.disk_id, state.epoch, ctx.config, ctx.keys.writer, ctx.codec
        )
        # All below under state.lock.
        self.open: Batch | None = None
        self.sealed: deque[Batch] = deque()
        self.inflight: deque[Batch] = deque()
        self.next_seq = state.acked_seq + 1
        self.acked_n = 0  # ordinal of the last acknowledged batch
        self.next_n = 1
        self.resume_at: int | None = None  # position of our own torn PUT, until resumed
        self.flush_target = 0
        self.flush_gen = 0
        self.error: BaseException | None = None
        self.error_gen = 0
        self.checkpoint_due = False
        self.ack_waiters = 0  # threads in await_locked's wait
        self.executor: ThreadPoolExecutor | None = None

    def start_puts(self) -> None:
        """Start the pool that runs the PUTs the committer sends (`submit_locked`)."""
        self.executor = ThreadPoolExecutor(
            self.ctx.config.max_inflight_segments,
            thread_name_prefix=f"seg-put-{self.state.disk_id}",
        )

    def stop(self, *, wait_puts: bool) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=wait_puts, cancel_futures=True)

    # -- the write calls --

    def write(self, offset: int, data: bytes | bytearray | memoryview, *, durable: bool) -> None:
        """Join the open batch (visible to reads at once); with durable=True, return only when
        the segment holding it and every earlier one are acknowledged by the store."""
        st = self.state
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = len(mv)
        st.check_range(offset, n)
        if n == 0:
            return
        # Copy once: the caller (nbdkit) reuses its buffer after we return.
        payload = data if isinstance(data, bytes) else mv.tobytes()
        step = self.ctx.config.write_step
        with st.lock:
            st.check_can_write_locked()
            self.backpressure_locked()
            target = 0
            for pos in range(0, n, step):
                piece = payload[pos : pos + step] if n > step else payload
                rec = LogRecord(WRITE, offset + pos, len(piece), mem=piece)
                target = self.append_locked(rec, wake=not durable)
            self.ctx.stats.writes += 1
            self.ctx.stats.bytes_written += n
        if durable:
            self.commit_through(target)

    def write_group(self, records: Sequence[tuple[int, int, bytes | memoryview | None]]) -> None:
        """Append (offset, length, data or None for a hole) records as one batch of their own,
        whatever its size: one segment, one PUT, so the store gets all of them or none (the
        write-back's coalesced rounds rely on it: cache/coalesce.py). Not durable until a
        flush. The data is kept by reference: the caller passes bytes nobody changes."""
        st = self.state
        for offset, length, _data in records:
            st.check_range(offset, length)
        with st.lock:
            st.check_can_write_locked()
            self.backpressure_locked()
            self.seal_locked()
            for offset, length, data in records:
                if length == 0:
                    continue
                if data is None:
                    self.append_locked(LogRecord(TRIM, offset, length), grouped=True)
                    self.ctx.stats.trims += 1
                else:
                    assert len(data) == length
                    self.append_locked(LogRecord(WRITE, offset, length, mem=data), grouped=True)
                    self.ctx.stats.writes += 1
                    self.ctx.stats.bytes_written += length
            self.seal_locked()

    def trim(self, offset: int, length: int, *, durable: bool) -> None:
        """Make the range a hole (reads as zeros, stores nothing)."""
        st = self.state
        st.check_range(offset, length)
        if length == 0:
            return
        with st.lock:
            st.check_can_write_locked()
            self.backpressure_locked()
            target = self.append_locked(LogRecord(TRIM, offset, length), wake=not durable)
            self.ctx.stats.trims += 1
        if durable:
            self.commit_through(target)

    def resize(self, new_size: int, *, allow_shrink: bool) -> None:
        """Grow, or shrink with allow_shrink; ordered in the log with the writes around it."""
        check_size("new size", new_size)
        st = self.state
        with st.lock:
            st.check_can_write_locked()
            if new_size == st.size:
                return
            if new_size < st.size and not allow_shrink:
                raise Conflict(
                    f"shrinking disk {st.disk_id!r} from {st.size} to {new_size} bytes "
                    "would drop data; pass allow_shrink=True to do it"
                )
            self.backpressure_locked()
            self.append_locked(LogRecord(RESIZE, new_size, 0))

    def flush(self) -> None:
        """Return when every write acknowledged before this call is durable in the store."""
        st = self.state
        with st.lock:
            if st.fatal is not None:
                raise st.fatal
            self.ctx.stats.flushes += 1
            target = self.next_n - 1
            if self.acked_n >= target:
                return
        self.commit_through(target)

    # -- batches --

    def append_locked(self, rec: LogRecord, *, wake: bool = True, grouped: bool = False) -> int:
        """Add a record to the open batch (opening one); returns the batch's ordinal. A
        `grouped` record never seals the batch by size (see `write_group`)."""
        b = self.open
        if b is None:
            # The group-commit window is a latency knob timed by the real monotonic clock (a
            # condition wait cannot sleep on a fake clock); GC ages use the injected clock.
            b = self.open = Batch(self.next_seq, self.next_n, time.monotonic())
            self.next_seq += 1
            self.next_n += 1
            if wake:  # start the commit-delay timer (a durable write asks for a PUT anyway)
                self.state.cv.notify_all()
        b.records.append(rec)
        self.state.add_pending_locked(rec)
        b.nbytes += encoded_size(rec.kind, rec.length, self.ctx.config.checksum_chunk)
        if rec.kind == WRITE:
            b.data_len += rec.length
        if b.nbytes >= self.ctx.config.segment_max_bytes and not grouped:
            self.seal_locked()
        return b.n

    def seal_locked(self) -> None:
        b = self.open
        if b is not None:
            self.open = None
            self.sealed.append(b)
            self.state.cv.notify_all()

    def backpressure_locked(self) -> None:
        """Bound memory: wait while too many batches are queued behind the store."""
        limit = 2 * self.ctx.config.max_inflight_segments
        if len(self.sealed) + len(self.inflight) < limit:
            return
        oldest = (self.inflight or self.sealed)[0].n
        target = oldest + len(self.sealed) + len(self.inflight) - limit
        self.await_locked(target, self.request_locked(target, own_put=False)[0])

    # -- waiting for acknowledgement --

    def commit_through(self, target: int) -> None:
        """Block until batch `target` (an ordinal) and all before it are acknowledged (lock
        not held)."""
        st = self.state
        with st.lock:
            my_gen, own = self.request_locked(target, own_put=True)
        if own is not None:
            self._put_own(own)
        with st.lock:
            if own is not None:
                self.ack_stored_locked()
            self.await_locked(target, my_gen)

    def request_locked(self, target: int, *, own_put: bool) -> tuple[int, Batch | None]:
        """Ask for everything through `target` to be stored. When a PUT slot is free the open
        batch is sent at once, by the asking thread itself if `own_put` (it returns the batch:
        the caller PUTs it without the lock, then acknowledges). Returns the request's
        generation, for `await_locked`."""
        self.flush_gen += 1
        if target > self.flush_target:
            self.flush_target = target
        ob = self.open
        own = None
        if (
            ob is not None
            and ob.n <= target
            and self.error is None
            and self.state.fatal is None
            and self.resume_at is None
            and len(self.inflight) + len(self.sealed) < self.ctx.config.max_inflight_segments
        ):
            # Left to the committer, the batch would stay open until that thread got the GIL,
            # and the other writers of a QD4 stream would pile into it: one big PUT at a time
            # instead of several in parallel. Sent by this thread, it also skips two thread
            # hand-offs (docs/engine-measurements.md).
            self.seal_locked()
            if own_put and len(self.sealed) == 1:  # the batch just sealed, alone
                self.sealed.pop()
                ob.future = Future()
                ob.future.set_running_or_notify_cancel()
                self.inflight.append(ob)
                own = ob
            self.submit_locked()
        if own is None:
            self.state.cv.notify_all()  # the committer: a batch to seal or send
        return self.flush_gen, own

    def _put_own(self, b: Batch) -> None:
        """PUT a batch in the calling thread; the outcome goes to its future, as from the pool."""
        assert b.future is not None
        try:
            self.uploader.put(b)
        except BaseException as exc:  # the committer handles it as any failed PUT
            b.future.set_exception(exc)
        else:
            b.future.set_result(None)

    def await_locked(self, target: int, my_gen: int) -> None:
        """Wait until batch `target` and all before it are acknowledged; raise the commit
        error of a request made at or after `my_gen`.

        Inside an NBD request (blockstore/deadline.py) the wait ends at the request's deadline,
        and a transient failure (`Unavailable`) of a PUT is not the request's while its deadline
        is ahead: it asks again, so the batch is re-sent. A PUT that began before the request
        (or before the store came back) cannot fail it; only its own deadline can."""
        st = self.state
        while self.acked_n < target:
            if st.fatal is not None:
                raise st.fatal
            left = request_deadline.remaining(self.ctx.clock)
            err = self.error
            if err is not None and self.error_gen >= my_gen:
                if left is not None and left > 0 and isinstance(err, Unavailable):
                    my_gen = self.request_locked(target, own_put=False)[0]
                    continue
                if isinstance(err, BlockstoreError):
                    raise type(err)(f"disk {st.disk_id}: segment not stored: {err}") from err
                raise Unavailable(f"disk {st.disk_id}: segment not stored: {err!r}") from err
            if left is not None and left <= 0:
                last = f" (last error: {err})" if err is not None else ""
                raise Unavailable(
                    f"disk {st.disk_id}: batch {target} not stored by the request's deadline{last}"
                )
            if st.abandoned or (st.stopping and not st.threads_alive()):
                raise Conflict(f"disk {st.disk_id!r} is closed")
            self.ack_waiters += 1
            try:
                st.cv.wait(left)
            finally:
                self.ack_waiters -= 1

    def submit_locked(self) -> None:
        executor = self.executor
        assert executor is not None
        if self.resume_at is not None:
            return  # nothing goes out until the batches have their new positions
        for b in self.inflight:
            if b.future is None:
                b.future = executor.submit(self.uploader.put, b)
                b.future.add_done_callback(self._wake)
        while self.sealed and len(self.inflight) < self.ctx.config.max_inflight_segments:
            b = self.sealed.popleft()
            b.future = executor.submit(self.uploader.put, b)
            b.future.add_done_callback(self._wake)
            self.inflight.append(b)

    def _wake(self, _f: object) -> None:
        with self.state.lock:
            self.state.cv.notify_all()

    def set_error_locked(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self.error_gen = self.flush_gen
            self.ctx.stats.commit_errors += 1
        self.state.cv.notify_all()

    # -- acknowledgement --

    def ack_stored_locked(self) -> bool:
        """Acknowledge the stored batches at the head of the pipeline, in log order; True if
        any was. Called by the committer and by a writer that sent its own batch: whoever
        sees a PUT done first applies it, under the lock, exactly once."""
        st = self.state
        if st.abandoned or st.fatal is not None:
            return False
        acked = False
        now = self.ctx.clock.monotonic()
        while self.inflight:
            b = self.inflight[0]
            f = b.future
            if f is None or not f.done() or self._failed_locked(b, f.exception()):
                break
            self.inflight.popleft()
            self._acknowledge_locked(b, now)
            acked = True
        if acked and self.checkpointer.due_locked():
            self.checkpoint_due = True  # written by the committer, off the write path
        if (
            self.ack_waiters
            or self.checkpoint_due
            or self.sealed
            or self.open is not None
            or st.stopping
            or self.error is not None
            or st.fatal is not None
        ):
            # Only then: waking the committer for nothing costs a durable write time
            # (docs/engine-measurements.md).
            st.cv.notify_all()
        return acked

    def _failed_locked(self, b: Batch, exc: BaseException | None) -> bool:
        """Take a finished PUT's failure into the state; False when it succeeded."""
        if exc is None:
            return False
        if isinstance(exc, Fenced):
            self.state.fatal = exc  # never acknowledge anything again
        elif isinstance(exc, TornPosition):
            # Our own PUT died mid-body and left an empty object: nothing from here on can be
            # acknowledged at these positions. The committer resumes the log past them once
            # every PUT in flight has finished (`Committer._resume`).
            b.future = None
            self.resume_at = b.seq
            self.state.cv.notify_all()
        else:
            b.future = None
            self.set_error_locked(exc)
        return True

    def _acknowledge_locked(self, b: Batch, now: float) -> None:
        st = self.state
        st.apply_acked_locked(b.records)
        if b.data_len:
            key = keys.segment_key(st.disk_id, b.seq)
            st.segments[key] = b.data_len
            st.segment_acked_at[key] = now
        b.blob = None
        st.acked_seq = b.seq
        self.acked_n = b.n
        self.ctx.stats.segments_written += 1

    def move_batches_locked(self, torn: int, resume_at: int) -> None:
        """After our resume fence at `resume_at`: every batch not acknowledged (the first at
        `torn`) moves, in order, to the positions after it, to be encoded and sent again."""
        st = self.state
        batches = [*self.inflight, *self.sealed]
        if self.open is not None:
            batches.append(self.open)
        assert batches and batches[0].seq == torn
        for i, b in enumerate(batches):
            b.seq = resume_at + 1 + i
            b.blob = None
            b.future = None
        self.next_seq = resume_at + 1 + len(batches)
        st.acked_seq = resume_at
        self.resume_at = None
        self.ctx.stats.log_resumes += 1
        st.cv.notify_all()
