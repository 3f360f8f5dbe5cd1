"""`ExportSupervisor`: this host's nbdkit processes, one per attached disk, kept running.

Place: used by `ControlService` (control/service.py) for the disks attached on this host; it
starts exports through `host/export.py`. Layout under the service home:

    <home>/run/                 0700; one Unix socket per export (<volume-id>.sock) and its log
    <home>/cache/<volume-id>/   the host cache of a readonly/readwrite disk (journal included)
    <home>/ephemeral/<id>.img   an ephemeral (resource) disk: a sparse local file, never uploaded
    <home>/kek/                 0700; the local key-encryption keys of encrypted disks

Ownership (DESIGN.md, "Ownership, stated as invariants"): every export runs with the writer
epoch its disk record issued to this host's attachment. A watcher thread looks at every export
each `check_interval`: one whose nbdkit died, or that reports itself fenced, is restarted only
after the control plane's `authority` has renewed the attachment in the bucket (the record still
names this host with the epoch the export ran with; a new epoch is issued in the same record
version). When the record names another holder, the export is stopped and forgotten, never
restarted: a fenced host cannot take the disk back. A journal the dead export left is replayed by
the restarted one only if its epoch still held the log (blockstore/cache/journal.py).
One export per disk per host at any moment: starting, stopping and restarting a disk's export
happen under that disk's lock, and an export removes only the socket it created itself, so the
socket an attach returned exists until that export is stopped. Exports die with the service
(nbdkit --exit-with-parent) and are started again when it restarts.

An *incoming* export (a live migration's destination) holds no epoch and is never restarted or
fenced here; `hand_over` makes it the writer. What each export is given and writes back (size
requests, QoS caps, stats, read repair, activation) is `host/contract.py`'s.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from blockstore.cache.journal import journal_bytes, read_journal
from blockstore.errors import BlockstoreError, Unavailable
from blockstore.host import contract
from blockstore.host.connect import connection_details, nbd_connection, restrict_run_dir
from blockstore.host.export import EphemeralExport, Export, ExportConfig, activate
from blockstore.store.s3 import S3Config

__all__ = ["Authority", "EphemeralExport", "ExportSupervisor", "SupervisorConfig"]

log = logging.getLogger("blockstore.host.export")


class Authority(Protocol):
    """The control plane, as the watcher asks it before and after it restarts an export."""

    def renew_attachment(self, disk: dict[str, Any]) -> dict[str, Any] | None:
        """The disk record with a newly issued writer epoch if this host still holds the disk
        with the epoch `disk` has, else None (the export is then stopped, not restarted)."""

    def record_served(self, disk: dict[str, Any], details: dict[str, Any]) -> None:
        """Note in the record how the restarted export is reached (socket, pid...)."""


LOST_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class SupervisorConfig:
    home: Path
    s3: S3Config
    retry_seconds: float = 30.0
    cache_size: str = "1G"
    check_interval: float = 1.0
    # Whose members (the hypervisor's user) may connect to the export sockets; None: root alone.
    socket_group: int | None = None
    fence_check_seconds: float = 1.0  # how often each export looks for a newer writer
    upload_after_seconds: float = 1.0  # readwrite: see ExportConfig.upload_after
    secondary: S3Config | None = None  # a grs disk that failed over is served from here


class ExportSupervisor:
    """Starts, stops, flushes and watches the exports of this host."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.run_dir = config.home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        restrict_run_dir(config.home, self.run_dir, config.socket_group)
        (config.home / "cache").mkdir(mode=0o700, exist_ok=True)
        self._exports: dict[str, Export] = {}
        self._disks: dict[str, dict[str, Any]] = {}  # the record each export was started from
        self._lock = threading.Lock()  # guards the two maps and `_disk_locks`
        self._disk_locks: dict[str, threading.RLock] = {}
        self.authority: Authority | None = None  # set by the control plane
        self.restarts = 0
        self.dropped = 0  # exports stopped because another holder took the disk
        # Disks whose export was stopped because the record named another holder, with when:
        # asked about again for LOST_GRACE_SECONDS, since a force-attach that fails puts the
        # record back as it was, and then this host serves the disk again.
        self._lost: dict[str, tuple[dict[str, Any], float]] = {}
        # nbdkit runs with --exit-with-parent, which Linux ties to the *thread* that forked it:
        # every export is started from this one long-lived thread, never from a request thread.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-spawn")
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="export-watch", daemon=True)
        self._watcher.start()

    def _disk_lock(self, name: str) -> threading.RLock:
        with self._lock:
            return self._disk_locks.setdefault(name, threading.RLock())

    def socket_of(self, disk: dict[str, Any]) -> Path:
        return self.run_dir / f"{disk['volume_id']}.sock"

    def _image_of(self, disk: dict[str, Any]) -> Path:  # an ephemeral disk's
        return self.config.home / "ephemeral" / f"{disk['volume_id']}.img"

    def _cache_dir_of(self, disk: dict[str, Any]) -> Path:
        return self.config.home / "cache" / disk["volume_id"]

    def s3_of(self, disk: dict[str, Any]) -> S3Config:
        """The store a disk is served from: its record says which region is primary now."""
        if disk.get("primary", "primary") == "secondary":
            if self.config.secondary is None:
                raise Unavailable(
                    f"disk {disk['name']!r} failed over to the secondary region, and this host "
                    "has no secondary store configured (BLOCKSTORE_SECONDARY_*)"
                )
            return self.config.secondary
        return self.config.s3

    def _make(self, disk: dict[str, Any], *, incoming: bool = False) -> Export:
        sock = self.socket_of(disk)
        if disk["kind"] == "ephemeral":
            group = self.config.socket_group is not None
            config = ExportConfig(disk["volume_id"], sock, self.config.s3, socket_group=group)
            return EphemeralExport.over(config, self._image_of(disk), disk["size_bytes"])
        contract.write_qos(contract.qos_path(sock), disk.get("qos") or {})  # see set_qos
        config = ExportConfig(
            disk_id=disk["volume_id"],
            socket=sock,
            s3=self.s3_of(disk),
            cache_mode=disk["caching"],
            # In every mode: a journal an earlier export left there is dealt with first.
            cache_dir=self._cache_dir_of(disk),
            cache_size=self.config.cache_size,
            retry_seconds=self.config.retry_seconds,
            epoch=(disk.get("attachment") or {}).get("epoch"),
            socket_group=self.config.socket_group is not None,
            fence_check_seconds=self.config.fence_check_seconds,
            upload_after=self.config.upload_after_seconds,
            incoming=incoming,
            extra_env={
                contract.ENV_SIZE_REQUEST: str(contract.size_request_path(sock)),
                contract.ENV_STATS_FILE: str(contract.stats_path(sock)),
                contract.ENV_QOS_FILE: str(contract.qos_path(sock)),
                contract.ENV_KEK_DIR: str(contract.kek_dir(self.config.home)),
                **self._repair_env(disk),
            },
        )
        return Export(config)

    def _repair_env(self, disk: dict[str, Any]) -> dict[str, str]:
        """For a grs disk: the other region, where the plugin's read repair fetches segments
        missing or damaged in the region it serves from (environment: secrets stay off `ps`)."""
        if disk.get("redundancy") != "grs" or self.config.secondary is None:
            return {}
        serving = self.s3_of(disk)
        other = self.config.s3 if serving is self.config.secondary else self.config.secondary
        return contract.repair_env(other)

    def serve(self, disk: dict[str, Any]) -> dict[str, Any]:
        """Serve `disk` with the writer epoch its record's attachment carries. A running export
        of another epoch (an earlier attachment here) is stopped first, gracefully: what it
        acknowledged becomes durable before the new epoch takes the log."""
        name = disk["name"]
        with self._disk_lock(name):
            current = self._exports.get(name)
            if current is not None and current.running:
                if current.config.epoch == (disk.get("attachment") or {}).get("epoch"):
                    return self.details(disk)
                self._stop_locked(name, graceful=True)
            elif current is not None:
                self._forget_locked(name)
            self._start_locked(disk)
        return self.details(disk)

    def watch(self, disk: dict[str, Any]) -> None:
        """Have the watcher start the disk's export (asking the authority first), again and
        again until it runs: for a disk attached here that could not be served now."""
        with self._disk_lock(disk["name"]), self._lock:
            if disk["name"] not in self._exports:
                self._exports[disk["name"]] = self._make(disk)
                self._disks[disk["name"]] = disk

    def _start_locked(self, disk: dict[str, Any], *, incoming: bool = False) -> Export:
        export = self._make(disk, incoming=incoming)
        self._spawner.submit(export.launch).result()
        export.wait_ready()  # here, so that exports of several disks start side by side
        with self._lock:
            self._exports[disk["name"]] = export
            self._disks[disk["name"]] = disk
        log.info("serving disk %s on %s (pid %d)", disk["name"], export.config.socket, export.pid)
        return export

    # -- the destination of a live migration (control/migration.py) ------------------------

    def serve_incoming(self, disk: dict[str, Any]) -> dict[str, Any]:
        """Start an export of a disk that another host serves and a VM is migrating here: it
        answers the NBD handshake, serves reads and holds writes and flushes until `hand_over`."""
        name = disk["name"]
        with self._disk_lock(name):
            current = self._exports.get(name)
            if current is not None and current.running and current.config.incoming:
                return self.details(disk)
            if current is not None:
                self._stop_locked(name, graceful=True)
            contract.Activation(self.socket_of(disk)).clear()
            self._start_locked(disk, incoming=True)
        return self.details(disk)

    def handover_wanted(self, disk: dict[str, Any]) -> bool:
        """Whether the incoming export of `disk` holds a request (the VM runs here now)."""
        return contract.Activation(self.socket_of(disk)).asked()

    def hand_over(self, disk: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Make the incoming export of `disk` its writer with the epoch the record's attachment
        now carries; returns once it serves (its open of the epoch fenced the source)."""
        name, epoch = disk["name"], disk["attachment"]["epoch"]
        with self._disk_lock(name):
            export = self._exports.get(name)
            if export is None or not export.running or not export.config.incoming:
                raise Unavailable(f"no incoming export of disk {name!r} runs on this host")
            activate(export, epoch, timeout)
            export.config = replace(export.config, incoming=False, epoch=epoch)
            with self._lock:
                self._disks[name] = disk
        return self.details(disk)

    def drop_incoming(self, disk: dict[str, Any]) -> None:
        """A cancelled migration: the held requests fail and the incoming export goes."""
        with self._disk_lock(disk["name"]):
            export = self._exports.get(disk["name"])
            if export is not None and export.config.incoming:
                contract.Activation(export.config.socket).answer(None)
                self._stop_locked(disk["name"], graceful=False)
                contract.Activation(export.config.socket).clear()

    def _forget_locked(self, name: str) -> Export | None:
        with self._lock:
            self._lost.pop(name, None)
            self._disks.pop(name, None)
            return self._exports.pop(name, None)

    def details(self, disk: dict[str, Any]) -> dict[str, Any]:
        """How a hypervisor connects: NBD URI, QEMU -blockdev, libvirt <disk> XML, and the pid
        of the export serving it."""
        name = disk["name"]
        default = "vda" if disk["kind"] == "os" else "vdb"
        target = (disk.get("attachment") or {}).get("target") or default
        export = self._exports.get(name)
        pid = export.pid if export and export.process else None
        return {**connection_details(name, self.socket_of(disk), target), "pid": pid}

    def serving(self, disk: dict[str, Any]) -> bool:
        """Whether an export of the disk runs here and is not fenced."""
        export = self._exports.get(disk["name"])
        return bool(export and export.running and not self._fenced(export))

    def clients(self, disk: dict[str, Any]) -> int:
        """NBD clients connected to the disk's export now (0 when none runs)."""
        export = self._exports.get(disk["name"])
        return export.clients() if export is not None else 0

    def journal_records(self, disk: dict[str, Any]) -> int:
        """Acknowledged writes left in this host's write journal of the disk, not yet durable."""
        cache = contract.disk_cache_dir(self._cache_dir_of(disk), disk["volume_id"])
        return len(read_journal(cache)) if cache.is_dir() else 0

    def stop(self, disk: dict[str, Any], *, graceful: bool = True) -> None:
        """Stop a disk's export: gracefully (it uploads what is dirty first), or at once when
        what it holds is to be dropped anyway (a failover away from a store that is down)."""
        with self._disk_lock(disk["name"]):
            self._stop_locked(disk["name"], graceful=graceful)

    def _stop_locked(self, name: str, *, graceful: bool) -> None:
        export = self._forget_locked(name)
        if export is None:
            return
        if not graceful:
            export.kill()
            return
        status = export.stop()
        if status not in (0, None):
            log.warning("nbdkit for %s exited with %s on stop", name, status)

    def flush(self, disk: dict[str, Any]) -> None:
        """An NBD flush through the export: everything acknowledged so far becomes durable."""
        with nbd_connection(self.socket_of(disk), disk["name"], "flushing") as handle:
            handle.flush()

    def resize(self, disk: dict[str, Any], size_bytes: int) -> None:
        """Grow an attached disk: new connections see the new size."""
        if disk["kind"] == "ephemeral":
            with open(self._image_of(disk), "ab") as f:
                f.truncate(size_bytes)
            return
        contract.write_size_request(contract.size_request_path(self.socket_of(disk)), size_bytes)
        # The plugin applies the request when the next connection opens; open one now so that
        # the resize is in the volume's log before this call returns.
        with nbd_connection(self.socket_of(disk), disk["name"], "resizing") as handle:
            got = handle.get_size()
        if got != size_bytes:
            raise Unavailable(f"export of {disk['name']!r} reports {got} bytes, not {size_bytes}")

    def set_qos(self, disk: dict[str, Any]) -> None:
        """The running export takes the record's caps within a second (nbd_plugin/throttle.py)."""
        contract.write_qos(contract.qos_path(self.socket_of(disk)), disk.get("qos") or {})

    def stats(self, disk: dict[str, Any]) -> dict[str, Any] | None:
        """The counters the export last wrote (every 2 s; `contract.ExportStats`), or None."""
        return contract.read_stats(contract.stats_path(self.socket_of(disk)))

    def served_disks(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._disks.values())

    def discard_local(self, disk: dict[str, Any]) -> int:
        """Remove what this host keeps of a disk (an ephemeral image, a host cache and its
        write journal); returns the bytes of write journal that went with it."""
        cache = self._cache_dir_of(disk)
        inner = contract.disk_cache_dir(cache, disk["volume_id"])
        journal = journal_bytes(inner) + journal_bytes(cache)
        self._image_of(disk).unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        return journal

    def disown(self, name: str) -> None:
        """The disk's record names another holder (control/holders.py): a fenced export."""
        export = self._exports.get(name)
        if export is not None and not export.config.incoming:
            export.disowned = True

    def _fenced(self, export: Export) -> bool:
        """The export said (in its stats file) that a newer writer took the disk, or the record
        did. Asked every `check_interval` for every export: reads only the head of the file."""
        if export.disowned:
            return True
        fence = contract.read_fence(contract.stats_path(export.config.socket))
        return fence is not None and fence[0] and fence[1] == export.config.epoch

    def _watch(self) -> None:
        while not self._stop.wait(self.config.check_interval):
            with self._lock:
                names = list(self._exports) + list(self._lost)
            for name in names:
                try:
                    self.check(name)
                except Exception:  # a bug must not stop the watcher of every other disk
                    log.exception("checking the export of %s failed", name)

    def check(self, name: str) -> None:
        """Restart the disk's export if it died or was fenced and this host still holds the
        disk (asking the authority, which issues the new epoch); else stop and forget it."""
        with self._disk_lock(name):
            export = self._exports.get(name)
            if export is None:
                self._check_lost_locked(name)
                return
            dead = not export.running
            if export.config.incoming:  # not the writer: nothing to restart or fence
                if dead:
                    self._forget_locked(name)
                return
            if not dead and not self._fenced(export):
                return
            disk = self._disks[name]
            try:
                renewed = self._renew(disk)
            except BlockstoreError as exc:
                log.warning("export of %s is down and its holder unknown: %s", name, exc)
                return  # asked again at the next check
            if renewed is None:
                log.warning(
                    "export of disk %s %s and another holder has it now: stopped, not restarted",
                    name,
                    "died" if dead else "was fenced",
                )
                self._stop_locked(name, graceful=False)
                self.dropped += 1
                with self._lock:
                    self._lost[name] = (disk, time.monotonic())
                return
            log.warning("export of disk %s %s; restarting", name, "died" if dead else "was fenced")
            self._stop_locked(name, graceful=False)
            self._restart_locked(renewed)

    def _renew(self, disk: dict[str, Any]) -> dict[str, Any] | None:
        return self.authority.renew_attachment(disk) if self.authority is not None else disk

    def _restart_locked(self, renewed: dict[str, Any]) -> None:
        """Start the export with the renewed record and note in the record how it is reached;
        if it does not start, leave it to the next check (which renews the epoch again)."""
        name = renewed["name"]
        try:
            self._start_locked(renewed)
        except Unavailable as exc:
            log.error("restarting the export of %s failed: %s", name, exc)
            with self._lock:
                self._exports[name] = self._make(renewed)
                self._disks[name] = renewed
            return
        self.restarts += 1
        if self.authority is not None:
            try:
                self.authority.record_served(renewed, self.details(renewed))
            except BlockstoreError as exc:
                log.warning("export of %s restarted; its record not updated: %s", name, exc)

    def _check_lost_locked(self, name: str) -> None:
        """A disk this host lost: serve it again if the record names this host with the epoch
        it had (a failed force-attach put it back); forget it after LOST_GRACE_SECONDS."""
        with self._lock:
            lost = self._lost.get(name)
        if lost is None or self.authority is None:
            return
        disk, since = lost
        try:
            renewed = self._renew(disk)
        except BlockstoreError:
            return
        if renewed is None:
            if time.monotonic() - since > LOST_GRACE_SECONDS:
                with self._lock:
                    self._lost.pop(name, None)
            return
        with self._lock:
            self._lost.pop(name, None)
        log.warning("disk %s is attached here again (a takeover failed); serving it", name)
        self._restart_locked(renewed)

    def close(self) -> None:
        """Stop watching and stop every export (their disks stay attached in the records)."""
        self._stop.set()
        self._watcher.join(5)
        with self._lock:
            exports = list(self._exports.values())
            self._exports.clear()
        for export in exports:
            export.stop()
        self._spawner.shutdown()
