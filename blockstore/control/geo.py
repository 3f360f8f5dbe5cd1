"""Geo-redundancy workflows of `grs` disks: which disks this host replicates, their lag, and the
five changes of region: failover, failback, lrs -> grs (seed the secondary), grs -> lrs (remove
it), and copying one snapshot to the other region.

A grs disk's data is copied, object by object in log order, from the region serving it to the
other one (blockstore/geo/); its record is mirrored to both regions' buckets
(control/records.py, MirroredRecords), so the disk can fail over while the primary region is
completely down. The record's `primary` field says which region serves the data now.

Failure behaviour: a failover with the primary unreachable skips fencing and draining it, and
loses the writes the secondary lacked (the lag the disk showed: its RPO); the old primary's
writer is fenced once the primary answers again (`fence_old_primaries`). Failback, seeding,
removal and snapshot copies run as operations (control/operations.py): a failure fails the
operation and can be retried.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from blockstore.control.attachments import AttachmentService
from blockstore.control.context import ControlContext
from blockstore.control.model import (
    DISK_ID_FIELD,
    PRIMARY,
    SECONDARY,
    DiskKind,
    Redundancy,
    disk_id_of,
    region_of,
    require_volume,
)
from blockstore.control.operations import Progress
from blockstore.control.records import Record
from blockstore.control.snapshots import SnapshotService
from blockstore.engine.volume import Volume
from blockstore.errors import BlockstoreError, Conflict, NotFound, Unavailable
from blockstore.format import keys
from blockstore.geo import lag
from blockstore.geo.delete import delete_copy
from blockstore.geo.frontier import trim_after_frontier, truncate_after
from blockstore.geo.progress import marker_counters, progress_key
from blockstore.geo.replicator import DiskReplicator
from blockstore.geo.service import ReplicationService
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)


class GeoService:
    """Replication of this host's grs disks, their lag, and their changes of region."""

    def __init__(
        self,
        context: ControlContext,
        attachments: AttachmentService,
        snapshots: SnapshotService,
    ) -> None:
        self.ctx = context
        self.attachments = attachments
        self.snapshots = snapshots
        self.config = context.replication_config
        self.replication: ReplicationService | None = None
        self._unfenced: list[str] = []  # disks that failed over while the primary was down
        if context.secondary is not None:
            self.replication = ReplicationService(
                context.store,
                context.secondary,
                self.replicated_disks,
                config=self.config,
                clock=context.clock,
                after_pass=self.fence_old_primaries,
            )

    # -- what this host replicates --------------------------------------------------------

    def replicated_disks(self) -> list[tuple[str, bool]]:
        """What this host's replicator copies: (disk id, reversed) of every grs disk served
        from the primary region whose attachment is on this host, and of every detached one
        (any host may copy those; copies are create-if-absent, so duplicates are harmless)."""
        out, unfenced = [], []
        for name, disk in self.ctx.disks.items():
            if disk.get("state") != "ready" or disk.get("redundancy") != Redundancy.grs:
                continue
            if (disk.get("failover") or {}).get("fence_pending"):
                unfenced.append(name)
            if region_of(disk) != PRIMARY or disk.get("kind") == DiskKind.ephemeral:
                continue
            attachment = disk.get("attachment")
            if attachment and attachment["host"] != self.ctx.host_id:
                continue
            out.append((disk_id_of(disk), False))
        self._unfenced = unfenced
        return out

    def fence_old_primaries(self) -> None:
        """Fence, once the primary region answers again, the writer of every disk that failed
        over while it was down (after each replication pass): a writer that was still running
        there can then never commit to the old copy again."""
        if self.ctx.primary_down():
            return
        for name in self._unfenced:
            disk = self.ctx.disks.find(name)
            failover = (disk or {}).get("failover") or {}
            if disk is None or not failover.get("fence_pending"):
                continue
            try:
                Volume.fence_writers(self.ctx.store, disk_id_of(disk))
            except NotFound:
                pass  # no log there at all: nothing can be written to it
            except BlockstoreError as exc:
                log.info("old primary of %s not fenced yet: %s", name, exc)
                return
            fenced = {**failover, "fence_pending": False, "fenced_at": self.ctx.now()}
            self.ctx.set_fields(name, failover=fenced)
            log.info("disk %s: the old primary's writer is fenced", name)
        self._unfenced = []

    def _pause(self, disk_id: str) -> None:
        if self.replication is not None:
            self.replication.pause(disk_id)

    def _forget(self, disk_id: str) -> None:
        if self.replication is not None:
            self.replication.forget(disk_id)

    def drop_copies(self, disk: Record) -> None:
        """Before a disk's data is deleted: stop replicating it, and remove its copy in the
        other region."""
        self._pause(disk_id_of(disk))
        self._forget(disk_id_of(disk))
        if self.ctx.secondary is not None and disk.get("redundancy") == Redundancy.grs:
            delete_copy(self.ctx.other_store(disk), disk_id_of(disk))

    # -- lag ------------------------------------------------------------------------------

    def replication_status(self, disk: Record) -> dict[str, Any] | None:
        """Lag of a grs disk against what its primary has acknowledged, measured now on both
        stores (blockstore/geo/lag.py), plus the copy counters of this host's replicator or
        the progress marker of the host that replicates it (None for lrs disks)."""
        if disk.get("redundancy") != Redundancy.grs or self.ctx.secondary is None:
            return None
        if region_of(disk) == SECONDARY:
            return {
                "state": "failed-over",
                "failover": disk.get("failover"),
                "rpo_target_seconds": self.config.rpo_target_seconds,
            }
        status = None
        if self.replication is not None:
            status = self.replication.status(disk_id_of(disk))
        if status is None:
            status = marker_counters(self.ctx.secondary, disk_id_of(disk))
        status.update(self._measured_lag(disk, status))
        if status.get("last_sync_time") is not None:
            status["last_sync_time"] = datetime.fromtimestamp(
                float(status["last_sync_time"]), UTC
            ).isoformat(timespec="milliseconds")
        return status

    def _measured_lag(self, disk: Record, counters: dict[str, Any]) -> dict[str, Any]:
        """The lag fields, or "unknown" when the primary does not answer: a lag that cannot
        be measured is never reported as none."""
        secondary = self.ctx.require_secondary()
        target = self.config.rpo_target_seconds
        try:
            if self.ctx.primary_down():
                raise Unavailable("the primary region does not answer")
            measured = lag.measure(
                self.ctx.store,
                secondary,
                disk_id_of(disk),
                known=int(counters.get("frontier_seq") or 0),
            )
        except BlockstoreError as exc:
            return {
                "state": "unknown",
                "lag_seconds": None,
                "lag_bytes": None,
                "rpo_target_seconds": target,
                "rpo_exceeded": True,
                "error": f"lag not measured: {exc}",
            }
        return lag.status_fields(
            measured, self.ctx.clock.time(), counters.get("last_sync_time"), target
        )

    def wait_replicated(self, name: str, timeout_seconds: float) -> dict[str, Any]:
        """Return the status once the secondary holds everything the primary had acknowledged
        when the call began: the drain before a planned failover. Writes acknowledged during
        the wait are not waited for, so a busy writer cannot hold it off. Conflict when
        `timeout_seconds` pass first (saying what is still pending), Unavailable when the
        primary does not answer."""
        disk = self.ctx.get_disk(name)
        self._require_grs(disk)
        if region_of(disk) == SECONDARY:
            raise Conflict(f"disk {name!r} is served from the secondary region: nothing to drain")
        clock = self.ctx.clock
        deadline = clock.monotonic() + timeout_seconds
        goal: int | None = None
        while True:
            status = self.replication_status(disk)
            assert status is not None
            if status["state"] == "unknown":
                raise Unavailable(f"disk {name!r}: {status['error']}")
            goal = status["source_seq"] if goal is None else goal
            if not status["pending_segments"] or status["frontier_seq"] >= goal:
                return status
            left = deadline - clock.monotonic()
            if left <= 0:
                raise Conflict(
                    f"disk {name!r}: the secondary is still {status['lag_bytes']} bytes behind "
                    f"({status['pending_segments']} segments, the oldest written "
                    f"{status['lag_seconds']} s ago) after {timeout_seconds:g} s; wait longer, "
                    f"or check the replication errors in GET /v1/disks/{name}"
                )
            clock.sleep(min(0.2, left))

    def replication_statuses(self) -> list[tuple[str, dict[str, Any]]]:
        """(disk name, status) of every grs disk this host replicates, for /metrics."""
        if self.replication is None:
            return []
        by_disk_id = dict(self.replication.statuses())
        return [
            (name, status)
            for name, d in self.ctx.disks.items()
            if d.get(DISK_ID_FIELD) in by_disk_id
            and d.get("state") == "ready"
            and (status := self.replication_status(d)) is not None
        ]

    # -- checks ---------------------------------------------------------------------------

    def _require_grs(self, disk: Record) -> None:
        require_volume(disk)
        if disk.get("redundancy") != Redundancy.grs:
            raise Conflict(
                f"disk {disk['name']!r} is locally redundant (lrs): only grs disks have a "
                "secondary copy to fail over to; PATCH it to redundancy grs first"
            )
        self.ctx.require_secondary()

    def _require_local(self, disk: Record, doing: str) -> None:
        attachment = disk.get("attachment")
        if attachment and attachment["host"] != self.ctx.host_id:
            raise Conflict(
                f"disk {disk['name']!r} is attached on host {attachment['host']}: {doing} it "
                "through that host's API, or detach it first"
            )

    # -- failover -------------------------------------------------------------------------

    def failover(self, name: str) -> Record:
        """Serve the disk from the secondary region from now on.

        Steps: stop replicating it; stop its export here; fence the primary's writer by
        opening the volume writable there and, when that works, drain what the secondary
        still lacks; cut the secondary's log at its replay frontier (the *fork*: what it has
        is a prefix of the primary, and the primary's log after it is never applied again);
        open it writable there (a new epoch, fences); record the switch; serve again. With the
        primary unreachable the fence and the drain are skipped, and writes the primary took
        after the fork are lost: that is the RPO the disk's lag showed. The switch is then
        recorded in the secondary alone (the record's mirror there is read and updated), and
        the old primary's writer is fenced as soon as the primary answers again
        (`fence_old_primaries`)."""
        with self.ctx.attach_lock:
            disk = self.ctx.get_disk(name)
            self._require_grs(disk)
            if region_of(disk) == SECONDARY:
                raise Conflict(f"disk {name!r} is already served from the secondary region")
            self._require_local(disk, "fail over")
            started = self.ctx.clock.monotonic()
            disk_id = disk_id_of(disk)
            secondary = self.ctx.require_secondary()
            self._pause(disk_id)
            primary_reachable = self._fence_and_drain(disk, secondary)
            discarded = 0
            if not primary_reachable:
                # A readwrite cache's journal holds writes the primary never took. On top of
                # the secondary's older state they would make a disk that never existed (later
                # writes without earlier ones): they go, with everything after the fork.
                discarded = self.ctx.exports.discard_local(disk)
            fork = trim_after_frontier(secondary, disk_id)
            Volume.open(secondary, disk_id, writable=True).close()
            with contextlib.suppress(BlockstoreError):
                secondary.delete(progress_key(disk_id))
            failover = {
                "at": self.ctx.now(),
                "fork_seq": fork,
                "primary_reachable": primary_reachable,
                "fence_pending": not primary_reachable,
                "host_cache_discarded_bytes": discarded,
                "seconds": round(self.ctx.clock.monotonic() - started, 3),
            }
            disk = self.ctx.set_fields(name, primary=SECONDARY, failover=failover)
            self._forget(disk_id)
            if disk.get("attachment"):
                disk = self.attachments.serve_again(disk)
            return disk

    def _fence_and_drain(self, disk: Record, secondary: ObjectStore) -> bool:
        """Stop the disk's export here, fence the primary's writer and copy to the secondary
        what it still lacks. False when the primary region does not answer (nothing fenced,
        nothing drained)."""
        primary_reachable = not self.ctx.primary_down()
        if disk.get("attachment"):
            # With the primary down the export could only wait out its retry deadline
            # trying to upload what is then discarded anyway: it is stopped at once.
            with contextlib.suppress(BlockstoreError):
                self.ctx.exports.stop(disk, graceful=primary_reachable)
        if not primary_reachable:
            return False
        disk_id = disk_id_of(disk)
        try:
            Volume.fence_writers(self.ctx.store, disk_id)
            with DiskReplicator(self.ctx.store, secondary, disk_id, config=self.config) as drain:
                drain.catch_up(max_passes=20)
        except BlockstoreError:
            return False
        return True

    # -- failback -------------------------------------------------------------------------

    def failback(self, name: str) -> Record:
        """Re-seed the old primary from the secondary and serve from the primary again (an
        operation): fence the old primary, cut its log at the fork, copy what it lacks (only
        objects written since the fork, and checkpoints and snapshots it is missing), stop the
        export, fence the secondary, copy the rest, switch, serve."""
        disk = self.ctx.get_disk(name)
        self._require_grs(disk)
        if region_of(disk) != SECONDARY:
            raise Conflict(f"disk {name!r} is served from its primary region: nothing to fail back")
        self._require_local(disk, "fail back")
        return self.ctx.operations.start("failback", name, lambda p: self._failback(name, p))

    def _failback(self, name: str, progress: Progress) -> None:
        disk = self.ctx.get_disk(name)
        disk_id = disk_id_of(disk)
        primary, secondary = self.ctx.store, self.ctx.require_secondary()
        fork = int((disk.get("failover") or {}).get("fork_seq", 0))
        Volume.fence_writers(primary, disk_id)  # any old-primary writer
        truncate_after(primary, disk_id, fork)
        with DiskReplicator(
            secondary, primary, disk_id, config=self.config, check_target_after=fork
        ) as back:
            if not back.catch_up(max_passes=200, progress=lambda f: progress(0.9 * f)):
                raise Conflict(f"disk {name!r}: the old primary did not catch up; try again")
            with self.ctx.attach_lock:
                disk = self.ctx.get_disk(name)
                attached = bool(disk.get("attachment"))
                if attached:
                    self.ctx.exports.stop(disk)
                Volume.open(secondary, disk_id, writable=True).close()  # fence the secondary
                if not back.catch_up(max_passes=50):
                    raise Conflict(f"disk {name!r}: the last copy to the old primary failed")
                Volume.open(primary, disk_id, writable=True).close()  # the primary takes the log
                with contextlib.suppress(BlockstoreError):
                    primary.delete(progress_key(disk_id))
                disk = self.ctx.set_fields(name, primary=PRIMARY, failover=None)
                if attached:
                    self.attachments.serve_again(disk)
        self._forget(disk_id)

    # -- redundancy, snapshot copies ------------------------------------------------------

    def set_redundancy(self, name: str, redundancy: Redundancy) -> Record | None:
        """lrs -> grs seeds the secondary; grs -> lrs removes the secondary copy. Both run as
        an operation, returned here (None when the disk already has that redundancy)."""
        disk = self.ctx.get_disk(name)
        require_volume(disk)
        if disk.get("redundancy") == redundancy:
            return None
        secondary = self.ctx.require_secondary()
        if region_of(disk) == SECONDARY:
            raise Conflict(f"disk {name!r} runs on the secondary region: fail it back first")
        disk_id = disk_id_of(disk)
        self.ctx.set_fields(name, redundancy=redundancy.value)
        if redundancy == Redundancy.grs:

            def seed(progress: Progress) -> None:
                with DiskReplicator(self.ctx.store, secondary, disk_id, config=self.config) as rep:
                    if not rep.catch_up(max_passes=1000, progress=progress):
                        raise Conflict(f"seeding the secondary copy of {name!r} did not finish")

            return self.ctx.operations.start("seed-secondary", name, seed)
        self._pause(disk_id)
        self._forget(disk_id)

        def remove(progress: Progress) -> None:
            delete_copy(secondary, disk_id)

        return self.ctx.operations.start("remove-secondary", name, remove)

    def copy_snapshot(self, name: str, snapshot: str) -> Record:
        """Copy one snapshot to the other region (an operation), incrementally: segments a
        previous copy already put there are not sent again."""
        keys.validate_snapshot_name(snapshot)
        disk = self.ctx.get_disk(name)
        require_volume(disk)
        source, target = self.ctx.data_store(disk), self.ctx.other_store(disk)
        if snapshot not in {s["name"] for s in self.snapshots.of(disk)}:
            raise NotFound(f"disk {name!r} has no snapshot {snapshot!r}")

        def copy(progress: Progress) -> None:
            with DiskReplicator(source, target, disk_id_of(disk), config=self.config) as rep:
                rep.copy_snapshot(snapshot)

        return self.ctx.operations.start("copy-snapshot", f"{name}/{snapshot}", copy)
