"""Live migration: a running VM's disk changes host with no I/O error and never two writers.

It follows QEMU's own protocol for storage both hosts reach (DESIGN.md, "Facts about the
programs a hypervisor host uses"):

1. `start`, on the destination host: one record version adds a `migration` block (the VM, the
   source and destination hosts, when it started), and this host starts an *incoming* export
   of the disk (nbd_plugin/incoming.py). QEMU's destination (`-incoming`) connects to it at
   once; it answers the handshake, serves reads from the store and holds every write and
   flush. The source goes on serving with its epoch: nothing is fenced yet.
2. QEMU migrates the guest over its own channel. At completion the source QEMU stops the guest,
   flushes every disk (an NBD flush: in every caching mode, everything acknowledged is durable
   in the store once it returns; a flush that fails fails the migration and the guest stays on
   the source) and inactivates it; then the destination activates and resumes the guest.
3. `switch`, on the destination's first request (its incoming export asks) or on `complete`,
   whichever comes first: one record version moves the attachment here with the next writer
   epoch and drops the migration block, on condition that the block still names this host, so
   of a switchover and a cancel (or a force-attach) exactly one wins. The incoming export then
   opens the volume with that epoch, which fences the source's, and lets the held requests
   through. The source's export sees the newer epoch within its fence check and its host stops
   it, never to restart it (host/supervisor.py). The pause the guest sees is the time from its
   first request to that open: `last_migration.switchover_ms` in the record.

Failure behaviour: `cancel` (on either host, until the switchover) drops the block; the source
never stopped serving, and the destination's incoming export fails what it holds and goes (a
host that learns of it from the record does so within `record_check_seconds`). A destination
that dies leaves the block behind: the source serves on, and a cancel (or the destination's
restart, `resume`) drops it. A source that dies after QEMU's switchover began has flushed
already; the destination's switchover needs nothing from it. An export that cannot take its
epoch (the store is down) leaves the disk attached here, and the supervisor serves it again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from blockstore.control.attachments import AttachmentService
from blockstore.control.context import ControlContext
from blockstore.control.model import DiskKind
from blockstore.control.records import Record
from blockstore.errors import BlockstoreError, Conflict, InvalidArgument, NotFound
from blockstore.format import keys

log = logging.getLogger(__name__)

MIGRATION = "migration"  # the record field of a migration under way
LAST_MIGRATION = "last_migration"  # how the last one ended
_BLOCK_ONLY = ("vm", "from_host", "to_host", "started_at", "state")  # not an attachment's


@dataclass(frozen=True)
class MigrationConfig:
    poll_seconds: float = 0.01  # how often incoming exports are asked whether the VM runs here
    record_check_seconds: float = 1.0  # how often their records are read (a cancel elsewhere)
    activation_timeout_seconds: float = 60.0  # the incoming export's open of its epoch


class MigrationService:
    """Start, complete and cancel live migrations of disks; the destination's watcher."""

    def __init__(
        self,
        context: ControlContext,
        attachments: AttachmentService,
        config: MigrationConfig | None = None,
    ) -> None:
        self.ctx = context
        self.attachments = attachments
        self.config = config or MigrationConfig()
        self._incoming: dict[str, Record] = {}  # disks migrating here: their record at start
        self._lock = threading.Lock()  # guards `_incoming`
        self._switch_lock = threading.Lock()  # one switchover (or cancel) here at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="migration", daemon=True)
        self._watcher.start()

    # -- start ----------------------------------------------------------------------------

    def start(self, name: str, vm: str | None = None) -> Record:
        """Prepare this host to take over `name` from the host serving it to a running VM;
        returns the record, whose migration block says how the destination QEMU connects."""
        if vm is not None:
            keys.validate_disk_id(vm)
        me = self.ctx.host_id
        with self.ctx.attach_lock:
            disk = self.ctx.get_disk(name)
            att, mig = disk.get("attachment"), disk.get(MIGRATION)
            if mig and mig["to_host"] == me and vm in (None, mig["vm"]):
                return self._serve_incoming(disk)  # asked again: the same answer
            self._check_startable(disk, vm)
            assert att is not None
            block = {
                "vm": att["vm"],
                "from_host": att["host"],
                "to_host": me,
                "state": "incoming",
                "started_at": self.ctx.now(),
                "target": att.get("target"),
            }

            def change(rec: Record | None) -> Record:
                rec = self.ctx.visible(rec, name)
                if rec.get("attachment") != att or rec.get(MIGRATION):
                    raise Conflict(f"disk {name!r} changed meanwhile; try again")
                return {**rec, MIGRATION: block}

            return self._serve_incoming(self.ctx.update(name, change))

    def _check_startable(self, disk: Record, vm: str | None) -> None:
        name, att, mig = disk["name"], disk.get("attachment"), disk.get(MIGRATION)
        if disk["kind"] == DiskKind.ephemeral:
            raise InvalidArgument(
                f"disk {name!r} is ephemeral: it lives on one host's local disk and is lost "
                "when its VM moves; it cannot be migrated"
            )
        if not att:
            raise Conflict(
                f"disk {name!r} is not attached: a live migration moves a disk in use; attach "
                "it on this host instead"
            )
        if att["host"] == self.ctx.host_id:
            raise Conflict(f"disk {name!r} is attached on this host already (VM {att['vm']!r})")
        if mig:
            raise Conflict(
                f"disk {name!r} is migrating to host {mig['to_host']} already: complete or "
                "cancel that migration first"
            )
        if vm is not None and vm != att["vm"]:
            raise Conflict(
                f"disk {name!r} is attached to VM {att['vm']!r}, not {vm!r}: a live migration "
                "moves the VM it is attached to"
            )

    def _serve_incoming(self, disk: Record) -> Record:
        """Start (or find) the incoming export and note in the block how it is reached."""
        name, block = disk["name"], disk[MIGRATION]
        try:
            details = self.ctx.exports.serve_incoming(self._as_here(disk))
        except BlockstoreError:
            self._drop_block(disk, "the incoming export did not start")
            raise

        def change(rec: Record | None) -> Record:
            rec = self.ctx.visible(rec, name)
            if (rec.get(MIGRATION) or {}).get("started_at") != block["started_at"]:
                raise Conflict(f"the migration of disk {name!r} was cancelled meanwhile")
            return {**rec, MIGRATION: {**block, **details}}

        disk = self.ctx.update(name, change)
        with self._lock:
            self._incoming[name] = disk
        self._wake.set()
        return disk

    def _as_here(self, disk: Record) -> Record:
        """The record as this host's export sees it: attached here (no epoch yet)."""
        block = disk[MIGRATION]
        here = {"vm": block["vm"], "host": self.ctx.host_id, "target": block.get("target")}
        return {**disk, "attachment": here}

    # -- switchover -----------------------------------------------------------------------

    def complete(self, name: str) -> Record:
        """The switchover now, if the destination's first request has not made it yet (call
        it once QEMU reports the migration completed); the disk's record afterwards."""
        return self.switch(name)

    def switch(self, name: str) -> Record:
        """Make this host the writer of a disk migrating here (see the module docstring)."""
        me = self.ctx.host_id
        with self._switch_lock:
            began = time.monotonic()
            disk = self.ctx.get_disk(name)
            block = disk.get(MIGRATION)
            att = disk.get("attachment") or {}
            if not block and att.get("host") == me and name not in self._incoming:
                return disk  # switched already
            if not block or block["to_host"] != me:
                self._forget(name)
                raise Conflict(f"no live migration of disk {name!r} to this host is under way")
            ended = {k: block[k] for k in _BLOCK_ONLY}
            # The incoming export's socket, snippets and pid are the attachment's from now on.
            reach = {k: v for k, v in block.items() if k not in _BLOCK_ONLY or k == "vm"}
            new = {**reach, "host": me, "attached_at": self.ctx.now(),
                   "migrated_from": block["from_host"], "caching": disk["caching"]}  # fmt: skip

            def still_coming(rec: Record) -> Record:
                if (rec.get(MIGRATION) or {}).get("started_at") != block["started_at"]:
                    raise Conflict(f"the migration of disk {name!r} was cancelled meanwhile")
                done = {**ended, "state": "completed", "switched_at": self.ctx.now()}
                return {**rec, MIGRATION: None, LAST_MIGRATION: done}

            try:
                disk = self.attachments.issue_epoch(disk, still_coming, new)
            except Conflict:
                self._forget(name)
                raise
            details = self._hand_over(disk)
            pause_ms = round((time.monotonic() - began) * 1000, 1)
            self._forget(name, drop=False)
            disk = self.attachments.record_served(disk, details)
            log.info("disk %s migrated here from %s in %.1f ms", name, block["from_host"], pause_ms)
            return self._note(name, switchover_ms=pause_ms)

    def _hand_over(self, disk: Record) -> dict[str, Any]:
        try:
            return self.ctx.exports.hand_over(disk, self.config.activation_timeout_seconds)
        except BlockstoreError:
            # The record names this host with the new epoch, which the export did not take:
            # serve the disk again as after a crash (the supervisor issues a further epoch).
            self._forget(disk["name"])
            self.ctx.exports.watch(disk)
            raise

    def _note(self, name: str, **fields: Any) -> Record:
        def change(rec: Record | None) -> Record:
            rec = self.ctx.visible(rec, name)
            return {**rec, LAST_MIGRATION: {**(rec.get(LAST_MIGRATION) or {}), **fields}}

        return self.ctx.update(name, change)

    # -- cancel ---------------------------------------------------------------------------

    def cancel(self, name: str) -> Record:
        """Call a migration off before its switchover (on either host): the source serves on,
        the destination's incoming export fails what it holds and stops."""
        with self._switch_lock:
            disk = self.ctx.get_disk(name)
            block = disk.get(MIGRATION)
            if not block:
                self._forget(name)
                att = disk.get("attachment") or {}
                where = f"; the disk is attached on host {att['host']}" if att else ""
                raise Conflict(f"no live migration of disk {name!r} is under way{where}")
            disk = self._drop_block(disk, "cancelled")
            self._forget(name)
            return disk

    def _drop_block(self, disk: Record, why: str) -> Record:
        name, block = disk["name"], disk[MIGRATION]

        def change(rec: Record | None) -> Record:
            rec = self.ctx.visible(rec, name)
            if (rec.get(MIGRATION) or {}).get("started_at") != block["started_at"]:
                att = rec.get("attachment") or {}
                raise Conflict(
                    f"the migration of disk {name!r} ended meanwhile; the disk is attached on "
                    f"host {att.get('host')}"
                )
            ended = {k: block[k] for k in _BLOCK_ONLY}
            done = {**ended, "state": "cancelled", "cancelled_at": self.ctx.now(), "why": why}
            return {**rec, MIGRATION: None, LAST_MIGRATION: done}

        return self.ctx.update(name, change)

    def _forget(self, name: str, *, drop: bool = True) -> None:
        """This host no longer expects `name`: with `drop`, its incoming export goes."""
        with self._lock:
            disk = self._incoming.pop(name, None)
        if drop and disk is not None:
            self.ctx.exports.drop_incoming(self._as_here(disk))

    # -- watching, resuming ---------------------------------------------------------------

    def _watch(self) -> None:
        checked = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                pending = list(self._incoming.items())
            if not pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for name, disk in pending:
                if self.ctx.exports.handover_wanted(self._as_here(disk)):
                    self._try(self.switch, name)
            if time.monotonic() - checked > self.config.record_check_seconds:
                checked = time.monotonic()
                for name, _ in pending:
                    self._try(self._check_record, name)
            self._stop.wait(self.config.poll_seconds)

    def _try(self, call: Any, name: str) -> None:
        try:
            call(name)
        except BlockstoreError as exc:
            log.warning("live migration of disk %s: %s", name, exc)
        except Exception:  # a bug must not stop the watcher of every other disk
            log.exception("live migration of disk %s", name)

    def _check_record(self, name: str) -> None:
        """Drop the incoming export of a migration called off elsewhere (a cancel on the
        source host, a force-attach, a delete)."""
        with self._switch_lock:
            if name not in self._incoming:
                return
            try:
                block = self.ctx.get_disk(name).get(MIGRATION)
            except NotFound:
                block = None
            started = self._incoming[name][MIGRATION]["started_at"]
            if not block or block["to_host"] != self.ctx.host_id or block["started_at"] != started:
                log.warning("the live migration of disk %s here was called off", name)
                self._forget(name)

    def resume(self) -> None:
        """At start-up: migrations to this host died with the process that started them (its
        exports went with it, and with them the destination QEMU's connection): drop them."""
        for name, disk in self.ctx.disks.items():
            block = disk.get(MIGRATION)
            if block and block["to_host"] == self.ctx.host_id and disk.get("state") == "ready":
                try:
                    self._drop_block(disk, "the destination host restarted")
                except BlockstoreError as exc:
                    log.warning("dropping the migration of disk %s failed: %s", name, exc)

    def migrations(self, served: dict[str, Record]) -> list[tuple[str, str, Record]]:
        """(disk, role, block) of every migration this host takes part in, for /metrics, from
        the records of the disks it serves (as source, or as destination with an incoming
        export)."""
        me, out = self.ctx.host_id, []
        for name, disk in sorted(served.items()):
            block = disk.get(MIGRATION)
            if block and me in (block["to_host"], block["from_host"]):
                out.append((name, "destination" if block["to_host"] == me else "source", block))
        return out

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._watcher.join(5)
