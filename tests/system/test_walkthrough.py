"""The 2012 walkthrough on the real service: `blockstore serve`, the CLI, nbdfuse, a partition
table, a loop device, ext4, mount, move the disk to another VM, snapshot, clone, kill -9 of an
OS disk's nbdkit, and an online resize seen by `qemu-img info`.

Needs root (losetup, mount) and FUSE, as the product does on a host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockstore.host.embedded import free_ports
from tests.support.paths import BIN
from tests.support.serveproc import start_serve, stop_serve

GiB = 1 << 30


def sh(*args: str, input: str | None = None) -> str:
    out = subprocess.run(args, capture_output=True, text=True, input=input, timeout=300)
    assert out.returncode == 0, f"{' '.join(args)} failed: {out.stderr or out.stdout}"
    return out.stdout


class Service:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port

    def cli(self, *args: str) -> Any:
        env = {**os.environ, "BLOCKSTORE_URL": f"http://127.0.0.1:{self.port}"}
        out = subprocess.run(
            [BIN, *args, "--home", str(self.home), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else None), out.stderr


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    home = tmp_path / "home"
    port = free_ports(1)[0]
    proc = start_serve(home, port)
    try:
        yield Service(home, port)
    finally:
        assert stop_serve(proc) == []


class Mounted:
    """nbdfuse exposes the export as a file; a loop device on its first partition; ext4."""

    def __init__(self, socket: str, where: Path) -> None:
        self.fuse_dir = where / "fuse"
        self.mnt = where / "mnt"
        self.fuse_dir.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        pidfile = where / "nbdfuse.pid"
        pidfile.unlink(missing_ok=True)
        self.fuse = subprocess.Popen(
            ["nbdfuse", "-P", str(pidfile), str(self.fuse_dir / "disk"), "--unix", socket],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        self.file = self.fuse_dir / "disk"
        self.loop: str | None = None

    def partition(self) -> None:
        sh("sfdisk", "--quiet", str(self.file), input="label: dos\nstart=2048, type=83\n")

    def attach_loop(self) -> str:
        start = int(
            json.loads(sh("sfdisk", "--json", str(self.file)))["partitiontable"]["partitions"][0][
                "start"
            ]
        )
        self.loop = sh(
            "losetup", "--find", "--show", "--direct-io=off", "-o", str(start * 512), str(self.file)
        ).strip()
        return self.loop

    def mount(self) -> None:
        assert self.loop
        sh("mount", self.loop, str(self.mnt))

    def release(self) -> None:
        subprocess.run(["umount", str(self.mnt)], capture_output=True)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = None
        subprocess.run(["fusermount3", "-u", str(self.fuse_dir)], capture_output=True)
        self.fuse.wait(30)


def test_walkthrough(service: Service, tmp_path: Path) -> None:
    rc, disk, err = service.cli("disk", "create", "data20", "--size", "20G", "--kind", "data")
    assert rc == 0, err
    assert disk["size_bytes"] == 20 * GiB and disk["caching"] == "none"

    rc, att, err = service.cli("disk", "attach", "data20", "--vm", "penguin1")
    assert rc == 0, err
    m = Mounted(att["socket"], tmp_path / "m1")
    try:
        m.partition()
        loop = m.attach_loop()
        sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", loop)
        m.mount()
        (m.mnt / "hello.txt").write_text("hello from penguin1\n")
        payload = os.urandom(3 << 20)
        (m.mnt / "blob.bin").write_bytes(payload)
        df = sh("df", "-h", str(m.mnt)).splitlines()[-1].split()
        assert df[1] in ("20G", "19G"), df  # about 20G, less the file system's own overhead
        sh("sync")
        rc, _, err = service.cli("disk", "delete", "data20")
        assert rc == 1 and "detach it first" in err
    finally:
        m.release()
    rc, _, err = service.cli("disk", "detach", "data20")
    assert rc == 0, err

    rc, att, err = service.cli("disk", "attach", "data20", "--vm", "penguin2")
    assert rc == 0, err
    m = Mounted(att["socket"], tmp_path / "m2")
    try:
        loop = m.attach_loop()
        m.mount()
        assert (m.mnt / "hello.txt").read_text() == "hello from penguin1\n"
        assert (m.mnt / "blob.bin").read_bytes() == payload
        subprocess.run(["umount", str(m.mnt)], check=True)
        fsck = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr

        rc, snap, err = service.cli("snapshot", "create", "data20", "before-more")
        assert snap["name"] == "before-more"
        assert rc == 0, err
        m.mount()
        (m.mnt / "later.txt").write_text("written after the snapshot\n")
        sh("sync")
    finally:
        m.release()

    rc, _, err = service.cli(
        "disk", "create", "restored", "--kind", "data", "--source-snapshot", "data20/before-more"
    )
    assert rc == 0, err
    rc, att, err = service.cli("disk", "attach", "restored", "--vm", "penguin3")
    assert rc == 0, err
    m = Mounted(att["socket"], tmp_path / "m3")
    try:
        m.attach_loop()
        m.mount()
        assert (m.mnt / "hello.txt").read_text() == "hello from penguin1\n"
        assert not (m.mnt / "later.txt").exists()
    finally:
        m.release()


def test_os_disk_survives_kill_9_after_flush_and_grows_online(service: Service) -> None:
    rc, disk, err = service.cli("disk", "create", "os1", "--size", "1G", "--kind", "os")
    assert rc == 0, err
    assert disk["caching"] == "readwrite"
    rc, att, err = service.cli("disk", "attach", "os1", "--vm", "vm1")
    assert rc == 0, err
    data = os.urandom(1 << 20)
    h = nbd.NBD()
    h.connect_unix(att["socket"])
    h.pwrite(data, 64 << 20)
    h.flush()  # what `sync` in the guest does
    h.shutdown()
    os.kill(att["pid"], signal.SIGKILL)
    # The supervisor starts the export again; the journal is replayed before it serves.
    deadline = time.monotonic() + 60
    while True:
        try:
            h = nbd.NBD()
            h.connect_unix(att["socket"])
            break
        except nbd.Error:
            assert time.monotonic() < deadline, "the export did not come back"
            time.sleep(0.3)
    assert h.pread(len(data), 64 << 20) == data
    h.shutdown()

    rc, _, err = service.cli("disk", "resize", "os1", "2G")
    assert rc == 0, err
    info = json.loads(
        sh("qemu-img", "info", "--output=json", f"nbd+unix:///os1?socket={att['socket']}")
    )
    assert info["virtual-size"] == 2 * GiB


def test_a_restarted_service_serves_its_attached_disks_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_ports(1)[0]
    proc = start_serve(home, port)
    service = Service(home, port)
    try:
        rc, _, err = service.cli("disk", "create", "keep", "--size", "64M", "--kind", "os")
        assert rc == 0, err
        rc, att, err = service.cli("disk", "attach", "keep", "--vm", "vm1")
        assert rc == 0, err
        h = nbd.NBD()
        h.connect_unix(att["socket"])
        h.pwrite(b"k" * 65536, 1 << 20)
        h.flush()
        h.shutdown()
    finally:
        assert stop_serve(proc) == []
    assert not Path(att["socket"]).exists()  # the export stopped with the service

    proc = start_serve(home, port)  # serves every disk attached on this host before it answers
    try:
        rc, shown, err = service.cli("disk", "show", "keep")
        assert rc == 0, err
        assert shown["attachment"]["vm"] == "vm1"
        h = nbd.NBD()
        h.connect_unix(shown["attachment"]["socket"])
        assert h.pread(65536, 1 << 20) == b"k" * 65536
        h.shutdown()
        rc, ops, err = service.cli("operation", "list", "--status", "failed")
        assert rc == 0 and ops == [], err
    finally:
        assert stop_serve(proc) == []
