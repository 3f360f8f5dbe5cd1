"""The service's sampler of performance history: every `interval` seconds (5), one point per
disk this host serves, kept in memory (`control/history.py`) and in `<home>/history/`.

Place: started by `blockstore serve` beside the control plane (api/serve.py `start_control`),
read by GET /v1/disks/{name}/stats. Each pass reads the stats file every export rewrites every
2 s (`blockstore.host.contract`), with the time it was written, so rates are taken over the
time the counters really cover, whatever the phase of the two timers. It asks the store nothing
for that. The replication lag of a grs disk is measured as the API measures it (four LISTs,
blockstore/geo/lag.py), but only when it can have changed: after the disk wrote or uploaded,
while the last lag was not 0, or once a minute; an idle grs disk costs four LISTs a minute, not
48 (issue #21: idle disks must cost the store next to nothing).

Points sit on a grid of multiples of `interval` (Unix time), so the points of one moment line
up across disks and a gap (the service was down) shows as missing points, not as stretched ones.

Files: `<home>/history/<disk id>.hist` (`DiskHistory.encode`), one per disk, written whole
(temporary file, rename) every `save_every` seconds for the histories that changed, and at
`close`; loaded at `start`, so a restart keeps the history (the rates start again one step after
it: the previous counters are not kept). A file that cannot be read is logged and left out.
A deleted disk's history goes when its delete starts on this host, and, for disks deleted
elsewhere, when the hourly look at the disk records no longer finds its disk id.

Failure behaviour: an error with one disk is logged and skips that disk's point; an error of the
whole pass is logged and the next pass runs; the service never stops for its history.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.control.history import COARSE_STEP, FINE_POINTS, SERIES, Counters, DiskHistory
from blockstore.control.model import DISK_ID_FIELD, Redundancy, disk_id_of
from blockstore.control.records import Record
from blockstore.control.service import ControlService
from blockstore.errors import BlockstoreError
from blockstore.host import contract

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
SAVE_SECONDS = 60.0
PRUNE_SECONDS = 3600.0
LAG_REMEASURE_SECONDS = 60.0  # an idle grs disk whose lag was 0: measured again this often
SUFFIX = ".hist"


def read_counters(path: Path) -> Counters | None:
    """The counters in an export's stats file and the time it was written."""
    got = contract.read_stats_at(path)
    return None if got is None else Counters.of(*got)


def no_points(since: int, interval: float = INTERVAL_SECONDS) -> dict[str, Any]:
    """The answer for a disk without history: the step the range would have, no points."""
    step = interval if since <= FINE_POINTS * interval else COARSE_STEP
    return {"step_seconds": step, "t": [], "series": {s: [] for s in SERIES}}


class HistorySampler:
    """The performance history of the disks this host serves; one thread."""

    def __init__(
        self,
        control: ControlService,
        home: Path,
        *,
        interval: float = INTERVAL_SECONDS,
        save_every: float = SAVE_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.control = control
        self.dir = home / "history"
        self.interval = interval
        self.save_every = save_every
        self.clock = clock
        self._histories: dict[str, DiskHistory] = {}  # by engine disk id
        self._lags: dict[str, tuple[float | None, float]] = {}  # disk id: (lag, measured at)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe = control.operations.subscribe(self._on_operation)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> HistorySampler:
        self.load()
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop sampling and save what changed."""
        self._unsubscribe()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.save()

    def _run(self) -> None:
        self._guarded(self.prune)
        saved = pruned = self.clock.monotonic()
        while not self._stop.wait(self._until_next_step()):
            self._guarded(self.sample)
            now = self.clock.monotonic()
            if now - saved >= self.save_every:
                saved = now
                self._guarded(self.save)
            if now - pruned >= PRUNE_SECONDS:
                pruned = now
                self._guarded(self.prune)

    def _until_next_step(self) -> float:
        """Seconds to the next multiple of `interval`, at least half an interval away (a
        pass that woke a moment early must not run twice for one step)."""
        delay = self.interval - self.clock.time() % self.interval
        return delay + self.interval if delay < self.interval / 2 else delay

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except BlockstoreError as exc:  # the store is away: the next pass tries again
            log.warning("performance history: %s", exc)
        except Exception:  # a bug must not end the history of every disk
            log.exception("performance history failed")

    # -- sampling ---------------------------------------------------------------------------

    def sample(self) -> None:
        """One pass: a point for every disk served here, at the step nearest to now."""
        t = round(self.clock.time() / self.interval) * self.interval
        exports = self.control.context.exports
        for disk in exports.served_disks():
            try:
                counters = read_counters(contract.stats_path(exports.socket_of(disk)))
                if counters is None:
                    continue  # started a moment ago: no stats file yet
                history = self._history_of(disk)
                lag = self._lag(disk, history.prev, counters)
                with self._lock:
                    history.record(t, counters, lag)
            except Exception:
                log.exception("performance history of disk %s", disk.get("name"))

    def _history_of(self, disk: Record) -> DiskHistory:
        disk_id, name = disk_id_of(disk), disk["name"]
        with self._lock:
            history = self._histories.get(disk_id)
            if history is None:
                # A name reused by a new disk: the old disk's history is not this one's.
                for old in [h for h in self._histories.values() if h.name == name]:
                    self._drop_locked(old.disk_id)
                history = self._histories[disk_id] = DiskHistory(disk_id, name, self.interval)
            return history

    def _lag(self, disk: Record, prev: Counters | None, cur: Counters) -> float | None:
        """The replication lag of a grs disk (None: lrs, failed over, or not measured)."""
        if disk.get("redundancy") != Redundancy.grs:
            return None
        disk_id, now = disk_id_of(disk), self.clock.monotonic()
        last = self._lags.get(disk_id)
        wrote = prev is None or prev.io["write"][0] != cur.io["write"][0]
        uploaded = prev is None or prev.store_puts != cur.store_puts
        recent_zero = last is not None and last[0] == 0.0 and now - last[1] < LAG_REMEASURE_SECONDS
        if recent_zero and not (wrote or uploaded):
            return 0.0  # nothing written or uploaded since it was 0: still 0
        try:
            status = self.control.geo.replication_status(disk)
        except BlockstoreError:
            status = None
        lag = None if status is None or status.get("lag_seconds") is None else status["lag_seconds"]
        self._lags[disk_id] = (lag, now)
        return None if lag is None else float(lag)

    # -- answers ----------------------------------------------------------------------------

    def query(self, disk: Record, since: int) -> dict[str, Any]:
        """The disk's points of the last `since` seconds (`DiskHistory.query`)."""
        now = self.clock.time()
        with self._lock:
            history = self._histories.get(disk_id_of(disk))
            if history is not None:
                return history.query(since, now)
        return no_points(since, self.interval)

    # -- keeping ----------------------------------------------------------------------------

    def _path(self, disk_id: str) -> Path:
        return self.dir / f"{disk_id}{SUFFIX}"

    def load(self) -> None:
        """The histories saved in the home."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                history = DiskHistory.decode(path.read_bytes(), self.interval)
            except (OSError, ValueError) as exc:
                log.warning("performance history %s left out: %s", path, exc)
                continue
            with self._lock:
                self._histories[history.disk_id] = history

    def save(self) -> None:
        """Write the histories that changed since they were last written."""
        with self._lock:
            changed = [(h.disk_id, h.encode()) for h in self._histories.values() if h.changed]
            for h in self._histories.values():
                h.changed = False
        if not changed:
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for disk_id, data in changed:
            contract.write_whole(self._path(disk_id), data)

    def prune(self) -> None:
        """Drop the histories of disks the records no longer hold (deleted elsewhere)."""
        with self._lock:
            if not self._histories:
                return
        live = {
            d.get(DISK_ID_FIELD)
            for _, d in self.control.records.items()
            if d.get("state") != "deleting"
        }
        with self._lock:
            for disk_id in [k for k in self._histories if k not in live]:
                self._drop_locked(disk_id)

    def _on_operation(self, op: Record) -> None:
        """A delete started here: the disk's history goes with it (only at the start: by
        the time it finishes, a new disk may have taken the name)."""
        started = op.get("status") == "running" and op.get("progress") == 0
        if op.get("kind") == "delete-disk" and started:
            with self._lock:
                for h in [h for h in self._histories.values() if h.name == op["target"]]:
                    self._drop_locked(h.disk_id)

    def _drop_locked(self, disk_id: str) -> None:
        self._histories.pop(disk_id, None)
        self._lags.pop(disk_id, None)
        self._path(disk_id).unlink(missing_ok=True)

    def disks(self) -> list[str]:
        """Names of the disks with a history here (for tests and diagnostics)."""
        with self._lock:
            return sorted(h.name for h in self._histories.values())
