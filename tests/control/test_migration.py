"""Live migration through the front door (issue #17): two `blockstore serve` hosts over one
bucket of the real SeaweedFS, the HTTP API, and libnbd clients on the sockets the API returned,
playing QEMU's part of the protocol (blockstore/control/migration.py): the source's client
writes and flushes, the destination's client connects early and sends its first request only
after the source's last flush. `kill -9` ends hosts mid-migration. The real QEMU migration,
guest writing, is tests/system/test_migration_qemu.py (slow).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, connect, nbd_errno, pid_alive, wait_for

MiB = 1 << 20
_n = itertools.count()


@pytest.fixture
def hosts(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[tuple[ServeHost, ServeHost]]:
    """Source A and destination B over one prefix of the test bucket."""
    prefix = f"migrate-{next(_n)}-{os.getpid()}/"
    pair = tuple(
        ServeHost(
            tmp_path / home,
            endpoint=seaweed.endpoint,
            bucket=seaweed.bucket,
            prefix=prefix,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
            retry_seconds=4.0,
        ).start()
        for home in ("a", "b")
    )
    yield pair  # type: ignore[misc]
    for host in pair:
        host.stop()


def _block(tag: bytes) -> bytes:
    return (tag * 4096)[:4096]


def _attached(a: ServeHost, name: str, caching: str = "readwrite") -> dict[str, Any]:
    a.ok("POST", "/v1/disks", {"name": name, "size_bytes": 64 * MiB, "kind": "os",
                               "caching": caching})  # fmt: skip
    att: dict[str, Any] = a.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm1"})
    return att


def _metrics(host: ServeHost) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/metrics", timeout=30) as r:
        return r.read().decode()


def _export_pid_gone(pid: int) -> bool:
    return not pid_alive(pid)


@pytest.mark.parametrize("caching", ["none", "readwrite"])
def test_the_destinations_first_request_switches_over_with_every_write(
    hosts: tuple[ServeHost, ServeHost], caching: str
) -> None:
    """The whole protocol, as QEMU drives it: B prepares while A serves (nothing fenced: A
    goes on writing); B's client connects and learns the size; A's guest stops with a flush;
    B's first request makes B the writer, sees every write A acknowledged, and A's export is
    stopped, not restarted."""
    a, b = hosts
    att = _attached(a, "mig1", caching)
    src = connect(att["socket"])
    for i in range(8):
        src.pwrite(_block(b"%d" % i), i * 4096)
    src.flush()

    disk = b.ok("POST", "/v1/disks/mig1/migration", {"vm": "vm1"})
    block = disk["migration"]
    assert block["from_host"] == att["host"] and block["state"] == "incoming"
    assert block["to_host"] != att["host"] and block["vm"] == "vm1"
    assert "driver=nbd" in block["qemu_blockdev"] and block["socket"] != att["socket"]
    assert a.ok("GET", "/v1/disks/mig1")["migration"]["to_host"] == block["to_host"]
    assert f'blockstore_disk_migrating{{disk="mig1",peer="{att["host"]}",role="destination"}} 1' in _metrics(b)
    assert 'role="source"' in _metrics(a)

    dst = connect(block["socket"])  # QEMU's destination opens its node at once
    assert dst.get_size() == 64 * MiB
    src.pwrite(_block(b"late"), 4096)  # the source still serves, unfenced
    src.flush()  # QEMU's vm_stop: the source's last flush
    began = time.monotonic()
    assert dst.pread(4096, 4096) == _block(b"late")  # the first request: the switchover
    pause = time.monotonic() - began
    for i in (0, 2, 7):
        assert dst.pread(4096, i * 4096) == _block(b"%d" % i)
    dst.pwrite(_block(b"B"), 0)
    dst.flush()

    disk = b.ok("GET", "/v1/disks/mig1")
    assert disk["attachment"]["host"] == block["to_host"]
    assert disk["attachment"]["migrated_from"] == att["host"]
    assert disk.get("migration") is None
    last = wait_for(
        lambda: b.ok("GET", "/v1/disks/mig1")["last_migration"].get("switchover_ms") and
        b.ok("GET", "/v1/disks/mig1")["last_migration"], 10, "the switchover's note")
    assert last["state"] == "completed" and 0 < last["switchover_ms"] < 30_000
    print(f"switchover: {last['switchover_ms']} ms in the service, {pause * 1000:.0f} ms held")
    assert pause < 30
    wait_for(lambda: _export_pid_gone(att["pid"]), 15, "the source's export to stop")
    time.sleep(2)  # a supervisor check or two on A: it must not bring the export back
    assert not Path(att["socket"]).exists()
    assert "blockstore_disk_migrating{" not in _metrics(b)
    assert b.ok("POST", "/v1/disks/mig1/migration/complete")["attachment"]["host"] == block["to_host"]
    with contextlib.suppress(nbd.Error):
        src.shutdown()
    fresh = connect(disk["attachment"]["socket"])
    assert fresh.pread(8192, 0) == _block(b"B") + _block(b"late")
