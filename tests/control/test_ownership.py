"""One owner per disk, through the front door (issue #14): two `blockstore serve` hosts over one
bucket of the real SeaweedFS, the HTTP API, libnbd clients on the sockets attach returned,
`kill -9` of nbdkit and of the service, and a fault proxy that takes one host's store away.

Each test is the reproduction of a case that lost or resurrected a write before the ownership
rules (blockstore/control/service.py, blockstore/host/supervisor.py, blockstore/cache/hostcache.py):

- a fenced host restarting its dead export fenced the new owner and replayed its stale journal;
- a journal left behind was ignored by an export in another caching mode, then replayed later
  over newer durable writes;
- detach trusted the record's caching mode, skipped the flush and dropped a journal;
- detach pulled a disk out from under a connected client without a word;
- kill -9 / detach / attach cycles left attach's socket removed by a late stop.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nbd
import pytest

from blockstore.host import contract
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, connect, nbd_errno, pid_alive, wait_for

MiB = 1 << 20
_n = itertools.count()


def _host(
    seaweed: SeaweedServer, home: Path, prefix: str, endpoint: str | None = None
) -> ServeHost:
    return ServeHost(
        home,
        endpoint=endpoint or seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=prefix,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        retry_seconds=4.0,
    )


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed.endpoint)
    yield p
    p.clear()
    p.close()


@pytest.fixture
def hosts(
    seaweed: SeaweedServer, proxy: FaultProxy, tmp_path: Path
) -> Iterator[tuple[ServeHost, ServeHost]]:
    """Host A reaches the store through `proxy` (so a test can take it away from A alone);
    host B directly. Both over one prefix of the test bucket."""
    prefix = f"owner-{next(_n)}-{os.getpid()}/"
    a = _host(seaweed, tmp_path / "a", prefix, proxy.endpoint).start()
    b = _host(seaweed, tmp_path / "b", prefix).start()
    yield a, b
    proxy.clear()
    a.stop()
    b.stop()


def _block(tag: bytes) -> bytes:
    return (tag * 4096)[:4096]


def _create(host: ServeHost, name: str, kind: str = "os", caching: str | None = None) -> None:
    body: dict[str, object] = {"name": name, "size_bytes": 64 * MiB, "kind": kind}
    if caching:
        body["caching"] = caching
    host.ok("POST", "/v1/disks", body)


def test_a_fenced_host_never_brings_its_export_back(hosts: tuple[ServeHost, ServeHost]) -> None:
    """Item 1: A holds a readwrite disk, B force-attaches it, A's nbdkit dies. A's supervisor
    must not restart it (it would claim a newer epoch, fence B and replay A's journal over B's
    flushed write); B's data and B's ability to write are untouched, also after A restarts."""
    a, b = hosts
    _create(a, "os1")
    att_a = a.ok("POST", "/v1/disks/os1/attach", {"vm": "vm-a"})
    ha = connect(att_a["socket"])
    ha.pwrite(_block(b"A"), 8192)  # acknowledged from A's journal, never flushed

    att_b = b.ok("POST", "/v1/disks/os1/attach", {"vm": "vm-b", "force": True})
    hb = connect(att_b["socket"])
    hb.pwrite(_block(b"B"), 8192)
    hb.flush()
    with contextlib.suppress(ProcessLookupError):
        os.kill(att_a["pid"], signal.SIGKILL)  # before A's fence check can notice
    time.sleep(5)  # several supervisor checks on A
    hb.pwrite(_block(b"b"), 0)
    hb.flush()  # B is still the writer: no EPERM
    assert hb.pread(4096, 8192) == _block(b"B")
    assert not Path(att_a["socket"]).exists(), "A serves the disk again"
    assert a.ok("GET", "/v1/disks/os1")["attachment"]["host"] == att_b["host"]

    a.stop()  # A's service restarts: it must not take the disk back either
    a.start()
    time.sleep(3)
    hb.pwrite(_block(b"c"), 4096)
    hb.flush()
    fresh = connect(att_b["socket"])
    assert fresh.pread(4096, 8192) == _block(b"B")
    assert fresh.pread(8192, 0) == _block(b"b") + _block(b"c")
    assert not Path(att_a["socket"]).exists()
    with contextlib.suppress(nbd.Error):
        ha.shutdown()


def test_a_fenced_export_fails_every_request_and_is_stopped(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """Item 10: once another host force-attached the disk, A's export accepts no write and
    serves no read (it may hold bytes B has overwritten): EPERM, and then its host stops it.
    Nothing A was asked to write after B's attach returned is ever visible."""
    a, b = hosts
    _create(a, "os2")
    att_a = a.ok("POST", "/v1/disks/os2/attach", {"vm": "vm-a"})
    ha = connect(att_a["socket"])
    ha.pwrite(_block(b"1"), 0)
    ha.flush()
    b.ok("POST", "/v1/disks/os2/attach", {"vm": "vm-b", "force": True})
    t0 = time.monotonic()
    errors: list[str] = []
    while time.monotonic() - t0 < 8:
        err = nbd_errno(lambda: ha.pwrite(_block(b"X"), 4096))
        if err is not None:
            errors.append(err)
            break
        time.sleep(0.05)
    assert errors, "A's export still takes writes 8 s after B took the disk"
    assert errors[0] in ("EPERM", "?"), errors
    for call in (lambda: ha.pread(4096, 0), ha.flush, lambda: ha.pwrite(_block(b"Y"), 0)):
        assert nbd_errno(call) is not None  # EPERM, or the connection is gone
    wait_for(lambda: not pid_alive(att_a["pid"]), 10, "A's fenced export to be stopped")
    att_b = b.ok("GET", "/v1/disks/os2")["attachment"]
    hb = connect(att_b["socket"])
    assert hb.pread(8192, 0) == _block(b"1") + bytes(4096)


def test_an_idle_export_asks_the_store_nothing_and_stops_when_its_disk_is_taken(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """Issue #21: an attached disk nobody uses sends no store request (its export's counters
    stand still for 12 s); when B force-attaches it, A notices from its one listing of the disk
    records for all its disks (every 5 s) and stops the export, though no request ever came."""
    a, b = hosts
    _create(a, "idle1", caching="readwrite")
    att_a = a.ok("POST", "/v1/disks/idle1/attach", {"vm": "vm-a"})
    h = connect(att_a["socket"])
    h.pwrite(_block(b"i"), 0)
    h.flush()
    h.shutdown()
    stats = contract.stats_path(Path(att_a["socket"]))
    time.sleep(2)  # the fence check's last look after the last request
    before = _store_requests(stats)
    time.sleep(12)
    assert _store_requests(stats) == before, "an idle export sent store requests"
    att_b = b.ok("POST", "/v1/disks/idle1/attach", {"vm": "vm-b", "force": True})
    t0 = time.monotonic()
    wait_for(lambda: not pid_alive(att_a["pid"]), 12, "A's export of a disk B took to stop")
    assert time.monotonic() - t0 < 8  # one 5 s pass of A's watch, and its supervisor's check
    assert a.ok("GET", "/v1/disks/idle1")["attachment"]["host"] == att_b["host"]
    assert connect(att_b["socket"]).pread(4096, 0) == _block(b"i")


def _store_requests(stats: Path) -> int:
    """The export's store requests of every kind, from the next stats snapshot (every 2 s)."""
    mtime = stats.stat().st_mtime
    wait_for(lambda: stats.stat().st_mtime != mtime, 10, "the next stats snapshot")
    counters = json.loads(stats.read_text())["store"]
    kinds = ("gets", "puts", "conditional_puts", "deletes", "lists", "heads")
    return sum(counters[k] for k in kinds)


def _serves(socket: str) -> bool:
    try:
        h = connect(socket)
        h.pread(4096, 0)
        h.shutdown()
    except nbd.Error:
        return False
    return True


def test_a_failed_force_attach_leaves_the_record_as_it_was(
    hosts: tuple[ServeHost, ServeHost], proxy: FaultProxy
) -> None:
    """Item 2's failure half: a force-attach whose export cannot start (A's data path to the
    store is away) answers 503 and leaves the record naming the old holder, never "no
    attachment"; the old holder serves the disk on the socket it returned, with its data."""
    a, b = hosts
    _create(b, "os5")
    att_b = b.ok("POST", "/v1/disks/os5/attach", {"vm": "vm-b"})
    hb = connect(att_b["socket"])
    hb.pwrite(_block(b"X"), 0)
    hb.flush()
    hb.shutdown()
    proxy.arm("down", path="/seg/")
    status, body = a.call("POST", "/v1/disks/os5/attach", {"vm": "vm-a", "force": True})
    assert status == 503, body
    proxy.clear()
    att = b.ok("GET", "/v1/disks/os5")["attachment"]
    assert (att["host"], att["vm"]) == (att_b["host"], "vm-b"), att
    wait_for(lambda: _serves(att_b["socket"]), 20, "B to serve the disk again")
    hb = connect(att_b["socket"])
    assert hb.pread(4096, 0) == _block(b"X")
    hb.pwrite(_block(b"Y"), 4096)
    hb.flush()
    hb.shutdown()


def test_a_journal_is_dealt_with_before_a_restart_in_another_mode(
    hosts: tuple[ServeHost, ServeHost], proxy: FaultProxy
) -> None:
    """Item 3: L is acknowledged from A's journal while A's store is away; A stops; caching is
    changed to none; A comes back and must make L durable before serving (not ignore it); M
    is then written durably; back to readwrite and another restart must not replay the old
    journal over M."""
    a, b = hosts
    _create(a, "os3")
    att = a.ok("POST", "/v1/disks/os3/attach", {"vm": "vm-a"})
    h = connect(att["socket"])
    h.pwrite(_block(b"K"), 0)
    h.flush()
    proxy.arm("down")
    h.pwrite(_block(b"L"), 0)  # acknowledged from the journal only
    h.shutdown()
    a.stop()  # its export cannot upload L: the journal stays behind
    proxy.clear()
    b.ok("PATCH", "/v1/disks/os3", {"caching": "none"})
    a.start()
    att = a.ok("GET", "/v1/disks/os3")["attachment"]
    h = connect(att["socket"])
    assert h.pread(4096, 0) == _block(b"L"), "the acknowledged write L was lost"
    h.pwrite(_block(b"M"), 0, nbd.CMD_FLAG_FUA)
    h.shutdown()
    b.ok("PATCH", "/v1/disks/os3", {"caching": "readwrite"})
    a.stop()
    a.start()
    att = a.ok("GET", "/v1/disks/os3")["attachment"]
    h = connect(att["socket"])
    assert h.pread(4096, 0) == _block(b"M"), "an old journal was replayed over M"
    h.shutdown()


def test_detach_flushes_how_the_export_runs_and_keeps_what_it_cannot_store(
    hosts: tuple[ServeHost, ServeHost], proxy: FaultProxy
) -> None:
    """Item 4: after a caching PATCH on an attached readwrite disk, detach must still flush
    the journal; with the store away it answers 503 and the disk stays attached, journal kept;
    once the store is back the detach succeeds and the write is there for the next holder."""
    a, b = hosts
    _create(a, "os4")
    att = a.ok("POST", "/v1/disks/os4/attach", {"vm": "vm-a"})
    h = connect(att["socket"])
    proxy.arm("down", path="/seg/")  # A's disk data path is away, its records are not
    h.pwrite(_block(b"L"), 65536)  # acknowledged from the journal only
    h.shutdown()
    b.ok("PATCH", "/v1/disks/os4", {"caching": "none"})
    status, body = a.call("POST", "/v1/disks/os4/detach")
    assert status == 503, body
    assert "stays attached" in body["detail"] or "flush" in body["detail"], body
    assert a.ok("GET", "/v1/disks/os4")["attachment"]["host"] == att["host"]
    proxy.clear()
    a.ok("POST", "/v1/disks/os4/detach")
    att_b = b.ok("POST", "/v1/disks/os4/attach", {"vm": "vm-b"})
    hb = connect(att_b["socket"])
    assert hb.pread(4096, 65536) == _block(b"L"), "detach lost an acknowledged write"
    hb.shutdown()


def test_detach_refuses_while_a_client_is_connected_unless_forced(
    hosts: tuple[ServeHost, ServeHost],
) -> None:
    """Item 6: a VM still using the disk makes detach a 409 that says how many clients are
    connected; force: true detaches anyway (after making acknowledged writes durable), and
    the client's next request fails."""
    a, _b = hosts
    _create(a, "data6", kind="data")
    att = a.ok("POST", "/v1/disks/data6/attach", {"vm": "vm-a"})
    h1, h2 = connect(att["socket"]), connect(att["socket"])
    h1.pwrite(_block(b"D"), 0)
    status, body = a.call("POST", "/v1/disks/data6/detach")
    assert status == 409, body
    assert "2 NBD client(s) connected" in body["detail"], body
    assert a.ok("GET", "/v1/disks/data6")["attachment"] is not None
    h2.shutdown()
    status, body = a.call("POST", "/v1/disks/data6/detach", {"force": False})
    assert status == 409 and "1 NBD client(s)" in body["detail"], body
    a.ok("POST", "/v1/disks/data6/detach", {"force": True})
    assert nbd_errno(lambda: h1.pread(4096, 0)) is not None
    att = a.ok("POST", "/v1/disks/data6/attach", {"vm": "vm-a"})
    assert connect(att["socket"]).pread(4096, 0) == _block(b"D")


@pytest.mark.parametrize("kind", ["data", "os"])
def test_kill_detach_attach_cycles_keep_the_returned_socket(
    hosts: tuple[ServeHost, ServeHost], kind: str
) -> None:
    """Item 9: kill -9 of the disk's nbdkit, then detach, then attach, over and over, with the
    detach landing at every phase of the supervisor's restart: the URI attach returned always
    connects, also a while later (one export per disk per host; a late stop never removes the
    socket of the export that replaced it), and every flushed write is there."""
    a, _b = hosts
    name = f"{kind}9"
    _create(a, name, kind=kind)
    for i in range(7):
        att = a.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm-a"})
        time.sleep(1.5)  # a superseded restart finishing late would have removed it by now
        h = nbd.NBD()
        h.connect_uri(att["nbd_uri"])
        if i:
            assert h.pread(4096, (i - 1) * 4096) == _block(b"%d" % (i - 1))
        h.pwrite(_block(b"%d" % i), i * 4096)
        h.flush()
        h.shutdown()
        os.kill(att["pid"], signal.SIGKILL)
        time.sleep(0.25 * i)  # before, during and after the supervisor's restart
        a.ok("POST", f"/v1/disks/{name}/detach")
    # Issue #15 point 8: nothing was lost, so nothing may say so.
    assert "stale" not in a.log_tail(200000) and "discard" not in a.log_tail(200000)


def test_a_restarted_export_is_in_the_record_whole(hosts: tuple[ServeHost, ServeHost]) -> None:
    """After the supervisor restarts a killed export, the attachment still says how to reach
    the disk (socket, URI, QEMU and libvirt snippets, target) and names the new process and
    epoch (found by the thrasher: they were dropped)."""
    a, _b = hosts
    _create(a, "os7")
    before = a.ok("POST", "/v1/disks/os7/attach", {"vm": "vm-a"})
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, object] | None:
        att = a.ok("GET", "/v1/disks/os7")["attachment"]
        pid = att.get("pid")
        return att if pid and pid != before["pid"] and pid_alive(int(pid)) else None

    after = wait_for(restarted, 15, "the restarted export in the record")
    for key in ("socket", "nbd_uri", "qemu_blockdev", "libvirt_xml", "target", "caching"):
        assert after[key] == before[key], key
    assert after["epoch"] > before["epoch"]
    assert a.ok("POST", "/v1/disks/os7/attach", {"vm": "vm-a"})["pid"] == after["pid"]
    connect(after["socket"]).shutdown()
