"""Replay: rebuild a volume's `LogState` from the store at open.

The state is the newest checkpoint (or, for a clone never checkpointed, its source's; or an
empty map) plus the segments after it, judged in log order by the one log rule
(blockstore/engine/fence.py) up to the first missing position: nothing after a gap was ever
acknowledged, because acknowledgements are in order. Segment headers are fetched
`REPLAY_AHEAD` at a time ahead of the one being judged, so replay time does not bound how
rarely checkpoints may be written (docs/engine-measurements.md).

Replay only reads. Any object that does not decode, names another disk or position, or (on an
encrypted disk) fails to authenticate under the disk's key, raises `IntegrityError`: a volume
whose log cannot be read is not opened at all.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from blockstore.crypto.disk import DiskKeys
from blockstore.engine.config import VolumeStats
from blockstore.engine.extentmap import ExtentMap
from blockstore.engine.meta import listing, read_checkpoint
from blockstore.engine.state import LogState
from blockstore.errors import IntegrityError
from blockstore.format import keys
from blockstore.format.segment import SegmentHeader, decode_segment_header
from blockstore.store.base import ObjectStore
from blockstore.store.segment_head import read_segment_head

REPLAY_AHEAD = 16  # segment headers fetched in parallel ahead of the one being replayed


def read_header_at(
    store: ObjectStore,
    disk_id: str,
    seq: int,
    header_read: int,
    dkeys: DiskKeys,
    size: int | None = None,
) -> SegmentHeader | None:
    """The verified (and on an encrypted disk authenticated) header of the segment at `seq`;
    None for an empty (torn) object. `IntegrityError` when the header names another disk or
    position."""
    key = keys.segment_key(disk_id, seq)
    head = read_segment_head(store, key, header_read)
    if not head:
        return None
    hdr = decode_segment_header(head, key, size)
    if hdr.seq != seq or hdr.disk_id != disk_id:
        raise IntegrityError(f"segment {key}: header names {hdr.disk_id}/{hdr.seq}")
    dkeys.check(disk_id, hdr, f"segment {key}")
    return hdr


def load_state(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    meta: dict[str, Any],
    header_read: int,
    dkeys: DiskKeys,
) -> LogState:
    """Newest checkpoint (or the clone source's, or empty) plus replay of the segments after
    it, up to the first missing seq."""
    ckpts = [
        p[1]
        for k, _s in listing(store, keys.checkpoint_prefix(disk_id))
        if (p := keys.parse_checkpoint_key(k)) is not None
    ]
    state = base_state(store, disk_id, meta, max(ckpts) if ckpts else None, dkeys)
    return replay_listed(store, stats, disk_id, state, header_read, dkeys)


def base_state(
    store: ObjectStore, disk_id: str, meta: dict[str, Any], base_seq: int | None, dkeys: DiskKeys
) -> LogState:
    """The state replay starts from: checkpoint `base_seq`, or with none, the clone source's
    map with an empty log, or an empty disk."""
    source = meta.get("source")
    if base_seq is not None:
        key = keys.checkpoint_key(disk_id, base_seq)
        ck = read_checkpoint(store, key)
        if ck.disk_id != disk_id or ck.seq != base_seq:
            raise IntegrityError(
                f"checkpoint {base_seq:016x} of {disk_id} names {ck.disk_id}/{ck.seq}"
            )
        dkeys.check(disk_id, ck, f"checkpoint {key}")
        return LogState.from_checkpoint(ck)
    if source:
        key = str(source["checkpoint_key"])
        ck = read_checkpoint(store, key)
        dkeys.check(ck.disk_id, ck, f"checkpoint {key}")
        return LogState.from_checkpoint(ck, clone_size=int(meta["size"]))
    return LogState(ExtentMap(), int(meta["size"]), 0, -1, set(), {})


def replay_listed(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    state: LogState,
    header_read: int,
    dkeys: DiskKeys,
    upto: int | None = None,
) -> LogState:
    """List the segments after `state.seq` and replay them up to the first missing one (or
    up to position `upto`: a restore point, engine/points.py)."""
    start = keys.segment_key(disk_id, state.seq)
    present = dict(listing(store, keys.segment_prefix(disk_id), start))
    if upto is not None:
        last = keys.segment_key(disk_id, upto)
        present = {k: v for k, v in present.items() if k <= last}
    if keys.segment_key(disk_id, state.seq + 1) not in present:
        return state
    pool = ThreadPoolExecutor(REPLAY_AHEAD, thread_name_prefix=f"replay-{disk_id}")
    try:
        _Replay(store, stats, disk_id, state, present, header_read, pool, dkeys).run()
        return state
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Replay:
    """One pass over the listed segments after `state.seq`, headers fetched ahead."""

    def __init__(
        self,
        store: ObjectStore,
        stats: VolumeStats,
        disk_id: str,
        state: LogState,
        present: dict[str, int],
        header_read: int,
        pool: ThreadPoolExecutor,
        dkeys: DiskKeys,
    ) -> None:
        self.store = store
        self.dkeys = dkeys
        self.stats = stats
        self.disk_id = disk_id
        self.state = state
        self.present = present  # listed key -> size
        self.header_read = header_read
        self.pool = pool
        self.ahead: dict[int, Future[SegmentHeader | None]] = {}
        self.next_fetch = state.seq + 1  # the first seq not asked for yet

    def listed(self, seq: int) -> bool:
        return keys.segment_key(self.disk_id, seq) in self.present

    def fetch(self, seq: int) -> SegmentHeader | None:
        """The header at `seq`; None for a torn (empty) object, known from the listing."""
        key = keys.segment_key(self.disk_id, seq)
        size = self.present[key]
        if size == 0:
            return None
        hdr = read_header_at(self.store, self.disk_id, seq, self.header_read, self.dkeys, size)
        if hdr is None:  # listed with bytes, read as none: not a segment
            raise IntegrityError(f"segment {key}: object is 0 bytes, shorter than a header")
        return hdr

    def run(self) -> None:
        """Judge the segments in log order up to the first one not listed."""
        state = self.state
        while self.listed(state.seq + 1):
            seq = state.seq + 1
            while self.next_fetch < seq + REPLAY_AHEAD and self.listed(self.next_fetch):
                self.ahead[self.next_fetch] = self.pool.submit(self.fetch, self.next_fetch)
                self.next_fetch += 1
            hdr = self.ahead.pop(seq).result()
            with self.stats.lock:
                state.replay(hdr, self.stats, self.disk_id)
