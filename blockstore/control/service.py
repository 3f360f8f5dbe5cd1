"""`ControlService`: one host's control plane over one bucket, wired from its sub-services.

Place: the API (`api/`) is a thin adapter over it (the CLI talks to the API over HTTP); it
imports no web framework. Its parts, each a module of this package:

- `context`: what they all share: the stores of both regions, the disk records
  (`records`: versioned, created with If-None-Match), this host's export supervisor
  (blockstore/host/supervisor.py), the clock, the attach lock;
- `disks`: create, show, resize, delete; `snapshots`: snapshots and changed ranges;
  `points`: restore points (any flushed state), clones of them, revert, retention;
  `groups`: crash-consistent snapshots of several disks at once; `backups`: snapshots copied
  to other S3 stores, and disks restored from them; `encryption`: KEK status and rotation;
- `attachments`: attach, detach and the writer epochs that make exactly one host a disk's
  writer; it is the supervisor's `Authority`;
- `migration`: live migration of a disk in use to this host, with QEMU's protocol;
- `geo`: replication of grs disks and the changes of region (blockstore/geo/ does the copying);
- `operations`: long-running work, recorded in the bucket.

Records live in the bucket and nowhere else, so any number of `blockstore serve` processes
(hosts) over one bucket see the same disks, and a restarted host finds what it had attached and
serves it again (`resume`).

Failure behaviour: a request that cannot be met raises from the `blockstore.errors` hierarchy
with a message that says what to do (NotFound, Conflict, InvalidArgument); store outages raise
Unavailable. A crash part-way leaves records that say what was under way: a disk in state
`deleting` is deleted again at the next start, an attachment of this host is served again.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.control.attachments import AttachmentService
from blockstore.control.backups import BackupService
from blockstore.control.context import ControlContext, Exports
from blockstore.control.disks import DiskService
from blockstore.control.encryption import EncryptionService
from blockstore.control.geo import GeoService
from blockstore.control.groups import GroupService
from blockstore.control.holders import HolderWatch
from blockstore.control.migration import MigrationConfig, MigrationService
from blockstore.control.points import PointService
from blockstore.control.records import Record
from blockstore.control.snapshots import SnapshotService
from blockstore.geo.config import ReplicationConfig
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)
RESUME_AT_ONCE = 8  # exports started side by side at start-up (each waits on the store)


class ControlService:
    """Disks and what can be done to them, for one host over one bucket."""

    def __init__(
        self,
        store: ObjectStore,
        host_id: str,
        exports: Exports,
        *,
        clock: Clock = SYSTEM_CLOCK,
        secondary: ObjectStore | None = None,
        replication_config: ReplicationConfig | None = None,
        primary_hold_seconds: float = 30.0,
        migration_config: MigrationConfig | None = None,
        backups: dict[str, ObjectStore] | None = None,
    ) -> None:
        self.context = ControlContext(
            store,
            host_id,
            exports,
            clock=clock,
            secondary=secondary,
            replication_config=replication_config or ReplicationConfig(),
            primary_hold_seconds=primary_hold_seconds,
        )
        self.records = self.context.disks
        self.operations = self.context.operations
        self.snapshots = SnapshotService(self.context)
        self.attachments = AttachmentService(self.context)
        self.migrations = MigrationService(self.context, self.attachments, migration_config)
        self.geo = GeoService(self.context, self.attachments, self.snapshots)
        self.points = PointService(self.context, self.snapshots)
        self.disks = DiskService(self.context, self.snapshots, self.geo, self.points)
        self.groups = GroupService(self.context, self.snapshots)
        self.backups = BackupService(self.context, backups or {})
        self.encryption = EncryptionService(self.context)
        self.replication = self.geo.replication  # None without a secondary region
        self.holders = HolderWatch(self.context)  # started by `resume`
        exports.authority = self.attachments

    def resume(self) -> list[str]:
        """At start-up: serve again every disk this host had attached (each with a newly
        issued epoch; a disk another host took meanwhile is left alone), finish deletes (in a
        new operation; the interrupted one is marked failed), then watch the records for disks
        taken elsewhere. Returns the disks served."""
        for op_id in self.operations.tidy():
            log.warning("operation %s was interrupted by a restart", op_id)
        self.migrations.resume()
        ours, host = [], self.context.host_id
        for name, disk in self.records.items():
            if disk.get("state") == "deleting":
                self.operations.start("delete-disk", name, self.disks.destroyer(disk))
                continue
            attachment = disk.get("attachment")
            if disk.get("state") == "ready" and attachment and attachment["host"] == host:
                ours.append(disk)
        with ThreadPoolExecutor(RESUME_AT_ONCE, thread_name_prefix="resume") as pool:
            done = list(pool.map(self.attachments.resume, ours))
        self.holders.start()
        return [disk["name"] for disk, served in zip(ours, done, strict=True) if served]

    def migrations_here(self) -> list[tuple[str, str, Record]]:
        """For /metrics: the live migrations of the disks this host serves, from one listing
        of the records (`HolderWatch.records`), not a read of every record in the bucket."""
        return self.migrations.migrations(self.holders.records())

    def close(self) -> None:
        """Stop the control plane's own threads (the exports are the supervisor's)."""
        self.holders.close()
        self.migrations.close()


def host_id_of(home: Path) -> str:
    """This host's id, made once and kept in `<home>/host-id`."""
    path = home / "host-id"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    host = "h" + secrets.token_hex(6)
    path.write_text(host + "\n")
    return host
