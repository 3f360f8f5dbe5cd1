"""Consistency groups: one crash-consistent snapshot of several disks at once.

A group snapshot is a record (`control/groups/<name>`) naming its member disks, each holding an
ordinary snapshot with the group's name; a member's snapshot clones, diffs and is kept by GC
like any other. What makes it a group is the cut: every write any member acknowledged before
the call is in the group, and no member holds a write acknowledged after the cut.

The cut (`_cut`): every member attached on this host is frozen through its export
(blockstore/host/contract.py, `Freeze`): it acknowledges no more writes, waits for those in
flight and flushes. With all of them frozen, each member is snapshotted; then all are thawed.
A guest's write that depends on another disk's write (a log record after its data) is issued
only after that write was acknowledged, so it is either before the cut with its dependency or
held until after it. Detached members take no writes and need no freeze. A member attached on
another host would need that host to freeze it at the same instant: refused (409), because no
protocol through the bucket makes two hosts' freezes one cut.

Failure: a member that does not freeze in time, or one that thawed itself before its snapshot
was taken (its freeze outlasted `Freeze.MAX_SECONDS`), fails the call; the member snapshots
taken are deleted and nothing is recorded. The guest's writes waited at most the freeze time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from blockstore.control.context import ControlContext
from blockstore.control.model import (
    DISK_ID_FIELD,
    DiskKind,
    DiskSpec,
    disk_id_of,
    require_volume,
)
from blockstore.control.records import Record, RecordStore
from blockstore.control.snapshots import SnapshotService
from blockstore.engine.volume import Volume
from blockstore.errors import BlockstoreError, Conflict, InvalidArgument, NotFound, Unavailable
from blockstore.format import keys
from blockstore.host.contract import Freeze

FREEZE_WAIT_SECONDS = 5.0  # members must all be frozen within this, or the call fails
MAX_MEMBERS = 64


class GroupService:
    """Group snapshots of the disks in `context`'s records."""

    def __init__(self, context: ControlContext, snapshots: SnapshotService) -> None:
        self.ctx = context
        self.snapshots = snapshots
        self.records = RecordStore(context.store, keys.CONTROL_GROUPS_PREFIX, context.clock)

    def _members(self, disk_names: list[str]) -> list[Record]:
        if not 1 <= len(disk_names) <= MAX_MEMBERS:
            raise InvalidArgument(f"a group has 1 to {MAX_MEMBERS} disks")
        if len(set(disk_names)) != len(disk_names):
            raise InvalidArgument("a disk appears twice in the group")
        disks = []
        for name in disk_names:
            disk = self.ctx.get_disk(name)
            require_volume(disk)
            attachment = disk.get("attachment")
            if attachment and attachment["host"] != self.ctx.host_id:
                raise Conflict(
                    f"disk {name!r} is attached on host {attachment['host']}: a group snapshot "
                    "takes disks attached on the host whose API is called, or detached ones "
                    "(two hosts cannot freeze at one instant); call that host's API"
                )
            disks.append(disk)
        return disks

    def create(self, name: str, disk_names: list[str]) -> tuple[Record, bool]:
        """Take the group snapshot `name` of the disks; returns (group, created). The same
        request again returns the group; another for an existing name is a Conflict."""
        keys.validate_snapshot_name(name)
        existing = self.records.find(name)
        if existing is not None:
            if sorted(m["disk"] for m in existing["members"]) != sorted(disk_names):
                raise Conflict(f"group snapshot {name!r} exists with other disks")
            return existing, False
        disks = self._members(disk_names)
        for disk in disks:
            if any(s["name"] == name for s in self.snapshots.of(disk)):
                raise Conflict(f"disk {disk['name']!r} already has a snapshot {name!r}")
        self._cut(name, disks)
        record: Record = {
            "name": name,
            "created": self.ctx.now(),
            "members": [{"disk": d["name"], DISK_ID_FIELD: disk_id_of(d)} for d in disks],
        }
        try:
            self.records.create(name, record)
        except Conflict:
            self._drop(name, disks)
            raise
        return record, True

    def _cut(self, name: str, disks: list[Record]) -> None:
        """Freeze the attached members, snapshot every member, thaw (module docstring)."""
        frozen = [
            Freeze(self.ctx.exports.socket_of(d))
            for d in disks
            if d.get("attachment") and self.ctx.exports.serving(d)
        ]
        token = secrets.token_hex(8)
        taken: list[Record] = []
        try:
            for f in frozen:
                f.ask(token)
            deadline = time.monotonic() + FREEZE_WAIT_SECONDS
            while not all(f.is_frozen(token) for f in frozen):
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"group snapshot {name!r}: a member did not hold its writes within "
                        f"{FREEZE_WAIT_SECONDS:.0f} s; nothing was taken"
                    )
                time.sleep(0.005)
            for disk in disks:
                vol = Volume.open(self.ctx.data_store(disk), disk_id_of(disk), writable=False)
                try:
                    vol.create_snapshot(name)
                finally:
                    vol.close()
                taken.append(disk)
            if any(f.thawed_early() for f in frozen):
                raise Unavailable(
                    f"group snapshot {name!r}: a member's freeze outlasted its limit before "
                    "every member was taken; nothing was kept, try again"
                )
        except BlockstoreError:
            self._drop(name, taken)
            raise
        finally:
            for f in frozen:
                f.thaw()

    def _drop(self, name: str, disks: list[Record]) -> None:
        for disk in disks:
            try:
                self.snapshots.delete(disk["name"], name)
            except NotFound:
                continue

    # -- read, delete, clone, changes -----------------------------------------------------

    def list_groups(self) -> list[Record]:
        return sorted((g for _n, g in self.records.items()), key=lambda g: g["name"])

    def get(self, name: str) -> Record:
        keys.validate_snapshot_name(name)
        group = self.records.find(name)
        if group is None:
            raise NotFound(f"group snapshot {name!r} does not exist")
        return group

    def delete(self, name: str) -> None:
        """Delete the members' snapshots, then the record; Conflict while a disk made from a
        member exists (nothing is deleted then)."""
        group = self.get(name)
        disks = [self.ctx.get_disk(m["disk"]) for m in group["members"]]
        for disk in disks:
            for snap in self.snapshots.of(disk):
                if snap["name"] == name and snap["clones"]:
                    raise Conflict(
                        f"group snapshot {name!r}: disks {', '.join(snap['clones'])} were "
                        f"created from member {disk['name']!r}; delete those first"
                    )
        self._drop(name, disks)
        self.records.delete(name)

    def clone(
        self, name: str, prefix: str, create: Callable[[DiskSpec], tuple[Record, bool]]
    ) -> list[Record]:
        """New disks `<prefix>-<member>` from every member (`create` makes one disk from a
        DiskSpec); the group's cut holds across them."""
        group = self.get(name)
        out = []
        for m in group["members"]:
            disk = self.ctx.get_disk(m["disk"])
            kind = DiskKind(disk["kind"])
            spec = DiskSpec(
                name=keys.validate_disk_id(f"{prefix}-{m['disk']}"),
                size_bytes=None,
                kind=kind,
                caching=None,
                source_snapshot=f"{m['disk']}/{name}",
            )
            out.append(create(spec)[0])
        return out

    def changes(self, name: str, since: str | None) -> dict[str, Any]:
        """Per member, the ranges that differ between group `since` (or an empty disk) and
        this group."""
        group = self.get(name)
        if since is not None:
            self.get(since)
        members = [self.snapshots.changed_ranges(m["disk"], name, since) for m in group["members"]]
        return {"group": name, "since": since, "members": members}
