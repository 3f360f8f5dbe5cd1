"""Garbage collection: compact sparse segments, merge small ones, and delete what nothing can
need any more. Only a writable volume runs it (a background pass every `gc_interval_seconds`,
or `Volume.gc()`), one pass at a time (`GarbageCollector.lock`, which snapshots take too).

A pass, in order:

1. *Compact*: live data of segments under `gc_live_threshold`, and of small segments older than
   `gc_merge_min_age_seconds` once they make a segment together, is rewritten through the
   commit pipeline like any write, in disk order, runs of adjacent pieces as one record: small
   random writes leave a region spread over one object per write, and merging them by age
   would spread it over one merged segment per batch (docs/engine-measurements.md). Only
   bytes still served from the very place read are copied: anything written or trimmed since
   wins. Every byte copied is verified first.
2. Flush, and checkpoint at the acknowledged position.
3. *Delete*: segments at or below that checkpoint that neither the map, the checkpoint, a
   snapshot nor the disk's retention window (engine/points.py) needs, and checkpoints older
   than it that no snapshot pins and the window does not keep, once each has been seen
   unreferenced for `gc_min_age_seconds` (read-only views opened before may still read them).
   Fences are never deleted: a fenced writer may retry a PUT at that very position any time
   and must keep getting 412 there.

A superseded writer deletes nothing: before any delete it checks that no newer epoch is claimed
(else it is `Fenced`). A crash mid-pass loses nothing: rewritten data is in acknowledged
segments before anything it replaces is deleted, and an interrupted delete is finished by a
later pass.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from blockstore.engine.checkpoints import Checkpointer
from blockstore.engine.commit import CommitPipeline
from blockstore.engine.meta import listing, newer_epoch, read_checkpoint
from blockstore.engine.points import LogListing, read_retention, retention_base
from blockstore.engine.reader import Reader
from blockstore.engine.snapshots import list_snapshots
from blockstore.engine.state import Context
from blockstore.errors import BlockstoreError, Fenced, NotFound
from blockstore.format import keys
from blockstore.format.segment import WRITE, LogRecord, n_chunks

# A live piece of a segment: (disk start, disk end, record, offset in the record).
_Piece = tuple[int, int, LogRecord, int]


@dataclass
class GcResult:
    segments_compacted: int = 0
    bytes_rewritten: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    objects_waiting: int = 0  # unreferenced but younger than gc_min_age_seconds


class GarbageCollector:
    """GC of one writable volume (see the module docstring)."""

    def __init__(
        self,
        ctx: Context,
        pipeline: CommitPipeline,
        checkpointer: Checkpointer,
        reader: Reader,
        lock: threading.Lock,
    ) -> None:
        self.ctx = ctx
        self.state = ctx.state
        self.pipeline = pipeline
        self.checkpointer = checkpointer
        self.reader = reader
        self.lock = lock  # one pass at a time; snapshots take it too
        self.stop_event = threading.Event()
        self._unref_since: dict[str, float] = {}
        self._snap_refs_cache: dict[str, set[str]] = {}

    def start(self) -> threading.Thread:
        g = threading.Thread(target=self._loop, name=f"gc-{self.state.disk_id}", daemon=True)
        g.start()
        return g

    def _loop(self) -> None:
        """A pass every `gc_interval_seconds`, but none while nothing was written since the
        last one and nothing it left waits: an idle disk sends no requests (issue #21). What
        waits is objects younger than `gc_min_age_seconds` (the next pass that can delete them
        is due when the oldest comes of age) or nothing at all (due after
        `gc_idle_interval_seconds`, for what API calls elsewhere may have freed)."""
        cfg = self.ctx.config
        seen, due = -1, 0.0  # the acked seq the last pass saw, and when a pass is due anyway
        while not self.stop_event.wait(cfg.gc_interval_seconds):
            seq = self.state.acked_seq
            if seq == seen and self.ctx.clock.time() < due:
                continue
            try:
                result = self.run()
            except BlockstoreError:
                with self.ctx.stats.lock:
                    self.ctx.stats.gc_errors += 1
                if self.state.fatal is not None:
                    return
                continue
            now = self.ctx.clock.time()
            if result.segments_compacted or self.state.acked_seq != seq:
                seen = -1  # it wrote: look again at the next interval
            elif self._unref_since:
                seen, due = seq, min(self._unref_since.values()) + cfg.gc_min_age_seconds
            else:
                seen, due = seq, now + cfg.gc_idle_interval_seconds

    def run(self) -> GcResult:
        """One GC pass: compact sparse segments, then delete what nothing can need any more."""
        with self.lock:
            result = GcResult()
            pinned_segs, pinned_ckpts = self._snapshot_pins()
            # The window's base moves only with time: what it keeps now it keeps after this
            # pass's writes too (they come after the base).
            kept_segs, kept_ckpts, young = self._retained()
            self._compact(pinned_segs | young, result)
            self.pipeline.flush()
            ckpt_seq, ckpt_refs = self.checkpointer.write()
            self._delete_unreferenced(
                ckpt_seq, ckpt_refs | pinned_segs | kept_segs, pinned_ckpts | kept_ckpts, result
            )
            with self.ctx.stats.lock:
                self.ctx.stats.gc_passes += 1
                self.ctx.stats.gc_segments_compacted += result.segments_compacted
                self.ctx.stats.gc_bytes_rewritten += result.bytes_rewritten
                self.ctx.stats.gc_objects_deleted += result.objects_deleted
                self.ctx.stats.gc_bytes_deleted += result.bytes_deleted
            return result

    def _retained(self) -> tuple[set[str], set[int], set[str]]:
        """Segments and checkpoint seqs the disk's retention window keeps (engine/points.py):
        every checkpoint from the window's base on, every segment after it, and those the base
        names; and, of those, the segments after the base. These are not compacted: the
        window keeps the originals anyway, so a copy now only adds bytes (bench/
        retention_cost.py, 4 KiB random writes at 703 MiB/h, 30-minute window: 2,125 MiB
        stored per hour of window when they were compacted, 1,141 MiB since). Read afresh
        each pass, so a change through the API applies at the next one."""
        disk_id = self.state.disk_id
        seconds = read_retention(self.ctx.store, disk_id)
        if not seconds:
            return set(), set(), set()
        log = LogListing.read(self.ctx.store, disk_id)
        base = retention_base(log, self.ctx.clock.time(), seconds)
        young = {o.key for p, o in log.segments.items() if p > base}
        segs = set(young)
        if base >= 0:
            segs |= self._refs_of(keys.checkpoint_key(disk_id, base))
        return segs, {c for c in log.checkpoints if c >= base}, young

    def _refs_of(self, ckey: str) -> set[str]:
        """The segments checkpoint `ckey` names (cached: checkpoints are immutable)."""
        refs = self._snap_refs_cache.get(ckey)
        if refs is None:
            refs = set(read_checkpoint(self.ctx.store, ckey).segments)
            self._snap_refs_cache[ckey] = refs
        return refs

    def _snapshot_pins(self) -> tuple[set[str], set[int]]:
        """Segments and checkpoint seqs that this disk's snapshots hold."""
        disk_id = self.state.disk_id
        segs: set[str] = set()
        ckpts: set[int] = set()
        # Snapshot records are read uncounted (the stack below), checkpoints counted.
        for info in list_snapshots(self.ctx.store.inner, disk_id):
            ckey = keys.checkpoint_key(disk_id, info.checkpoint_seq)
            ckpts.add(info.checkpoint_seq)
            segs |= self._refs_of(ckey)
        return segs, ckpts

    # -- compaction --

    def _compact(self, pinned: set[str], result: GcResult) -> None:
        """Rewrite the live data of sparse and of old small segments, in disk order, in
        batches of about one segment of live data."""
        limit = self.ctx.config.segment_max_bytes
        fetched: set[str] = set()
        batch: list[_Piece] = []
        live_in_batch = 0
        for unit in self._units(pinned):
            batch += unit
            live_in_batch += sum(e - s for s, e, _r, _d in unit)
            if live_in_batch >= limit:
                self._rewrite(batch, fetched, result)
                batch, live_in_batch = [], 0
        if batch:
            self._rewrite(batch, fetched, result)
        result.segments_compacted += len(fetched)

    def _units(self, pinned: set[str]) -> list[list[_Piece]]:
        """What to rewrite, in disk order. Pieces go one by one (a batch GETs only the part of
        a segment it needs), except those of a sparse segment scattered over more of the disk
        than a segment holds: that one is a unit, placed at its first piece, so that it is
        fetched once and not once per batch."""
        sparse, small = self._candidates(pinned)
        limit = self.ctx.config.segment_max_bytes
        units = [[p] for pieces in small for p in pieces]
        for pieces in sparse:  # a segment's pieces come in disk order
            if pieces[-1][1] - pieces[0][0] <= limit:
                units += [[p] for p in pieces]
            else:
                units.append(pieces)
        units.sort(key=lambda unit: unit[0][0])
        return units

    def _candidates(self, pinned: set[str]) -> tuple[list[list[_Piece]], list[list[_Piece]]]:
        """The live pieces of every sparse segment, and of every small old one when together
        they make at least `gc_merge_below_bytes` (else none). Only this disk's own segments
        that no snapshot pins."""
        st, cfg = self.state, self.ctx.config
        own = keys.segment_prefix(st.disk_id)
        with st.lock:
            live: dict[str, list[_Piece]] = {}
            for s, e, rec, delta in st.durable:
                if rec.seg_key.startswith(own) and rec.seg_key not in pinned:
                    live.setdefault(rec.seg_key, []).append((s, e, rec, delta))
            # Merged output comes in segments of up to segment_max_bytes: only what is well
            # below that counts as small, or merged segments would be merged again forever.
            merge_below = min(cfg.gc_merge_below_bytes, cfg.segment_max_bytes // 4)
            young = self.ctx.clock.monotonic() - cfg.gc_merge_min_age_seconds
            sparse, small = [], []
            small_used = 0
            for key, pieces in live.items():
                total = st.segments.get(key, 0)
                used = sum(e - s for s, e, _r, _d in pieces)
                if total > 0 and used < cfg.gc_live_threshold * total:
                    sparse.append(pieces)
                elif 0 < total < merge_below and st.segment_acked_at.get(key, young) <= young:
                    small.append(pieces)
                    small_used += used
        if not small or small_used < merge_below:
            small = []
        return sparse, small

    def _rewrite(self, batch: list[_Piece], fetched: set[str], result: GcResult) -> None:
        """Copy the live pieces of a batch into the open batch, in disk order; runs of
        adjacent pieces become one record (one extent, however many writes made it)."""
        blobs = self._fetch(batch, fetched)
        st, step = self.state, self.ctx.config.write_step
        run_start, run_end = 0, 0
        parts: list[memoryview] = []
        rewritten = 0
        with st.lock:
            st.check_can_write_locked()

            def emit() -> None:
                if parts:
                    data = b"".join(parts)
                    rec = LogRecord(WRITE, run_start, run_end - run_start, mem=data)
                    self.pipeline.append_locked(rec)
                    parts.clear()

            for ps, pe, raw in self._still_live_locked(batch, blobs):
                if ps != run_end or run_end - run_start + pe - ps > step:
                    emit()
                    run_start = ps
                parts.append(raw)
                run_end = pe
                rewritten += pe - ps
            emit()
            self.pipeline.backpressure_locked()
        result.bytes_rewritten += rewritten

    def _fetch(self, batch: list[_Piece], fetched: set[str]) -> dict[str, tuple[int, bytes]]:
        """One ranged GET per segment of the batch, whole chunks around its pieces: segment
        key -> (object offset, bytes). A segment deleted meanwhile is left out."""
        spans: dict[str, tuple[int, int]] = {}  # segment -> object range its pieces need
        for s, e, rec, delta in batch:
            lo, hi = rec.stored_span(delta // rec.chunk, n_chunks(delta + e - s, rec.chunk))
            lo, hi = rec.data_off + lo, rec.data_off + hi
            have = spans.get(rec.seg_key)
            spans[rec.seg_key] = (min(lo, have[0]), max(hi, have[1])) if have else (lo, hi)
        blobs: dict[str, tuple[int, bytes]] = {}
        for key, (lo, hi) in spans.items():
            with contextlib.suppress(NotFound):  # deleted by an earlier pass meanwhile
                blobs[key] = (lo, self.ctx.store.get(key, lo, hi - lo))
                fetched.add(key)
        return blobs

    def _still_live_locked(
        self, batch: list[_Piece], blobs: dict[str, tuple[int, bytes]]
    ) -> Iterator[tuple[int, int, memoryview]]:
        """(start, end, verified bytes) of the batch's pieces still served from the very place
        they were read from, in disk order: anything written or trimmed since wins. Lazily, so
        that what comes before a piece that fails to verify is rewritten all the same."""
        for s, e, rec, delta in sorted(batch, key=lambda p: p[0]):
            if rec.seg_key not in blobs:
                continue
            base, blob = blobs[rec.seg_key]
            for ps, pe, prec, pdelta in self.state.resolve_locked(s, e):
                if prec is not rec or pdelta != delta + (ps - s):
                    continue
                c0 = pdelta // rec.chunk
                lo, hi = rec.stored_span(c0, n_chunks(pdelta + pe - ps, rec.chunk))
                at = rec.data_off + lo - base
                raw = memoryview(blob)[at : at + hi - lo]
                raw = self.reader.verify(rec, c0, raw, hi - lo)  # plain: opened, decompressed
                skip = pdelta - c0 * rec.chunk
                yield ps, pe, raw[skip : skip + (pe - ps)]

    # -- deletion --

    def _delete_unreferenced(
        self, ckpt_seq: int, referenced: set[str], pinned_ckpts: set[int], result: GcResult
    ) -> None:
        """Delete what has been unreferenced for `gc_min_age_seconds` (module docstring)."""
        now = self.ctx.clock.time()
        doomed = self._aged(self._unreferenced(ckpt_seq, referenced, pinned_ckpts), now, result)
        if not doomed:
            return
        # A superseded writer must not delete anything on the strength of a stale view.
        st = self.state
        if newer_epoch(self.ctx.store, st.disk_id, st.epoch) is not None:
            with st.lock:
                st.fatal = Fenced(f"disk {st.disk_id!r}: writer epoch {st.epoch} superseded")
                st.cv.notify_all()
            raise st.fatal
        for key, size in doomed:
            self.ctx.store.delete(key)
            self._unref_since.pop(key, None)
            self._snap_refs_cache.pop(key, None)
            result.objects_deleted += 1
            result.bytes_deleted += size

    def _unreferenced(
        self, ckpt_seq: int, referenced: set[str], pinned_ckpts: set[int]
    ) -> list[tuple[str, int]]:
        """Segments and checkpoints nothing needs now: (key, size)."""
        st = self.state
        with st.lock:
            live = {rec.seg_key for _s, _e, rec, _d in st.durable}
            fences = set(st.fences)
        keep = live | referenced
        out: list[tuple[str, int]] = []
        for key, size in listing(self.ctx.store, keys.segment_prefix(st.disk_id)):
            p = keys.parse_segment_key(key)
            # Only at or below the newest checkpoint: replay never reads those, so deleting
            # them cannot open a gap in anyone's log. Fences are never deleted.
            if p is None or p[1] > ckpt_seq or key in keep or p[1] in fences:
                continue
            out.append((key, size))
        for key, size in listing(self.ctx.store, keys.checkpoint_prefix(st.disk_id)):
            c = keys.parse_checkpoint_key(key)
            if c is None or c[1] >= ckpt_seq or c[1] in pinned_ckpts:
                continue
            out.append((key, size))
        return out

    def _aged(
        self, candidates: list[tuple[str, int]], now: float, result: GcResult
    ) -> list[tuple[str, int]]:
        """Those of `candidates` first seen unreferenced at least `gc_min_age_seconds` before
        `now`; forgets what is referenced again."""
        doomed: list[tuple[str, int]] = []
        for key, size in candidates:
            first = self._unref_since.setdefault(key, now)
            if now - first >= self.ctx.config.gc_min_age_seconds:
                doomed.append((key, size))
            else:
                result.objects_waiting += 1
        seen = {key for key, _size in candidates}
        self._unref_since = {k: v for k, v in self._unref_since.items() if k in seen}
        return doomed
