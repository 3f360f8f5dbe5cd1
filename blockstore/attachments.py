"""`ExportSupervisor`: this host's nbdkit processes, one per attached disk, kept running.

Place: used by `ControlService` (blockstore/control.py) for the disks attached on this host; it
starts exports through `blockstore/exports.py`. Layout under the service home:

    <home>/run/                 0700; one Unix socket per export (<volume-id>.sock) and its log
    <home>/cache/<volume-id>/   the host cache of a readonly/readwrite disk (journal included)
    <home>/ephemeral/<id>.img   an ephemeral (resource) disk: a sparse local file, never uploaded

A supervisor thread restarts an export whose nbdkit died (a readwrite disk's journal is replayed
before the socket accepts again, so acknowledged writes survive). Exports die with the service
(nbdkit --exit-with-parent) and are started again when it restarts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from blockstore.errors import Unavailable
from blockstore.exports import Export, ExportConfig
from blockstore.s3store import S3Config

log = logging.getLogger("blockstore.exports")


@dataclass(frozen=True)
class SupervisorConfig:
    home: Path
    s3: S3Config
    retry_seconds: float = 30.0
    cache_size: str = "1G"
    check_interval: float = 1.0
    secondary: S3Config | None = None  # a grs disk that failed over is served from here


class EphemeralExport(Export):
    """nbdkit's C `file` plugin on a local sparse file: the resource disk."""

    def __init__(self, config: ExportConfig, image: Path) -> None:
        super().__init__(config)
        self.image = image

    def command(self) -> list[str]:
        c = self.config
        cmd = [c.nbdkit, "--foreground", "--unix", str(c.socket), "--threads", str(c.threads)]
        if c.exit_with_parent:
            cmd.append("--exit-with-parent")
        return [*cmd, "file", f"file={self.image}", "cache=none"]


def _size_request_path(socket: Path) -> Path:
    return socket.with_suffix(".size")


def _stats_path(socket: Path) -> Path:
    return socket.with_suffix(".stats.json")


@contextmanager
def _nbd_connection(socket: Path, name: str, doing: str) -> Iterator[Any]:
    """A libnbd connection to one of our exports (Debian's python3-libnbd)."""
    import nbd

    handle = nbd.NBD()
    try:
        handle.connect_unix(str(socket))
        yield handle
        handle.shutdown()
    except nbd.Error as exc:
        raise Unavailable(f"{doing} disk {name!r} through its export failed: {exc}") from exc


class ExportSupervisor:
    """Starts, stops, flushes and watches the exports of this host."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.run_dir = config.home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self._exports: dict[str, Export] = {}
        self._disks: dict[str, dict[str, Any]] = {}  # the record each export was started from
        self._lock = threading.Lock()
        self.restarts = 0
        # nbdkit runs with --exit-with-parent, which Linux ties to the *thread* that forked it:
        # every export is started from this one long-lived thread, never from a request thread.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-spawn")
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="export-watch", daemon=True)
        self._watcher.start()

    def socket_of(self, disk: dict[str, Any]) -> Path:
        return self.run_dir / f"{disk['volume_id']}.sock"

    def _image_of(self, disk: dict[str, Any]) -> Path:
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

    def _make(self, disk: dict[str, Any]) -> Export:
        sock = self.socket_of(disk)
        if disk["kind"] == "ephemeral":
            image = self._image_of(disk)
            image.parent.mkdir(parents=True, exist_ok=True)
            with open(image, "ab") as f:  # an empty disk on a host that does not hold it
                if f.tell() < disk["size_bytes"]:
                    f.truncate(disk["size_bytes"])
            config = ExportConfig(disk_id=disk["volume_id"], socket=sock, s3=self.config.s3)
            return EphemeralExport(config, image)
        caching = disk["caching"]
        config = ExportConfig(
            disk_id=disk["volume_id"],
            socket=sock,
            s3=self.s3_of(disk),
            cache_mode=caching,
            cache_dir=self._cache_dir_of(disk) if caching != "none" else None,
            cache_size=self.config.cache_size,
            retry_seconds=self.config.retry_seconds,
            extra_env={
                "BLOCKSTORE_SIZE_REQUEST": str(_size_request_path(sock)),
                "BLOCKSTORE_STATS_FILE": str(_stats_path(sock)),
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
        return {
            "BLOCKSTORE_REPAIR_ENDPOINT": other.endpoint,
            "BLOCKSTORE_REPAIR_BUCKET": other.bucket,
            "BLOCKSTORE_REPAIR_REGION": other.region,
            "BLOCKSTORE_REPAIR_PREFIX": other.prefix,
            "BLOCKSTORE_REPAIR_ACCESS_KEY": other.access_key,
            "BLOCKSTORE_REPAIR_SECRET_KEY": other.secret_key,
        }

    def serve(self, disk: dict[str, Any]) -> dict[str, Any]:
        name = disk["name"]
        with self._lock:
            current = self._exports.get(name)
            if current is not None and current.process and current.process.poll() is None:
                return self.details(disk)
            export = self._make(disk)
            self._spawner.submit(export.start).result()
            self._exports[name] = export
            self._disks[name] = disk
        log.info("serving disk %s on %s (pid %d)", name, export.config.socket, export.pid)
        return self.details(disk)

    def details(self, disk: dict[str, Any]) -> dict[str, Any]:
        """How a hypervisor connects: NBD URI, QEMU -blockdev, libvirt <disk> XML."""
        name, sock = disk["name"], self.socket_of(disk)
        node = f"bs-{name}"
        target = "vda" if disk["kind"] == "os" else "vdb"
        xml = (
            "<disk type='network' device='disk'>\n"
            "  <driver name='qemu' type='raw' cache='none' discard='unmap'/>\n"
            f"  <source protocol='nbd' name={quoteattr(name)}>\n"
            f"    <host transport='unix' socket={quoteattr(str(sock))}/>\n"
            "  </source>\n"
            f"  <target dev='{target}' bus='virtio'/>\n"
            "</disk>"
        )
        export = self._exports.get(name)
        return {
            "nbd_uri": f"nbd+unix:///{name}?socket={sock}",
            "socket": str(sock),
            "export": name,
            "qemu_blockdev": (
                f"driver=nbd,server.type=unix,server.path={sock},export={name},node-name={node}"
            ),
            "libvirt_xml": xml,
            "pid": export.pid if export and export.process else None,
        }

    def serving(self, disk: dict[str, Any]) -> bool:
        export = self._exports.get(disk["name"])
        return bool(export and export.process and export.process.poll() is None)

    def stop(self, disk: dict[str, Any], *, graceful: bool = True) -> None:
        """Stop a disk's export: gracefully (it uploads what is dirty first), or at once when
        what it holds is to be dropped anyway (a failover away from a store that is down)."""
        with self._lock:
            export = self._exports.pop(disk["name"], None)
            self._disks.pop(disk["name"], None)
        if export is None:
            return
        if not graceful:
            export.kill()
            return
        status = export.stop()
        if status not in (0, None):
            log.warning("nbdkit for %s exited with %s on stop", disk["name"], status)

    def flush(self, disk: dict[str, Any]) -> None:
        """An NBD flush through the export: everything acknowledged so far becomes durable."""
        with _nbd_connection(self.socket_of(disk), disk["name"], "flushing") as handle:
            handle.flush()

    def resize(self, disk: dict[str, Any], size_bytes: int) -> None:
        """Grow an attached disk: new connections see the new size."""
        if disk["kind"] == "ephemeral":
            with open(self._image_of(disk), "ab") as f:
                f.truncate(size_bytes)
            return
        path = _size_request_path(self.socket_of(disk))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{size_bytes}\n")
        tmp.replace(path)
        # The plugin applies the request when the next connection opens; open one now so that
        # the resize is in the volume's log before this call returns.
        with _nbd_connection(self.socket_of(disk), disk["name"], "resizing") as handle:
            got = handle.get_size()
        if got != size_bytes:
            raise Unavailable(f"export of {disk['name']!r} reports {got} bytes, not {size_bytes}")

    def stats(self, disk: dict[str, Any]) -> dict[str, Any] | None:
        """The counters the export last wrote (every 2 s), or None if it has written none."""
        try:
            data: dict[str, Any] = json.loads(_stats_path(self.socket_of(disk)).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def served_disks(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._disks.values())

    def discard_local(self, disk: dict[str, Any]) -> int:
        """Remove what this host keeps of a disk (an ephemeral image, a host cache and its
        write journal); returns the bytes of write journal that went with it."""
        cache = self._cache_dir_of(disk)
        journal = sum(p.stat().st_size for p in cache.rglob("journal-*"))
        self._image_of(disk).unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        return journal

    def _watch(self) -> None:
        while not self._stop.wait(self.config.check_interval):
            with self._lock:
                dead = [
                    (n, e)
                    for n, e in self._exports.items()
                    if e.process is not None and e.process.poll() is not None
                ]
            for name, export in dead:
                status = export.process.returncode if export.process else None
                log.warning("nbdkit for disk %s died (status %s); restarting", name, status)
                try:
                    restarted = self._make(self._disks[name])
                    self._spawner.submit(restarted.start).result()
                except (Unavailable, KeyError) as exc:
                    log.error("restarting the export of %s failed: %s", name, exc)
                    continue
                with self._lock:
                    if self._exports.get(name) is export:
                        self._exports[name] = restarted
                        self.restarts += 1
                    else:
                        restarted.stop()

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
