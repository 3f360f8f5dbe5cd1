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
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from tests.support.paths import BIN
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import TOKEN, ServeHost, connect, nbd_errno, pid_alive, wait_for

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
    labels = f'disk="mig1",peer="{att["host"]}",role="destination"'
    assert f"blockstore_disk_migrating{{{labels}}} 1.0" in _metrics(b)
    assert 'role="source"' in _metrics(a)

    dst = connect(block["socket"])  # QEMU's destination opens its node at once
    assert dst.get_size() == 64 * MiB
    assert dst.pread(4096, 0) == _block(b"0")  # and reads sector 0 (geometry): no switchover
    src.pwrite(_block(b"late"), 4096)  # the source still serves, unfenced
    src.flush()  # QEMU's vm_stop: the source's last flush
    assert dst.pread(4096, 4096) == _block(b"late")  # the guest resumed here: reads are fresh
    began = time.monotonic()
    dst.pwrite(_block(b"B"), 0)  # the first write: the switchover
    pause = time.monotonic() - began
    for i in (2, 7):
        assert dst.pread(4096, i * 4096) == _block(b"%d" % i)
    dst.flush()

    disk = b.ok("GET", "/v1/disks/mig1")
    assert disk["attachment"]["host"] == block["to_host"]
    assert disk["attachment"]["migrated_from"] == att["host"]
    assert disk.get("migration") is None
    last = wait_for(
        lambda: (
            b.ok("GET", "/v1/disks/mig1")["last_migration"].get("switchover_ms")
            and b.ok("GET", "/v1/disks/mig1")["last_migration"]
        ),
        10,
        "the switchover's note",
    )
    assert last["state"] == "completed" and 0 < last["switchover_ms"] < 30_000
    print(f"switchover: {last['switchover_ms']} ms in the service, {pause * 1000:.0f} ms held")
    assert pause < 30
    wait_for(lambda: _export_pid_gone(att["pid"]), 15, "the source's export to stop")
    time.sleep(2)  # a supervisor check or two on A: it must not bring the export back
    assert not Path(att["socket"]).exists()
    assert "blockstore_disk_migrating{" not in _metrics(b)
    again = b.ok("POST", "/v1/disks/mig1/migration/complete")  # idempotent
    assert again["attachment"]["host"] == block["to_host"]
    with contextlib.suppress(nbd.Error):
        src.shutdown()
    fresh = connect(disk["attachment"]["socket"])
    assert fresh.pread(8192, 0) == _block(b"B") + _block(b"late")


@pytest.mark.parametrize("where", ["source", "destination"])
def test_a_cancel_keeps_the_source_serving(hosts: tuple[ServeHost, ServeHost], where: str) -> None:
    """Cancelled before the switchover, on either host: the source was never fenced and goes
    on serving; the destination's incoming export fails what it held (EIO) and goes; the
    record says how the migration ended."""
    a, b = hosts
    att = _attached(a, "mig2")
    src = connect(att["socket"])
    src.pwrite(_block(b"a"), 0)
    block = b.ok("POST", "/v1/disks/mig2/migration", {"vm": "vm1"})["migration"]
    dst = connect(block["socket"])
    assert dst.get_size() == 64 * MiB
    # The destination asks for the switchover only on a request; none comes before the cancel.
    disk = (a if where == "source" else b).ok("DELETE", "/v1/disks/mig2/migration")
    assert disk.get("migration") is None and disk["last_migration"]["state"] == "cancelled"
    assert disk["attachment"]["host"] == att["host"]
    wait_for(lambda: not Path(block["socket"]).exists(), 10, "the incoming export to go")
    with contextlib.suppress(nbd.Error):
        dst.pread(4096, 0)
        raise AssertionError("a cancelled incoming export served a read")
    src.pwrite(_block(b"b"), 4096)
    src.flush()  # never fenced
    assert src.pread(8192, 0) == _block(b"a") + _block(b"b")
    time.sleep(2)
    assert pid_alive(att["pid"])
    status, body = b.call("DELETE", "/v1/disks/mig2/migration")
    assert status == 409 and "no live migration" in body["detail"]
    # And a second migration can start and complete after a cancelled one.
    block = b.ok("POST", "/v1/disks/mig2/migration")["migration"]
    src.flush()
    assert connect(block["socket"]).pread(8192, 0) == _block(b"a") + _block(b"b")


def test_reads_before_the_switchover_never_fence_the_source(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """QEMU's destination reads sector 0 as it starts (a geometry guess), long before the
    source stops. Such reads are served from the store, each seeing what the source flushed
    by then; the source is never fenced and the record does not move."""
    a, b = hosts
    att = _attached(a, "mig3")
    src = connect(att["socket"])
    block = b.ok("POST", "/v1/disks/mig3/migration", {"vm": "vm1"})["migration"]
    dst = connect(block["socket"])
    for i in range(5):
        src.pwrite(_block(b"%d" % i), 0)
        src.flush()
        assert dst.pread(4096, 0) == _block(b"%d" % i)
    time.sleep(1.5)  # fence checks on A, and the watcher's look at the record on B
    src.pwrite(_block(b"x"), 4096)
    src.flush()  # A is still the writer
    disk = a.ok("GET", "/v1/disks/mig3")
    assert disk["attachment"]["host"] == att["host"] and disk["migration"]["state"] == "incoming"
    assert pid_alive(att["pid"])


def test_the_destination_dying_leaves_the_source_the_only_writer(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """B dies (kill -9, its exports with it) during the migration: A serves on, unfenced; the
    record still shows the migration until a cancel on A drops it, or B's restart does."""
    a, b = hosts
    att = _attached(a, "mig4")
    src = connect(att["socket"])
    b.ok("POST", "/v1/disks/mig4/migration", {"vm": "vm1"})
    b.kill9()
    src.pwrite(_block(b"a"), 0)
    src.flush()
    assert a.ok("GET", "/v1/disks/mig4")["migration"]["state"] == "incoming"
    status, body = a.call("POST", "/v1/disks/mig4/detach", {"force": True})
    assert status == 409 and "cancel the migration first" in body["detail"]
    assert a.ok("DELETE", "/v1/disks/mig4/migration").get("migration") is None
    src.pwrite(_block(b"b"), 4096)
    src.flush()

    b.start()
    b.ok("POST", "/v1/disks/mig4/migration", {"vm": "vm1"})
    b.kill9()
    b.start()  # its restart drops the migration it can no longer complete
    disk = wait_for(
        lambda: (d := a.ok("GET", "/v1/disks/mig4")).get("migration") is None and d,
        10,
        "B's restart to drop its migration",
    )
    assert disk["last_migration"]["why"] == "the destination host restarted"
    src.pwrite(_block(b"c"), 8192)
    src.flush()
    assert src.pread(3 * 4096, 0) == _block(b"a") + _block(b"b") + _block(b"c")


def test_the_source_dying_after_the_switchover_began_loses_nothing(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """A flushed (QEMU's vm_stop) and then died with its service and exports (kill -9): the
    destination's first request switches over without A, every write A acknowledged is there,
    and A, restarted, does not take the disk back (its journal was flushed, then dropped)."""
    a, b = hosts
    att = _attached(a, "mig5")
    src = connect(att["socket"])
    for i in range(4):
        src.pwrite(_block(b"%d" % i), i * 4096)
    block = b.ok("POST", "/v1/disks/mig5/migration", {"vm": "vm1"})["migration"]
    dst = connect(block["socket"])
    src.flush()
    a.kill9()  # the whole host: its service, and its export at the same instant
    with contextlib.suppress(ProcessLookupError):
        os.kill(att["pid"], signal.SIGKILL)
    assert dst.pread(4 * 4096, 0) == b"".join(_block(b"%d" % i) for i in range(4))
    dst.pwrite(_block(b"B"), 0)
    dst.flush()
    a.start()
    time.sleep(3)
    assert nbd_errno(lambda: connect(att["socket"])) is not None, "A serves the disk again"
    disk = b.ok("GET", "/v1/disks/mig5")
    assert disk["attachment"]["host"] == block["to_host"]
    assert connect(block["socket"]).pread(8192, 0) == _block(b"B") + _block(b"1")


def _race(owner: ServeHost, other: ServeHost, name: str) -> dict[str, int]:
    """`complete` on `other` and `cancel` on `owner` at once: the status of each."""
    calls = {
        "complete": lambda: other.call("POST", f"/v1/disks/{name}/migration/complete"),
        "cancel": lambda: owner.call("DELETE", f"/v1/disks/{name}/migration"),
    }
    results: dict[str, int] = {}

    def run(kind: str) -> None:
        results[kind] = calls[kind]()[0]

    threads = [threading.Thread(target=run, args=(kind,)) for kind in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_a_switchover_and_a_cancel_racing_leave_exactly_one_writer(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """Complete on the destination and cancel on the source at the same moment, several times:
    exactly one wins the record, the other answers 409; the disk has exactly one writer, the
    winner's host, and it holds every write."""
    a, b = hosts
    _attached(a, "mig6", "none")
    owner, other = a, b
    for round_ in range(4):
        sock = owner.ok("GET", "/v1/disks/mig6")["attachment"]["socket"]
        connect(sock).pwrite(_block(b"%d" % round_), 0)
        other.ok("POST", "/v1/disks/mig6/migration")
        results = _race(owner, other, "mig6")
        assert sorted(results.values()) == [200, 409], results
        disk = a.ok("GET", "/v1/disks/mig6")
        assert disk.get("migration") is None
        if results["complete"] == 200:
            assert disk["last_migration"]["state"] == "completed"
            owner, other = other, owner
        else:
            assert disk["last_migration"]["state"] == "cancelled"
        assert disk["attachment"]["host"] == owner.ok("GET", "/v1/info")["host"]
        sock = owner.ok("GET", "/v1/disks/mig6")["attachment"]["socket"]
        assert connect(sock).pread(4096, 0) == _block(b"%d" % round_)


def test_what_cannot_migrate_is_refused_with_a_reason(hosts: tuple[ServeHost, ServeHost]) -> None:
    """Clear 4xx answers, and nothing changes: a disk not attached, attached here already, to
    another VM, already migrating; ephemeral disks; unknown disks; bad names; resize, detach
    and a second migration while one is under way; a force-attach calls a migration off."""
    a, b = hosts
    a.ok("POST", "/v1/disks", {"name": "free", "size_bytes": 8 * MiB, "kind": "data"})
    a.ok("POST", "/v1/disks", {"name": "tmp", "size_bytes": 8 * MiB, "kind": "ephemeral"})
    a.ok("POST", "/v1/disks/tmp/attach", {"vm": "vm1"})
    att = _attached(a, "mig7")
    cases = [
        (b, "POST", "/v1/disks/free/migration", {}, 409, "not attached"),
        (a, "POST", "/v1/disks/mig7/migration", {}, 409, "attached on this host already"),
        (b, "POST", "/v1/disks/mig7/migration", {"vm": "vm2"}, 409, "not 'vm2'"),
        (b, "POST", "/v1/disks/tmp/migration", {}, 422, "ephemeral"),
        (b, "POST", "/v1/disks/nosuch/migration", {}, 404, "does not exist"),
        (b, "POST", "/v1/disks/mig7/migration", {"vm": "Bad VM!"}, 422, ""),
        (b, "POST", "/v1/disks/mig7/migration/complete", None, 409, "no live migration"),
        (a, "DELETE", "/v1/disks/mig7/migration", None, 409, "no live migration"),
    ]
    for host, method, path, body, status, words in cases:
        got, answer = host.call(method, path, body)
        assert got == status and words in str(answer), (path, body, got, answer)
    assert a.ok("GET", "/v1/disks/mig7").get("migration") is None

    b.ok("POST", "/v1/disks/mig7/migration", {"vm": "vm1"})
    again = b.ok("POST", "/v1/disks/mig7/migration")  # the same migration: the same answer
    assert again["migration"]["to_host"] == b.ok("GET", "/v1/info")["host"]
    refusals: list[tuple[str, str, dict[str, Any], str]] = [
        ("PATCH", "/v1/disks/mig7", {"size_bytes": 128 * MiB}, "resize it once"),
        ("POST", "/v1/disks/mig7/detach", {"force": True}, "cancel the migration first"),
        ("POST", "/v1/disks/mig7/migration", {}, "attached on this host already"),
    ]
    for method, path, change, words in refusals:
        got, answer = a.call(method, path, change)
        assert got == 409 and words in answer["detail"], (path, got, answer)

    incoming = again["migration"]["socket"]
    forced = b.ok("POST", "/v1/disks/mig7/attach", {"vm": "vm1", "force": True})
    disk = a.ok("GET", "/v1/disks/mig7")
    assert disk.get("migration") is None and disk["attachment"]["host"] == forced["host"]
    assert forced["socket"] == incoming  # the same path on B, now a writer's export
    connect(forced["socket"]).pwrite(_block(b"f"), 0)
    wait_for(lambda: not pid_alive(att["pid"]), 15, "A's fenced export to stop")


def _cli(host: ServeHost, *args: str) -> subprocess.CompletedProcess[str]:
    """The blockstore CLI against `host`'s API, as an operator on another machine runs it."""
    return subprocess.run(
        [BIN, *args, "--url", f"http://127.0.0.1:{host.port}", "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_migrates_shows_and_cancels(hosts: tuple[ServeHost, ServeHost]) -> None:
    """`blockstore disk migrate` on the destination prints how its QEMU connects; the list
    shows the disk migrating; --cancel (on the source) calls it off; --complete switches over."""
    a, b = hosts
    att = _attached(a, "mig8")
    out = _cli(b, "disk", "migrate", "mig8", "--vm", "vm1")
    assert out.returncode == 0, out.stderr
    assert "qemu_blockdev: driver=nbd" in out.stdout and "to_host: " in out.stdout
    listing = _cli(a, "disk", "list")
    assert "migrating" in listing.stdout, listing.stdout  # the table may wrap the cell
    assert _cli(a, "disk", "migrate", "mig8", "--cancel").returncode == 0
    refused = _cli(a, "disk", "migrate", "mig8", "--cancel")
    assert refused.returncode != 0 and "no live migration" in refused.stderr + refused.stdout
    assert _cli(b, "disk", "migrate", "mig8", "--json").returncode == 0
    done = _cli(b, "disk", "migrate", "mig8", "--complete")
    assert done.returncode == 0 and "migrated_from: " + att["host"] in done.stdout, done
    assert a.ok("GET", "/v1/disks/mig8")["attachment"]["host"] != att["host"]
