"""`ReplicationService`: the per-host thread that replicates, pass after pass, the disks the
control plane names.

Place: runs in the API process (`blockstore serve`, api/serve.py), built by the control plane
(blockstore/control/geo.py), which decides which disks this host replicates and is called back
after every pass (to fence old primaries). One `DiskReplicator` (geo/replicator.py) per disk and
direction, kept between passes so its view of the target and its lag survive.

Failure behaviour: a disk whose pass fails is recorded in its replicator's stats and tried again
next pass; a failure to list the disks, or of the control plane's follow-up, is logged and the
pass goes on; an unexpected exception is logged and the thread keeps running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import BlockstoreError
from blockstore.geo.config import ReplicationConfig
from blockstore.geo.replicator import DiskReplicator
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)


class ReplicationService:
    """A thread that replicates, pass after pass, the disks `disks()` names.

    `disks()` returns (disk id, reversed) pairs: reversed False copies primary -> secondary,
    True secondary -> primary (a disk that failed over and is being failed back)."""

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

    def replicator(self, disk_id: str, reverse: bool = False) -> DiskReplicator:
        with self._lock:
            rep = self._replicators.get((disk_id, reverse))
            if rep is None:
                src, dst = (
                    (self.secondary, self.primary) if reverse else (self.primary, self.secondary)
                )
                rep = DiskReplicator(src, dst, disk_id, config=self.config, clock=self.clock)
                self._replicators[(disk_id, reverse)] = rep
            return rep

    def status(self, disk_id: str) -> dict[str, Any] | None:
        with self._lock:
            rep = self._replicators.get((disk_id, False))
        return rep.status() if rep is not None else None

    def statuses(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            reps = [(disk_id, r) for (disk_id, rev), r in self._replicators.items() if not rev]
        return [(disk_id, r.status()) for disk_id, r in reps]

    def pause(self, disk_id: str) -> None:
        """Stop replicating a disk; returns once no pass of it is running."""
        with self._lock:
            self._paused.add(disk_id)
            reps = [r for (d, _), r in self._replicators.items() if d == disk_id]
        for rep in reps:
            rep.stop()
            rep.wait_idle()

    def forget(self, disk_id: str) -> None:
        """Drop a disk's replicators (after a failover, failback or a change to lrs)."""
        with self._lock:
            reps = [self._replicators.pop(k) for k in list(self._replicators) if k[0] == disk_id]
            self._paused.discard(disk_id)
        for rep in reps:
            rep.close()

    def resume(self, disk_id: str) -> None:
        with self._lock:
            self._paused.discard(disk_id)

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
        for disk_id, reverse in wanted:
            if self._stop.is_set():
                return
            with self._lock:
                if disk_id in self._paused:
                    continue
            rep = self.replicator(disk_id, reverse)
            rep.allow()
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
