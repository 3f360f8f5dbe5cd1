"""Attachments: which VM on which host a disk is served to, and the writer epoch it runs with.

Ownership: a disk record carries `writer_epoch`, the last writer epoch issued for it, and its
attachment carries the epoch its export runs with. Every start of an export (attach, a restart
after a crash, the service resuming, a change of region) first creates a new record version that
issues the next epoch (`issue_epoch`), conditionally on who holds the disk; record versions are
created with If-None-Match, so of a force-attach on one host and a restart on another exactly
one wins, and the epochs the volume sees are ordered as the record versions are. The export's
open of its epoch fences every older writer, wherever it runs. A host that lost the disk can
never fence its new owner (docs/format.md, "Ownership").

This is the `Authority` the export supervisor asks before it restarts an export
(`renew_attachment`) and tells once it runs (`record_served`): blockstore/host/supervisor.py.

Failure behaviour: an attach whose export fails to start puts the previous attachment back
(`_put_back`; the issued epoch stays used). A detach succeeds only when no acknowledged write is
left in this host's journal (Unavailable otherwise: the disk stays attached here, its journal
kept). A record that changed meanwhile (another host attached) is a Conflict.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import string
from collections.abc import Callable
from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import DiskKind, disk_id_of
from blockstore.control.records import Record
from blockstore.engine import volume
from blockstore.errors import BlockstoreError, Conflict, NotFound, Unavailable
from blockstore.format import keys

log = logging.getLogger(__name__)


class _NotHeld(Exception):
    """This host no longer holds the disk with the epoch its export had."""


class AttachmentService:
    """Attach, detach and serve this host's disks; the supervisor's `Authority`."""

    def __init__(self, context: ControlContext) -> None:
        self.ctx = context

    # -- issuing epochs -------------------------------------------------------------------

    def issue_epoch(self, disk: Record, holds: Callable[[Record], Record], new: Record) -> Record:
        """Create the record version that makes `new` the attachment of `disk`, with the next
        writer epoch, if `holds(current)` accepts the current record (it raises to refuse). The
        epoch is above the last one issued and above every epoch claimed in the disk's log (a
        detached-disk open claims one without the record), so the export's claim of it is the
        newest; ordering by record version orders the epochs."""
        name = disk["name"]
        top = 0
        if disk["kind"] != DiskKind.ephemeral:
            top = volume.top_epoch(self.ctx.data_store(disk), disk_id_of(disk))

        def change(rec: Record | None) -> Record:
            rec = holds(self.ctx.visible(rec, name))
            epoch = max(int(rec.get("writer_epoch") or 0), top) + 1
            return {**rec, "writer_epoch": epoch, "attachment": {**new, "epoch": epoch}}

        return self.ctx.update(name, change)

    def renew_attachment(self, disk: Record) -> Record | None:
        """Before an export of `disk` starts again (it died, it was fenced, the service
        restarted): a new writer epoch for this host's attachment, if the record still names
        this host and the epoch that export had; None when another holder (or none) has the
        disk now, and the export must not come back."""
        name, old = disk["name"], disk.get("attachment") or {}

        def still_ours(rec: Record) -> Record:
            att = rec.get("attachment")
            if not att or att["host"] != self.ctx.host_id or att.get("epoch") != old.get("epoch"):
                raise _NotHeld
            return rec

        try:
            current = self.ctx.get_disk(name)
            att = current.get("attachment")
            if not att or att["host"] != self.ctx.host_id:
                return None
            # The same attachment, with a new epoch; the pid goes until the export runs again.
            fresh = {k: v for k, v in att.items() if k not in ("epoch", "pid")}
            return self.issue_epoch(current, still_ours, fresh)
        except (_NotHeld, NotFound):
            return None

    # -- serving --------------------------------------------------------------------------

    def serve(self, disk: Record) -> Record:
        """Start (or restart) this host's export of an attached disk with the epoch its record
        issued; that epoch's open fences any older writer of the disk, wherever it runs."""
        return self.record_served(disk, self.ctx.exports.serve(disk))

    def record_served(self, disk: Record, details: dict[str, Any]) -> Record:
        """Note in the record how the export of `disk` (with the epoch its attachment has) is
        reached, and the caching mode it runs in; Conflict if the attachment changed since."""
        epoch = disk["attachment"].get("epoch")

        def change(rec: Record | None) -> Record:
            rec = self.ctx.visible(rec, disk["name"])
            att = rec.get("attachment") or {}
            if att.get("host") != self.ctx.host_id or att.get("epoch") != epoch:
                raise Conflict(f"disk {disk['name']!r} was attached elsewhere meanwhile")
            return {**rec, "attachment": {**att, **details, "caching": disk["caching"]}}

        return self.ctx.update(disk["name"], change)

    def ensure_served(self, name: str) -> Record:
        """The record of a disk attached here, once its export runs (started again with a new
        epoch if it had died or been fenced, and this host still holds the disk)."""
        for _ in range(3):
            self.ctx.exports.check(name)  # waits for, or does, the watcher's restart
            disk = self.ctx.get_disk(name)
            if self.ctx.exports.serving(disk):
                return disk
            attachment = disk.get("attachment")
            if not attachment or attachment["host"] != self.ctx.host_id:
                break
            renewed = self.renew_attachment(disk)
            if renewed is not None:
                return self.serve(renewed)
        raise Conflict(f"disk {name!r} was attached elsewhere meanwhile")

    def serve_again(self, disk: Record) -> Record:
        """Serve an attached disk from where its record now says its data is (after a failover
        or failback), with a new epoch of that store."""
        renewed = self.renew_attachment(disk)
        if renewed is None:
            raise Conflict(f"disk {disk['name']!r} was attached elsewhere meanwhile")
        return self.serve(renewed)

    def resume(self, disk: Record) -> bool:
        """At start-up, for a disk this host had attached: serve it again with a newly issued
        epoch (False when another host took it meanwhile, or it cannot be served now: the
        export watcher then tries again)."""
        renewed: Record | None = disk
        try:
            renewed = self.renew_attachment(disk)
            if renewed is not None:
                self.serve(renewed)
                return True
        except BlockstoreError as exc:
            log.error("disk %s is attached here, not served yet: %s", disk["name"], exc)
            if renewed is not None:
                self.ctx.exports.watch(renewed)
        return False

    def disk_stats(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, counters) of every disk this host serves, for /metrics."""
        out = []
        for disk in self.ctx.exports.served_disks():
            stats = self.ctx.exports.stats(disk)
            if stats is not None:
                out.append((disk["name"], stats))
        return out

    # -- attach ---------------------------------------------------------------------------

    def attach(self, name: str, vm: str, *, force: bool = False) -> Record:
        """Attach the disk to `vm` on this host and serve it; returns the attachment.

        With `force`, a disk attached elsewhere is taken over: the record names this host with
        a new writer epoch, and the export's open fences the old writer (its next commit fails;
        its export then fails every request and is stopped by its host). If serving fails, the
        record's attachment is put back as it was."""
        keys.validate_disk_id(vm)
        with self.ctx.attach_lock:
            disk = self.ctx.get_disk(name)
            current = disk.get("attachment")
            if current and current["vm"] == vm and current["host"] == self.ctx.host_id:
                return dict(self.ensure_served(name)["attachment"])
            if disk.get("reverting"):
                raise Conflict(
                    f"disk {name!r} is being reverted to restore point {disk['reverting']}: "
                    "attach it once the revert operation has finished"
                )
            if current and not force:
                raise Conflict(
                    f"disk {name!r} is attached to VM {current['vm']!r} on host "
                    f"{current['host']}: detach it there first, or attach with force: true "
                    "(which fences the old writer)"
                )
            if current and current["host"] == self.ctx.host_id:
                self.ctx.exports.stop(disk)  # another VM of this host: its writes go first
            attachment = {
                "vm": vm,
                "host": self.ctx.host_id,
                "attached_at": self.ctx.now(),
                "target": self._free_target(name, vm, disk["kind"]),
            }

            def unchanged(rec: Record) -> Record:
                if rec.get("attachment") != current:
                    raise Conflict(f"disk {name!r} was attached elsewhere meanwhile; try again")
                # A force-attach wins over a live migration under way: it is called off.
                return {**rec, "migration": None} if rec.get("migration") else rec

            disk = self.issue_epoch(disk, unchanged, attachment)
            try:
                return self.serve(disk)["attachment"]
            except BlockstoreError:
                self._put_back(disk, current)
                raise

    def _free_target(self, name: str, vm: str, kind: str) -> str:
        """The libvirt target device for a new attachment to `vm`: `vda` for an OS disk when
        free, else the first of vdb, vdc, ... that no other disk attached to the VM has. It is
        kept in the attachment, so it stays the same for the attachment's life. (Every record
        is read: the bucket keeps no index by VM, and a VM's disks may be attached on other
        hosts' records.)"""
        taken = {
            (d.get("attachment") or {}).get("target")
            for n, d in self.ctx.disks.items()
            if n != name and (d.get("attachment") or {}).get("vm") == vm
        }
        letters = string.ascii_lowercase
        candidates = itertools.chain(
            ["vda"] if kind == DiskKind.os else [],
            (f"vd{c}" for c in letters[1:]),
            (f"vd{a}{b}" for a in letters for b in letters),  # as Linux names them after vdz
        )
        return next(t for t in candidates if t not in taken)

    def _put_back(self, disk: Record, previous: Record | None) -> None:
        """Undo a failed attach of `disk` (the record it made): its attachment goes, the one
        before comes back (the issued epoch stays used). Nothing changes if someone attached
        meanwhile."""
        name, epoch = disk["name"], disk["attachment"]["epoch"]

        def change(rec: Record | None) -> Record:
            rec = self.ctx.visible(rec, name)
            if (rec.get("attachment") or {}).get("epoch") != epoch:
                return rec
            return {**rec, "attachment": previous}

        # An export that did start serves no VM yet (the attach did not return): it goes.
        self.ctx.exports.stop(disk, graceful=False)
        with contextlib.suppress(BlockstoreError):
            self.ctx.disks.update(name, change)

    # -- detach ---------------------------------------------------------------------------

    def detach(self, name: str, *, force: bool = False) -> Record:
        """Make everything acknowledged durable, stop the export, release the writer.

        Refused (Conflict) while NBD clients are connected, unless `force`, which pulls the
        disk out from under a running guest (its next I/O fails). Whatever mode the export
        runs in, it is flushed through NBD before it stops (an export that died is started
        again first, and replays its journal); the detach succeeds only when no acknowledged
        write is left in this host's journal. Otherwise it fails and the disk stays attached
        here, journal kept, to be detached again once the store answers."""
        with self.ctx.attach_lock:
            disk = self.ctx.get_disk(name)
            if not disk.get("attachment"):
                return disk
            self._check_detachable(disk, force)
            if disk["kind"] != DiskKind.ephemeral:
                disk = self.ensure_served(name)
                self.ctx.exports.flush(disk)
            self.ctx.exports.stop(disk)
            if disk["kind"] != DiskKind.ephemeral:
                self._check_journal_empty(disk)

            def change(rec: Record | None) -> Record:
                rec = self.ctx.visible(rec, name)
                if (rec.get("attachment") or {}).get("host") != self.ctx.host_id:
                    raise Conflict(f"disk {name!r} was attached elsewhere meanwhile")
                return {**rec, "attachment": None}

            return self.ctx.update(name, change)

    def _check_detachable(self, disk: Record, force: bool) -> None:
        """Conflict when the disk is attached on another host, migrating, or in use and not
        `force`."""
        name, attachment = disk["name"], disk["attachment"]
        if disk.get("migration"):
            raise Conflict(
                f"disk {name!r} is migrating live to host {disk['migration']['to_host']}: "
                f"cancel the migration first (DELETE /v1/disks/{name}/migration)"
            )
        if attachment["host"] != self.ctx.host_id:
            raise Conflict(
                f"disk {name!r} is attached on host {attachment['host']}: detach it there, "
                "or attach it here with force: true"
            )
        clients = self.ctx.exports.clients(disk)
        if clients and not force:
            raise Conflict(
                f"disk {name!r} is in use: {clients} NBD client(s) connected (VM "
                f"{attachment['vm']!r}). Shut the VM down or unplug the disk in the guest "
                "first; detach with force: true pulls it out from under the running guest, "
                "whose next I/O fails"
            )

    def _check_journal_empty(self, disk: Record) -> None:
        """Unavailable when acknowledged writes are left only in this host's journal."""
        left = self.ctx.exports.journal_records(disk)
        if left:
            raise Unavailable(
                f"disk {disk['name']!r}: {left} acknowledged writes are still only in this "
                "host's write journal (the store did not take them): the disk stays "
                "attached here; detach again once the store answers"
            )
