"""`DiskReplicator`: copies one disk's immutable objects from one store (the region serving the
disk) to another (its copy), in log order, so the copy is always a consistent prefix.

Every copy is a GET from the source and a PUT with If-None-Match to the target; objects are
immutable, so "already there" is success. A pass:

1. `volume.json` (and, for a clone, the source disk's checkpoint it starts from).
2. The source's segments after the target's frontier F (geo/frontier.py) are listed, then its
   epoch claims are listed and copied (a segment's claim is always older than the segment, so
   this order sees the claim of every segment listed).
3. When the source's GC removed the segment at F+1, the target jumps: it takes the source's
   newest checkpoint (its segments first) and continues after it. Then the segments F+1, F+2,
   ... of the contiguous run are copied in a sliding window of `max_parallel`, each verified
   (header and every chunk) before it is written. Copies within one window may land out of
   order; the target's replay stops at the first gap exactly as the primary's does after a
   crash with PUTs in flight, so what it shows is still a prefix. The window is at most the
   engine's fence window (geo/config.py), so a late copy can only land on a position a new
   writer on the target fences.
4. The newest checkpoint the target can now take (every segment it names is there).
5. Snapshot records after their checkpoint (and its segments); clone registrations;
   tombstones.
6. After a new source checkpoint, or every `mirror_every` passes, deletions are mirrored
   (geo/gc.py); the progress marker is written (geo/progress.py).

Resume: the replicator rebuilds its view by listing the target (nothing is recopied: a copy is
skipped when the target listing has the key) and reads the progress marker, so the lag
survives a restart.

Failure behaviour: a store error ends the pass with the error recorded in the stats; the next
pass starts from a fresh listing of both stores. An object that fails verification on the
source is not copied (the pass stops there and reports it). Nothing here ever writes to the
source.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import BlockstoreError, IntegrityError, NotFound, PreconditionFailed
from blockstore.format import keys
from blockstore.format.checkpoint import decode_checkpoint
from blockstore.format.segment import decode_segment_header
from blockstore.geo import progress
from blockstore.geo.config import MAX_WINDOW, ReplicationConfig
from blockstore.geo.frontier import TargetView, run_end
from blockstore.geo.gc import mirror_deletions
from blockstore.geo.progress import ReplicationStats
from blockstore.store.base import ObjectStore
from blockstore.store.repair import verify_object

log = logging.getLogger(__name__)


@dataclass
class _SourceLog:
    """The source's log past the target's frontier, as listed at the start of a pass."""

    segments: dict[int, tuple[str, int]]  # seq -> (key, size)
    epochs: list[str]  # keys of the epoch claims
    checkpoints: list[int]  # seqs, ascending
    end: int = 0  # the end of the contiguous run after the target's frontier

    def newest_checkpoint(self) -> int:
        return self.checkpoints[-1] if self.checkpoints else 0


class DiskReplicator:
    """Replicates one disk from `source` to `target`. Not thread-safe: one pass at a time
    (`run_once` holds a lock)."""

    def __init__(
        self,
        source: ObjectStore,
        target: ObjectStore,
        disk_id: str,
        *,
        config: ReplicationConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
        check_target_after: int | None = None,
    ) -> None:
        """`check_target_after`: segments the target holds past this seq are not trusted
        until compared with the source's (failback: a cut-off writer of the old primary may
        have landed one in its log after the cut)."""
        self.source = source
        self.target = target
        self._check_after = check_target_after
        self.disk_id = keys.validate_disk_id(disk_id)
        self.config = config or ReplicationConfig()
        self.clock = clock
        self.stats = ReplicationStats(started=clock.time())
        self._window = max(1, min(self.config.max_parallel, MAX_WINDOW))
        self._pool = ThreadPoolExecutor(self._window, thread_name_prefix=f"repl-{disk_id}")
        self._lock = threading.Lock()
        self._t: TargetView | None = None
        self._marker_written = 0.0
        self._marker_loaded = False
        self._source_ckpt_mirrored = -1
        self._stop = threading.Event()

    # -- target view ----------------------------------------------------------------------

    def _scan_target(self) -> TargetView:
        t = TargetView()
        for info in self.target.list(keys.disk_prefix(self.disk_id)):
            if self._check_after is not None:
                p = keys.parse_segment_key(info.key)
                if p is not None and p[1] > self._check_after:
                    continue  # copied again, and so compared (see `_put_copy`)
            t.objects[info.key] = info.size
        t.recompute(self.disk_id)
        return t

    @property
    def _view(self) -> TargetView:
        assert self._t is not None  # set at the start of every pass
        return self._t

    def target_frontier(self) -> int:
        """End of the target's replay (its newest checkpoint and the run of segments after)."""
        with self._lock:
            self._t = self._scan_target()
            return self._t.frontier

    # -- copying --------------------------------------------------------------------------

    def _copy(self, key: str) -> None:
        """Copy one object unless the target has it; NotFound if the source lost it."""
        self._copy_after(key, lambda blob: self._verify(key, blob))

    def _copy_checkpoint(self, key: str) -> None:
        """The segments a checkpoint names first, then the checkpoint."""
        self._copy_after(
            key, lambda blob: self._copy_many(sorted(decode_checkpoint(blob, key).segments))
        )

    def _copy_after(self, key: str, first: Callable[[bytes], None]) -> None:
        """Copy `key` unless the target has it, calling `first(blob)` before the PUT."""
        t = self._view
        if key in t.objects:
            return
        blob = self.source.get(key)
        first(blob)
        self._put_copy(key, blob)
        t.objects[key] = len(blob)

    @staticmethod
    def _verify(key: str, blob: bytes) -> None:
        if blob or keys.parse_segment_key(key) is None:
            # An empty segment object is a torn PUT: it is copied as it is, so that the
            # target's log is judged exactly like the source's (blockstore/engine/fence.py).
            verify_object(blob, key)

    def _put_copy(self, key: str, blob: bytes) -> None:
        """Create `key` on the target. A log object (segment, checkpoint) already there must
        be this very one (an earlier copy): one from an older writer epoch than the source's (a
        fenced writer's, landed in the old primary's log after failback cut it) is replaced,
        and anything else stops replication with an IntegrityError. Other objects already
        there are left as they are."""
        try:
            self.target.put(key, blob, if_none_match=True)
        except PreconditionFailed:
            self._put_over(key, blob)
            return
        self.stats.objects_copied += 1
        self.stats.bytes_copied += len(blob)

    def _put_over(self, key: str, blob: bytes) -> None:
        """`key` is on the target already: skip it, replace an older writer's, or refuse."""
        ours = _writer_epoch(key, blob)
        there = self.target.get(key) if ours is not None else blob
        if there == blob:
            self.stats.objects_skipped += 1
            return
        theirs = _writer_epoch(key, there)
        if ours is None or theirs is None or theirs >= ours:
            raise IntegrityError(
                f"{key} on the target differs from the source's copy and is not from an "
                "older writer: not replacing it"
            ) from None
        log.warning("replacing %s on the target: epoch %d's, the source's is %d's",
                    key, theirs, ours)  # fmt: skip
        self.target.put(key, blob)
        self.stats.objects_replaced += 1
        self.stats.bytes_copied += len(blob)

    def _copy_many(self, keys_: Iterable[str]) -> None:
        todo = [k for k in keys_ if self._t is not None and k not in self._t.objects]
        for i in range(0, len(todo), self._window):
            list(self._pool.map(self._copy, todo[i : i + self._window]))

    def _copy_volume_record(self, meta: dict[str, Any]) -> None:
        """`volume.json`, after a clone's starting checkpoint (on its source disk's keys) and
        an encrypted disk's wrapped data keys (the target opens nothing without them)."""
        source = meta.get("source")
        if source:
            self._copy_checkpoint(str(source["checkpoint_key"]))
        self._copy_data_keys()
        self._copy(keys.volume_key(self.disk_id))

    def _copy_data_keys(self) -> None:
        """Wrapped data keys (also new wraps after a KEK rotation); the target needs the KEK."""
        self._copy_many(i.key for i in self.source.list(keys.data_key_prefix(self.disk_id)))

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> ReplicationStats:
        """One pass; returns the stats. Store errors are recorded, not raised."""
        with self._lock:
            try:
                self._pass()
            except BlockstoreError as exc:
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self._t = None  # list both sides afresh next time
                log.warning("replication of %s: %s", self.disk_id, exc)
            self.stats.passes += 1
            return self.stats

    def _pass(self) -> None:
        """The steps of the module docstring, in order."""
        started = self.clock.time()
        if self._t is None:
            self._t = self._scan_target()
        if not self._marker_loaded:
            self._load_marker()
        meta_key = keys.volume_key(self.disk_id)
        if meta_key not in self._view.objects:
            self._copy_volume_record(json.loads(self.source.get(meta_key)))
        src = self._list_source()
        self._copy_many(src.epochs)
        self._jump_over_gc_hole(src)
        src.end = run_end(self._view.frontier, src.segments)
        self.stats.source_seq = src.end
        self._copy_segments(src)
        self._take_checkpoint(src)
        self._copy_snapshots()
        self._end_pass(src, started)

    def _list_source(self) -> _SourceLog:
        """List the source's segments after the target's frontier, then its epoch claims,
        then its checkpoints."""
        d, frontier = self.disk_id, self._view.frontier
        start_after = keys.segment_key(d, frontier) if frontier else None
        segs: dict[int, tuple[str, int]] = {}
        for info in self.source.list(keys.segment_prefix(d), start_after):
            p = keys.parse_segment_key(info.key)
            if p is not None:
                segs[p[1]] = (info.key, info.size)
        epochs = [i.key for i in self.source.list(keys.epoch_prefix(d))]
        ckpts = sorted(
            p[1]
            for i in self.source.list(keys.checkpoint_prefix(d))
            if (p := keys.parse_checkpoint_key(i.key)) is not None
        )
        return _SourceLog(segs, epochs, ckpts)

    def _jump_over_gc_hole(self, src: _SourceLog) -> None:
        """When the source no longer has the segment after the target's frontier (its GC
        removed it), take the source's newest checkpoint, which made that segment garbage."""
        t = self._view
        newest = src.newest_checkpoint()
        if t.frontier + 1 not in src.segments and newest > t.frontier:
            self._copy_checkpoint(keys.checkpoint_key(self.disk_id, newest))
            t.ckpt_seq = newest
            t.frontier = max(t.frontier, newest)

    def _copy_segments(self, src: _SourceLog) -> None:
        """Copy the contiguous run after the target's frontier in a sliding window: seq s is
        sent only once s - window has landed, so no copy is ever more than `window` positions
        past the target's frontier. Every copy sent has landed (or failed) on return."""
        inflight: deque[tuple[int, Future[None]]] = deque()
        try:
            for s in range(self._view.frontier + 1, src.end + 1):
                if self._stop.is_set():
                    break
                while len(inflight) >= self._window:
                    self._land(inflight.popleft())
                inflight.append((s, self._pool.submit(self._copy, src.segments[s][0])))
            while inflight:
                self._land(inflight.popleft())
        finally:
            for _s, fut in inflight:
                fut.exception()  # wait: no copy of this pass may land after it ended

    def _land(self, item: tuple[int, Future[None]]) -> None:
        seq, fut = item
        fut.result()
        self._view.frontier = seq
        self.stats.frontier_seq = seq

    def _take_checkpoint(self, src: _SourceLog) -> None:
        """The newest checkpoint the target can take (its segments are there by now)."""
        t = self._view
        usable = [c for c in src.checkpoints if t.ckpt_seq < c <= t.frontier]
        if usable:
            self._copy_checkpoint(keys.checkpoint_key(self.disk_id, usable[-1]))
            t.ckpt_seq = usable[-1]

    def _copy_snapshots(self) -> None:
        """Snapshot records (each after its checkpoint), clone registrations, tombstones."""
        t = self._view
        d = self.disk_id
        records: list[str] = []
        others: list[str] = []
        for info in self.source.list(keys.snapshot_prefix(d)):
            if info.key in t.objects:
                continue
            (records if keys.parse_snapshot_key(info.key) else others).append(info.key)
        for key in records:
            try:
                snap = json.loads(self.source.get(key))
                self._copy_checkpoint(keys.checkpoint_key(d, int(snap["checkpoint_seq"])))
                self._copy(key)
            except NotFound:
                continue  # deleted meanwhile
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(f"{key}: malformed snapshot record ({exc})") from exc
        for key in others:
            try:
                self._copy(key)
            except NotFound:
                continue

    def _end_pass(self, src: _SourceLog, started: float) -> None:
        """Record the frontier (and the sync time when the pass caught up), mirror deletions when
        due, write the progress marker."""
        t = self._view
        self.stats.frontier_seq = t.frontier
        if t.frontier >= src.end:
            self.stats.last_sync_time = started
        newest_ckpt = src.newest_checkpoint()
        if (
            newest_ckpt != self._source_ckpt_mirrored
            or self.stats.passes % self.config.mirror_every == 0
        ):
            self._copy_data_keys()
            mirror_deletions(self.source, self.target, self.disk_id, t, self.stats)
            self._source_ckpt_mirrored = newest_ckpt
        self._write_marker()

    # -- one snapshot ---------------------------------------------------------------------

    def copy_snapshot(self, name: str) -> tuple[int, int]:
        """Copy one snapshot (its record, checkpoint and the segments it names, plus the volume
        record) to the target: what the target lacks only, so a copy after an earlier one moves
        just the segments written in between. Returns (objects, bytes) copied."""
        with self._lock:
            self._t = self._scan_target()
            before = (self.stats.objects_copied, self.stats.bytes_copied)
            d = self.disk_id
            key = keys.snapshot_key(d, name)
            try:
                snap = json.loads(self.source.get(key))
                meta = json.loads(self.source.get(keys.volume_key(d)))
            except NotFound:
                raise NotFound(f"snapshot {name!r} of {d} is not in the source store") from None
            self._copy_volume_record(meta)
            self._copy_checkpoint(keys.checkpoint_key(d, int(snap["checkpoint_seq"])))
            self._copy(key)
            return (
                self.stats.objects_copied - before[0],
                self.stats.bytes_copied - before[1],
            )

    # -- progress marker ------------------------------------------------------------------

    def _load_marker(self) -> None:
        self._marker_loaded = True
        last = progress.read_marker(self.target, self.disk_id).get("last_sync_time")
        if isinstance(last, int | float) and self.stats.last_sync_time is None:
            self.stats.last_sync_time = float(last)

    def _write_marker(self) -> None:
        now = self.clock.monotonic()
        if now - self._marker_written < self.config.marker_every_seconds:
            return
        self._marker_written = now
        progress.write_marker(self.target, self.disk_id, self.stats, self.clock.time())

    # -- catching up, status, stopping ----------------------------------------------------

    def catch_up(
        self,
        *,
        max_passes: int = 1000,
        progress: Callable[[float], None] | None = None,
    ) -> bool:
        """Run passes until one ends fully synced (True) or `max_passes` ran (False).
        Progress is the fraction of the source's log the target's frontier has reached."""
        for _ in range(max_passes):
            before = self.stats.errors
            self.run_once()
            if progress is not None and self.stats.source_seq:
                progress(self.stats.frontier_seq / max(1, self.stats.source_seq))
            if self.stats.errors == before and self.stats.frontier_seq >= self.stats.source_seq:
                return True
            if self.stats.errors != before:
                self.clock.sleep(0.2)
        return False

    def status(self) -> dict[str, Any]:
        """This replicator's counters for the API. Lag is not among them: it is measured
        against the primary's log when asked for (blockstore/geo/lag.py), because the last
        listing of a pass may predate writes that have already been acknowledged."""
        return progress.counters(self.stats)

    def stop(self) -> None:
        """Make a running pass end after its current window; later passes still work."""
        self._stop.set()

    def allow(self) -> None:
        """Let passes run whole again after `stop`."""
        self._stop.clear()

    def wait_idle(self) -> None:
        """Return once no pass is running."""
        with self._lock:
            pass

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> DiskReplicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _writer_epoch(key: str, blob: bytes) -> int | None:
    """The writer epoch a segment or checkpoint was written in; None for other objects or
    one that does not decode."""
    try:
        if keys.parse_segment_key(key) is not None:
            return decode_segment_header(blob, key).epoch
        if keys.parse_checkpoint_key(key) is not None:
            return decode_checkpoint(blob, key).epoch
    except IntegrityError:
        return None
    return None
