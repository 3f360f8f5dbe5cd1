"""Fencing procedures: claiming a writer epoch, taking the log over at open, and a writer taking
its own log up again after one of its PUTs left a torn object.

The rule that decides which objects count is `fence.py` beside this module; here are the steps
that make the rule's premises true (docs/format.md, "Fencing"):

- `claim_epoch`: a writable open first claims an epoch with a create-if-absent PUT of its
  epoch key; of two openers claiming one number exactly one wins.
- `take_log`: the new writer PUTs fences (empty segments) in batches of `FENCE_SPAN`
  positions after the end of the log, until every position from its first fence F to
  F + FENCE_SPAN - 1 is decided; its data starts at F + FENCE_SPAN, beyond every older
  writer's reach, so an older writer is stopped in bounded time whatever its rate.
- `resume_position`: a writer whose own PUT at t left a torn object fences
  t+1 .. t+FENCE_WINDOW and resumes at the first of those at or after t + FENCE_WINDOW it
  holds, while no newer epoch is claimed.

Every step is a create-if-absent PUT or a read of immutable objects, so a crash anywhere leaves
nothing to undo: positions we fenced stay fenced (and void for everyone), the next opener
claims the next epoch and starts over. A newer epoch met anywhere raises `Fenced`.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from blockstore.crypto.disk import DiskKeys
from blockstore.engine.config import VolumeConfig, VolumeStats
from blockstore.engine.fence import FENCE_SPAN, FENCE_WINDOW
from blockstore.engine.meta import newer_epoch, top_epoch
from blockstore.engine.replay import read_header_at, replay_listed
from blockstore.engine.state import LogState
from blockstore.errors import (
    BlockstoreError,
    Conflict,
    Fenced,
    IntegrityError,
    InvalidArgument,
    PreconditionFailed,
    Unavailable,
)
from blockstore.format import keys
from blockstore.format.segment import SegmentHeader, decode_segment_header, encode_segment
from blockstore.store.base import ObjectStore

_CLAIM_TRIES = 1000  # epoch numbers tried by an open that names none

# What a fence PUT at one position found: (True, our fence) when the position is ours, else
# (False, the header of what holds it), or (False, None) for a torn (empty) object.
Taken = tuple[bool, SegmentHeader | None]


def claim_epoch(store: ObjectStore, disk_id: str, wanted: int | None = None) -> int:
    """Claim `wanted` (Conflict when taken, Fenced when a higher one is claimed already), or
    the next free epoch."""
    if wanted is not None:
        if not 1 <= wanted <= keys.MAX_EPOCH:
            raise InvalidArgument(f"writer epoch {wanted} is out of range")
        try:
            store.put(keys.epoch_key(disk_id, wanted), b"", if_none_match=True)
        except PreconditionFailed:
            raise Conflict(f"disk {disk_id!r}: writer epoch {wanted} is taken") from None
        top = top_epoch(store, disk_id)
        if top > wanted:
            raise Fenced(
                f"disk {disk_id!r}: epoch {top} was claimed before epoch {wanted} could "
                "take the log"
            )
        return wanted
    epoch = top_epoch(store, disk_id) + 1
    for _ in range(_CLAIM_TRIES):
        if epoch > keys.MAX_EPOCH:
            break
        try:
            store.put(keys.epoch_key(disk_id, epoch), b"", if_none_match=True)
            return epoch
        except PreconditionFailed:
            epoch += 1  # another opener won this number
    raise Conflict(f"disk {disk_id!r}: could not claim a writer epoch")


def take_position(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    epoch: int,
    seq: int,
    config: VolumeConfig,
    dkeys: DiskKeys,
) -> Taken:
    """PUT a fence of `epoch` at `seq` with If-None-Match. Ours also when an earlier attempt
    whose reply was lost stored it."""
    key = keys.segment_key(disk_id, seq)
    blob = encode_segment(key, disk_id, seq, epoch, config.checksum_chunk, [], dkeys.writer)
    try:
        store.put(key, blob, if_none_match=True)
    except PreconditionFailed:
        hdr = read_header_at(store, disk_id, seq, config.header_read_bytes, dkeys)
        if hdr is None or hdr.epoch != epoch or hdr.records:
            return False, hdr
    with stats.lock:
        stats.fences_written += 1
    return True, decode_segment_header(blob, key)


def superseded(disk_id: str, epoch: int, newer: int) -> Fenced:
    return Fenced(
        f"disk {disk_id!r}: a newer writer (epoch {newer}) took the log "
        f"while epoch {epoch} was opening"
    )


def take_log(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    epoch: int,
    state: LogState,
    config: VolumeConfig,
    dkeys: DiskKeys,
) -> None:
    """Take the log over for `epoch`, in bounded time whatever an older writer's rate.

    When every position of a batch of fences is decided, the lowest one we hold, F, is our
    first fence; the positions up to F + FENCE_SPAN - 1 are then judged in order by the log
    rule: below F an older writer's segments are replayed (it may have acknowledged them),
    above F they are void. Raises `Fenced` when a newer epoch's object is met anywhere."""
    # Catch up first with one LIST: an older writer that kept writing while we replayed
    # has segments we can read in parallel, which is cheaper than fencing over them.
    replay_listed(store, stats, disk_id, state, config.header_read_bytes, dkeys)
    if state.log_epoch > epoch:
        raise superseded(disk_id, epoch, state.log_epoch)
    lo = state.seq + 1
    first, decided = _fence_span(store, stats, disk_id, epoch, lo, config, dkeys)
    with stats.lock:
        for seq in range(lo, first + FENCE_SPAN):
            if seq == first:
                state.prior_epoch = state.log_epoch
            state.replay(decided[seq][1], stats, disk_id)
    assert state.log_epoch == epoch and state.fences[-1] == first


def _fence_span(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    epoch: int,
    lo: int,
    config: VolumeConfig,
    dkeys: DiskKeys,
) -> tuple[int, dict[int, Taken]]:
    """Fence from `lo` on, FENCE_SPAN positions at a time, until our first fence F is known and
    every position of [lo, F + FENCE_SPAN) is decided; returns F and what each position holds.
    If an older writer filled a whole batch, the next batch follows it."""
    decided: dict[int, Taken] = {}
    todo = list(range(lo, lo + FENCE_SPAN))
    first: int | None = None
    with ThreadPoolExecutor(FENCE_SPAN, thread_name_prefix=f"fence-{disk_id}") as pool:
        while todo:
            results = pool.map(
                lambda q: take_position(store, stats, disk_id, epoch, q, config, dkeys), todo
            )
            for seq, got in zip(todo, results, strict=True):
                decided[seq] = got
                hdr = got[1]
                if not got[0] and hdr is not None and hdr.epoch > epoch:
                    raise superseded(disk_id, epoch, hdr.epoch)
            first = min((q for q, got in decided.items() if got[0]), default=None)
            if first is None:  # an older writer filled the whole batch: the next one
                top = max(decided)
                todo = list(range(top + 1, top + 1 + FENCE_SPAN))
            else:
                todo = [q for q in range(lo, first + FENCE_SPAN) if q not in decided]
    assert first is not None
    return first, decided


def resume_position(
    store: ObjectStore,
    stats: VolumeStats,
    disk_id: str,
    epoch: int,
    torn: int,
    config: VolumeConfig,
    dkeys: DiskKeys,
) -> int:
    """The position of our resume fence after our own PUT at `torn` left an empty object,
    once every PUT of ours has finished.

    Nothing at or after `torn` was acknowledged (acknowledgements are in order) and our PUTs
    reach at most torn + FENCE_WINDOW - 1. We fence torn+1 .. torn+FENCE_WINDOW, so that every
    position up to the resume fence is decided (a late PUT of ours there gets 412), and the
    resume fence r is the first of those at or after torn + FENCE_WINDOW that we hold: the log
    rule voids our objects in between and applies ours again from r.

    Raises `Fenced` (for good) when a newer epoch is claimed or holds a position, or when that
    cannot be ruled out (the LIST fails); any other `BlockstoreError` may be retried."""
    try:
        newer = newer_epoch(store, disk_id, epoch)
    except BlockstoreError as exc:
        why = f"no proof that no newer writer was claimed ({exc})"
        raise _cannot_resume(disk_id, epoch, torn, why) from exc
    if newer is not None:
        raise _cannot_resume(disk_id, epoch, torn, f"epoch {newer} was claimed")
    todo = list(range(torn + 1, torn + FENCE_WINDOW + 1))
    with ThreadPoolExecutor(len(todo), thread_name_prefix=f"resume-{disk_id}") as pool:
        while True:
            got = list(pool.map(
                lambda q: take_position(store, stats, disk_id, epoch, q, config, dkeys), todo
            ))  # fmt: skip
            resume_at = _first_resume_fence(disk_id, epoch, torn, zip(todo, got, strict=True))
            if todo[-1] >= torn + 2 * FENCE_WINDOW:
                # Our reach must stay inside a newer writer's fence span (FENCE_SPAN from its
                # first fence, which is past `torn`): give up rather than go on.
                raise Unavailable(
                    f"disk {disk_id}: {FENCE_WINDOW} resume fences after position {torn} were torn"
                )
            if resume_at is not None:
                return resume_at
            todo = [todo[-1] + 1]  # our resume fence was torn too: the next one


def _first_resume_fence(
    disk_id: str, epoch: int, torn: int, round_: Iterable[tuple[int, Taken]]
) -> int | None:
    """Of one round of resume fences, the first we hold at or after torn + FENCE_WINDOW (None:
    none yet). Another epoch's object among them: `Fenced` for a newer one, `IntegrityError`
    for an older one (inside our own data, which cannot be)."""
    resume_at = None
    for q, (ours, hdr) in round_:
        if not ours and hdr is not None and hdr.epoch > epoch:
            raise _cannot_resume(disk_id, epoch, torn, f"epoch {hdr.epoch} holds position {q}")
        if not ours and hdr is not None and hdr.epoch < epoch:
            raise IntegrityError(
                f"disk {disk_id}: epoch {hdr.epoch} holds position {q}, "
                f"inside epoch {epoch}'s data; refusing to resume"
            )
        if ours and q >= torn + FENCE_WINDOW and resume_at is None:
            resume_at = q
    return resume_at


def _cannot_resume(disk_id: str, epoch: int, torn: int, why: str) -> Fenced:
    return Fenced(
        f"disk {disk_id!r}: writer epoch {epoch} cannot resume "
        f"past its torn segment at {torn}: {why}"
    )
