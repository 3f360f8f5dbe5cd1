"""Geo-replication of `grs` disks: copy each immutable object of a volume from one store (the
disk's primary) to another (its secondary), in log order, so the copy is always a consistent
prefix of the original.

Place: `ReplicationService` runs in the API process (api/serve.py) and drives one
`DiskReplicator` per disk it replicates; the control plane (blockstore/control/service.py) uses
`DiskReplicator` directly to seed a secondary, drain before a failover and re-seed the old
primary at failback. Keys are built and parsed only through blockstore/format/keys.py.

What a pass copies, and in which order (every copy is a GET from the source and a PUT with
If-None-Match to the target; objects are immutable, so "already there" is success):

1. `volume.json` (and, for a clone, the source disk's checkpoint it starts from).
2. The source's segments after the target's *frontier* F (the end of the target's replay: its
   newest checkpoint plus the contiguous run of segments after it) are listed, then its epoch
   claims are listed and copied, then the segments F+1, F+2, ... of the contiguous run are
   copied, `max_parallel` at a time, each one verified (header and every chunk) before it is
   written. Copies within one window may land out of order; the target's replay stops at the
   first gap exactly as the primary's does after a crash with PUTs in flight, so what it shows
   is still a prefix. The window is at most the engine's fence window (8), so a late copy can
   only land on a position a new writer on the target fences.
3. A checkpoint is copied only after every segment it names is on the target. When the
   source's GC has removed the segment at F+1, the target jumps: it takes the source's newest
   checkpoint (segments first) and continues after it.
4. Snapshot records after their checkpoint (and its segments); clone registrations; tombstones.
5. Every `mirror_every` passes, deletions are mirrored: an object the source no longer has is
   removed from the target only when the target's own log does not need it (a segment at or
   below the target's newest checkpoint that neither it nor a snapshot names; a checkpoint
   below the newest that no snapshot pins; the records of deleted snapshots). This is the
   secondary's GC; the primary's GC needs no hook, because the target never needs a segment
   the source's GC may delete: it can always jump to the checkpoint that made it garbage.

Lag (the RPO): a pass that starts at time t and ends with the target's frontier at the end of
the source's contiguous log as listed at t proves that every write acknowledged before t is on
the target, so t becomes the *last sync time* (as Azure reports it). Lag in seconds is now minus
that; lag in bytes is the size of the source segments listed but not yet copied.

Resume: the replicator rebuilds its view by listing the target (nothing is recopied: a copy is
skipped when the target listing has the key) and reads its *progress marker* on the target
(`disks/<id>/replication.json`: last sync time, frontier) so the lag survives a restart.

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
from dataclasses import dataclass, field
from typing import Any

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import BlockstoreError, IntegrityError, NotFound, PreconditionFailed
from blockstore.format import keys
from blockstore.format.checkpoint import decode_checkpoint
from blockstore.format.segment import decode_segment_header
from blockstore.store.base import ObjectStore
from blockstore.store.repair import verify_object

log = logging.getLogger("blockstore.geo.replication")

MAX_WINDOW = 8  # the engine's FENCE_WINDOW: late copies must land on fenced positions


progress_key = keys.replication_progress_key


@dataclass(frozen=True)
class ReplicationConfig:
    interval_seconds: float = 0.5  # pause between passes of one disk
    max_parallel: int = 4  # object copies at once per disk (at most MAX_WINDOW)
    mirror_every: int = 20  # passes between two mirrors of the source's deletions
    rpo_target_seconds: float = 300.0  # lag above this flags the disk
    marker_every_seconds: float = 5.0  # progress marker writes, at most this often


@dataclass
class ReplicationStats:
    """Counters of one disk's replicator; read by the API and /metrics, never re-counted."""

    passes: int = 0
    objects_copied: int = 0
    bytes_copied: int = 0
    objects_skipped: int = 0  # already on the target (create-if-absent said so)
    objects_replaced: int = 0  # an older writer's object at that key, replaced (failback)
    objects_deleted: int = 0
    errors: int = 0
    last_error: str | None = None
    frontier_seq: int = 0  # end of the target's replay
    source_seq: int = 0  # end of the source's contiguous log at the last listing
    lag_bytes: int = 0
    last_sync_time: float | None = None
    started: float = 0.0


@dataclass
class _Target:
    """What the replicator knows of the target (rebuilt from a listing after any error)."""

    objects: dict[str, int] = field(default_factory=dict)  # key -> size
    ckpt_seq: int = 0  # newest checkpoint on the target (0: none)
    frontier: int = 0


class DiskReplicator:
    """Replicates one volume from `source` to `target`. Not thread-safe: one pass at a time
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
        self._t: _Target | None = None
        self._marker_written = 0.0
        self._marker_loaded = False
        self._source_ckpt_mirrored = -1
        self._stop = threading.Event()

    # -- target view ----------------------------------------------------------------------

    def _scan_target(self) -> _Target:
        t = _Target()
        for info in self.target.list(keys.disk_prefix(self.disk_id)):
            if self._check_after is not None:
                p = keys.parse_segment_key(info.key)
                if p is not None and p[1] > self._check_after:
                    continue  # copied again, and so compared (see `_put_copy`)
            t.objects[info.key] = info.size
        self._recompute(t)
        return t

    def _recompute(self, t: _Target) -> None:
        ckpts = [
            p[1] for k in t.objects if (p := keys.parse_checkpoint_key(k)) and p[0] == self.disk_id
        ]
        t.ckpt_seq = max(ckpts, default=0)
        seqs = {
            p[1] for k in t.objects if (p := keys.parse_segment_key(k)) and p[0] == self.disk_id
        }
        f = t.ckpt_seq
        while f + 1 in seqs:
            f += 1
        t.frontier = max(t.frontier, f)

    def target_frontier(self) -> int:
        """End of the target's replay (its newest checkpoint and the run of segments after)."""
        with self._lock:
            self._t = self._scan_target()
            return self._t.frontier

    # -- copying --------------------------------------------------------------------------

    def _copy(self, key: str) -> None:
        """Copy one object unless the target has it; NotFound if the source lost it."""
        t = self._t
        assert t is not None
        if key in t.objects:
            return
        blob = self.source.get(key)
        if blob or keys.parse_segment_key(key) is None:
            # An empty segment object is a torn PUT: it is copied as it is, so that the
            # target's log is judged exactly like the source's (blockstore/engine/fence.py).
            verify_object(blob, key)
        self._put_copy(key, blob)
        t.objects[key] = len(blob)

    def _put_copy(self, key: str, blob: bytes) -> None:
        """Create `key` on the target. A log object (segment, checkpoint) already there must
        be this very one (an earlier copy): one from an older writer epoch than the source's (a
        fenced writer's, landed in the old primary's log after failback cut it) is replaced,
        and anything else stops replication with an IntegrityError. Other objects already
        there are left as they are."""
        try:
            self.target.put(key, blob, if_none_match=True)
        except PreconditionFailed:
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
            return
        self.stats.objects_copied += 1
        self.stats.bytes_copied += len(blob)

    def _copy_many(self, keys_: Iterable[str]) -> None:
        todo = [k for k in keys_ if self._t is not None and k not in self._t.objects]
        for i in range(0, len(todo), self._window):
            list(self._pool.map(self._copy, todo[i : i + self._window]))

    def _land(self, item: tuple[int, Future[None]], segs: dict[int, tuple[str, int]]) -> None:
        seq, fut = item
        fut.result()
        t = self._t
        assert t is not None
        t.frontier = seq
        self.stats.frontier_seq = seq
        self.stats.lag_bytes = max(0, self.stats.lag_bytes - segs[seq][1])

    def _copy_checkpoint(self, key: str) -> None:
        """The segments a checkpoint names first, then the checkpoint."""
        t = self._t
        assert t is not None
        if key in t.objects:
            return
        blob = self.source.get(key)
        ck = decode_checkpoint(blob, key)
        self._copy_many(sorted(ck.segments))
        self._put_copy(key, blob)
        t.objects[key] = len(blob)

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
        d = self.disk_id
        started = self.clock.time()
        if self._t is None:
            self._t = self._scan_target()
        t = self._t
        if not self._marker_loaded:
            self._load_marker()
        # 1. volume metadata (and a clone's starting checkpoint, on its source disk's keys)
        meta_key = keys.volume_key(d)
        if meta_key not in t.objects:
            blob = self.source.get(meta_key)
            source = json.loads(blob).get("source")
            if source:
                self._copy_checkpoint(str(source["checkpoint_key"]))
            self._copy(meta_key)
        # 2. list segments after the frontier, then epochs (a segment's epoch claim is always
        # older than the segment, so this order sees the claim of every segment listed)
        start_after = keys.segment_key(d, t.frontier) if t.frontier else None
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
        self._copy_many(epochs)
        # 3. the log: jump over a hole the source's GC made, then the contiguous run
        if t.frontier + 1 not in segs and ckpts and ckpts[-1] > t.frontier:
            self._copy_checkpoint(keys.checkpoint_key(d, ckpts[-1]))
            t.ckpt_seq = ckpts[-1]
            t.frontier = max(t.frontier, ckpts[-1])
        end = t.frontier
        while end + 1 in segs:
            end += 1
        self.stats.source_seq = end
        self.stats.lag_bytes = sum(size for s, (_k, size) in segs.items() if s > t.frontier)
        # A sliding window: seq s is sent only once s - window has landed, so no copy is ever
        # more than `window` positions past the target's frontier.
        inflight: deque[tuple[int, Future[None]]] = deque()
        try:
            for s in range(t.frontier + 1, end + 1):
                if self._stop.is_set():
                    break
                while len(inflight) >= self._window:
                    self._land(inflight.popleft(), segs)
                inflight.append((s, self._pool.submit(self._copy, segs[s][0])))
            while inflight:
                self._land(inflight.popleft(), segs)
        finally:
            for _s, fut in inflight:
                fut.exception()  # wait: no copy of this pass may land after it ended
        # 4. the newest checkpoint the target can take (its segments are there by now)
        usable = [c for c in ckpts if t.ckpt_seq < c <= t.frontier]
        if usable:
            self._copy_checkpoint(keys.checkpoint_key(d, usable[-1]))
            t.ckpt_seq = usable[-1]
        # 5. snapshots, clone registrations, tombstones
        self._copy_snapshots()
        self.stats.frontier_seq = t.frontier
        self.stats.lag_bytes = sum(size for s, (_k, size) in segs.items() if s > t.frontier)
        if t.frontier >= end:
            self.stats.last_sync_time = started
        newest_ckpt = ckpts[-1] if ckpts else 0
        if (
            newest_ckpt != self._source_ckpt_mirrored
            or self.stats.passes % self.config.mirror_every == 0
        ):
            self._mirror_deletions()
            self._source_ckpt_mirrored = newest_ckpt
        self._write_marker()

    def _copy_snapshots(self) -> None:
        t = self._t
        assert t is not None
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
            if meta.get("source"):
                self._copy_checkpoint(str(meta["source"]["checkpoint_key"]))
            self._copy(keys.volume_key(d))
            self._copy_checkpoint(keys.checkpoint_key(d, int(snap["checkpoint_seq"])))
            self._copy(key)
            return (
                self.stats.objects_copied - before[0],
                self.stats.bytes_copied - before[1],
            )

    # -- the secondary's GC ---------------------------------------------------------------

    def _mirror_deletions(self) -> None:
        """Remove from the target what the source deleted and the target's log does not need."""
        d = self.disk_id
        t = self._t
        assert t is not None
        source_keys = {i.key for i in self.source.list(keys.disk_prefix(d))}
        t.objects = {i.key: i.size for i in self.target.list(keys.disk_prefix(d))}
        self._recompute(t)
        gone = [k for k in t.objects if k not in source_keys and k != progress_key(d)]
        if not gone:
            return
        # Snapshot records first: once gone, their checkpoints stop pinning.
        for key in gone:
            if key.startswith(keys.snapshot_prefix(d)):
                self._delete(key)
        needed: set[str] = set()
        pinned: set[int] = set()
        for key in t.objects:
            if keys.parse_snapshot_key(key) is not None:
                snap = json.loads(self.target.get(key))
                pinned.add(int(snap["checkpoint_seq"]))
        for seq in {t.ckpt_seq} | pinned:
            ck_key = keys.checkpoint_key(d, seq)
            if ck_key in t.objects:
                needed.update(decode_checkpoint(self.target.get(ck_key), ck_key).segments)
        for key in gone:
            seg = keys.parse_segment_key(key)
            ck = keys.parse_checkpoint_key(key)
            garbage_seg = seg is not None and seg[1] <= t.ckpt_seq and key not in needed
            garbage_ckpt = ck is not None and ck[1] < t.ckpt_seq and ck[1] not in pinned
            if garbage_seg or garbage_ckpt:
                self._delete(key)

    def _delete(self, key: str) -> None:
        t = self._t
        self.target.delete(key)
        self.stats.objects_deleted += 1
        if t is not None:
            t.objects.pop(key, None)

    # -- progress marker ------------------------------------------------------------------

    def _load_marker(self) -> None:
        self._marker_loaded = True
        try:
            marker = json.loads(self.target.get(progress_key(self.disk_id)))
        except (NotFound, ValueError):
            return
        last = marker.get("last_sync_time")
        if isinstance(last, int | float) and self.stats.last_sync_time is None:
            self.stats.last_sync_time = float(last)

    def _write_marker(self) -> None:
        now = self.clock.monotonic()
        if now - self._marker_written < self.config.marker_every_seconds:
            return
        self._marker_written = now
        body = {
            "disk_id": self.disk_id,
            "frontier_seq": self.stats.frontier_seq,
            "last_sync_time": self.stats.last_sync_time,
            "written": self.clock.time(),
        }
        # The marker is the one object overwritten in place: a hint, never trusted for
        # correctness (the listing is), so a lost or stale marker only delays the lag figure.
        self.target.put(progress_key(self.disk_id), json.dumps(body).encode())

    # -- catching up, status --------------------------------------------------------------

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
        st = self.stats
        return {
            "last_sync_time": st.last_sync_time,
            "frontier_seq": st.frontier_seq,
            "objects_copied": st.objects_copied,
            "bytes_copied": st.bytes_copied,
            "objects_deleted": st.objects_deleted,
            "errors": st.errors,
            "last_error": st.last_error,
        }

    def stop(self) -> None:
        """Make a running pass end after its current window; later passes still work."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._pool.shutdown(wait=True)


# -- failover helpers (used by the control plane) -------------------------------------------


def trim_after_frontier(store: ObjectStore, disk_id: str) -> int:
    """Delete every segment of `disk_id` on `store` past the end of its replay, and return that
    end. Used on a secondary before it is opened as the writer: copies that landed beyond a gap
    are never applied, but they would hold log positions the new writer needs."""
    objects = {i.key for i in store.list(keys.disk_prefix(disk_id))}
    ckpt = max(
        (p[1] for k in objects if (p := keys.parse_checkpoint_key(k)) and p[0] == disk_id),
        default=0,
    )
    seqs = {p[1]: k for k in objects if (p := keys.parse_segment_key(k)) and p[0] == disk_id}
    end = ckpt
    while end + 1 in seqs:
        end += 1
    for seq, key in sorted(seqs.items(), reverse=True):
        if seq > end:
            store.delete(key)
    return end


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


def truncate_after(store: ObjectStore, disk_id: str, fork_seq: int) -> int:
    """Delete what an old primary wrote past the failover point `fork_seq` (its log diverged
    there): snapshot records on later checkpoints, those checkpoints, then the segments.
    Returns the number of objects deleted."""
    n = 0
    objects = [i.key for i in store.list(keys.disk_prefix(disk_id))]
    for key in objects:
        if keys.parse_snapshot_key(key) is not None:
            try:
                snap = json.loads(store.get(key))
            except NotFound:
                continue
            if int(snap.get("checkpoint_seq", 0)) > fork_seq:
                store.delete(key)
                n += 1
    for key in objects:
        ck = keys.parse_checkpoint_key(key)
        if ck is not None and ck[0] == disk_id and ck[1] > fork_seq:
            store.delete(key)
            n += 1
    for key in sorted(objects, reverse=True):
        seg = keys.parse_segment_key(key)
        if seg is not None and seg[0] == disk_id and seg[1] > fork_seq:
            store.delete(key)
            n += 1
    return n


def delete_copy(store: ObjectStore, disk_id: str) -> int:
    """Remove every object of a disk's copy on `store` (the volume record last)."""
    objects = [i.key for i in store.list(keys.disk_prefix(disk_id))]
    meta = keys.volume_key(disk_id)
    for key in objects:
        if key != meta:
            store.delete(key)
    store.delete(meta)
    return len(objects)


# -- the per-host service -------------------------------------------------------------------


class ReplicationService:
    """A thread that replicates, pass after pass, the disks `disks()` names.

    `disks()` returns (volume id, reversed) pairs: reversed False copies primary -> secondary,
    True secondary -> primary (a disk that failed over and is being failed back). The control
    plane decides which disks this host replicates (blockstore/control/service.py)."""

    def __init__(
        self,
        primary: ObjectStore,
        secondary: ObjectStore,
        disks: Callable[[], list[tuple[str, bool]]],
        *,
        config: ReplicationConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
        after_pass: Callable[[], None] | None = None,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.disks = disks
        self.after_pass = after_pass  # the control plane's follow-up work (fencing)
        self.config = config or ReplicationConfig()
        self.clock = clock
        self._replicators: dict[tuple[str, bool], DiskReplicator] = {}
        self._paused: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def replicator(self, volume_id: str, reverse: bool = False) -> DiskReplicator:
        with self._lock:
            rep = self._replicators.get((volume_id, reverse))
            if rep is None:
                src, dst = (
                    (self.secondary, self.primary) if reverse else (self.primary, self.secondary)
                )
                rep = DiskReplicator(src, dst, volume_id, config=self.config, clock=self.clock)
                self._replicators[(volume_id, reverse)] = rep
            return rep

    def status(self, volume_id: str) -> dict[str, Any] | None:
        with self._lock:
            rep = self._replicators.get((volume_id, False))
        return rep.status() if rep is not None else None

    def statuses(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            reps = [(vid, r) for (vid, rev), r in self._replicators.items() if not rev]
        return [(vid, r.status()) for vid, r in reps]

    def pause(self, volume_id: str) -> None:
        """Stop replicating a disk; returns once no pass of it is running."""
        with self._lock:
            self._paused.add(volume_id)
            reps = [r for (vid, _), r in self._replicators.items() if vid == volume_id]
        for rep in reps:
            rep.stop()
            with rep._lock:  # wait out a pass in progress
                pass

    def forget(self, volume_id: str) -> None:
        """Drop a disk's replicators (after a failover, failback or a change to lrs)."""
        with self._lock:
            reps = [self._replicators.pop(k) for k in list(self._replicators) if k[0] == volume_id]
            self._paused.discard(volume_id)
        for rep in reps:
            rep.close()

    def resume(self, volume_id: str) -> None:
        with self._lock:
            self._paused.discard(volume_id)

    def run_pass(self) -> None:
        """One pass over every disk to replicate (the thread's loop body; tests call it)."""
        try:
            wanted = self.disks()
        except BlockstoreError as exc:
            log.warning("replication: cannot list disks: %s", exc)
            wanted = []
        if self.after_pass is not None:
            try:
                self.after_pass()
            except BlockstoreError as exc:
                log.warning("replication: %s", exc)
        for volume_id, reverse in wanted:
            if self._stop.is_set():
                return
            with self._lock:
                if volume_id in self._paused:
                    continue
            rep = self.replicator(volume_id, reverse)
            rep._stop.clear()
            rep.run_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_seconds):
            try:
                self.run_pass()
            except Exception:  # a bug must not end replication silently
                log.exception("replication pass failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="replication", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            reps = list(self._replicators.values())
        for rep in reps:
            rep.stop()
        if self._thread is not None:
            self._thread.join(30)
        for rep in reps:
            rep.close()
