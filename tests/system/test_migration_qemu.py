"""Live migration with real QEMU (issue #17's "Done when"): a guest writing all the time moves
between two `blockstore serve` hosts over one bucket ten times, and loses no write it saw
acknowledged.

The guest (`bsguest=stream`, tests/support/guestimage.py) writes numbered 4 KiB records to its
raw OS disk (caching `readwrite`, the hardest mode: an acknowledged write may live only in the
serving host's cache until a flush), each with fsync, and prints `ack i` on its serial console
once record i is durable. The disk is attached on host A; every migration goes the way QEMU's
shared-storage protocol does: the destination host's API starts the incoming export
(`POST .../migration`), a second QEMU starts there with the destination's `qemu_blockdev` and
`-incoming`, the source QEMU migrates to it over a unix socket (QMP `migrate`), then the test
calls `complete` on the destination, quits the source QEMU and checks the record and that the
guest goes on writing on the destination. Ten migrations ping-pong A -> B -> A ...

It checks what the protocol rests on and what it promises: the destination QEMU starts and
connects without switching the disk over (the record still shows the migration once its monitor
answers); the source's flush at stop makes its cached writes visible to the destination; no
guest write fails (no `FAIL`: a source fenced too early shows as one), the guest writes on after
every migration, and every record acknowledged on any console holds exactly its content when
read back from the last host's export at the end.

It measures, per migration: the pause the guest saw (the longest gap, on the host's monotonic
clock as a thread tailing each console file saw the lines, between two consecutive acks on the
source's and the destination's consoles; it includes the guest's own gap between records),
QEMU's reported `downtime`, and the service's `last_migration.switchover_ms`. It prints a table
with the median and worst of each, and writes them as JSON to $BLOCKSTORE_MIGRATION_REPORT when
set.

Slow (under a minute on two cores: a TCG boot of a few seconds, then about 2 s a migration):
`nice .venv/bin/pytest -q -s -m slow tests/system/test_migration_qemu.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.guestimage import RECORD_BYTES, GuestImage, build_guest_image, record
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, connect, wait_for

DISK = "mig-disk"
VM = "mig-vm"
DISK_BYTES = 256 << 20  # 65536 records: more than the guest writes in a run
MIGRATIONS = 10
ACKS_PER_STAY = 10  # acks on each new host before the guest moves on
BOOT_TIMEOUT = 300.0  # TCG on two shared cores; a boot here takes about 5-15 s
MIGRATE_TIMEOUT = 180.0
ACK = re.compile(r"BSGUEST ack (\d+)")
_n = itertools.count()


# --- QEMU: its monitor, its console, one process ----------------------------------------------


class Qmp:
    """QEMU's monitor protocol on a unix socket: JSON lines; events (no `return`) are skipped."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = wait_for(lambda: _connected(path), timeout, f"QMP on {path}")
        self.lines = self.sock.makefile("rb")
        assert "QMP" in json.loads(self.lines.readline())  # the greeting
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            line = self.lines.readline()
            if not line:
                raise EOFError(f"QMP closed during {name}")
            answer = json.loads(line)
            if "error" in answer:
                raise AssertionError(f"QMP {name} {arguments}: {answer['error']}")
            if "return" in answer:
                return answer["return"]

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def _connected(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    return s


class ConsoleTail(threading.Thread):
    """Reads a console file as QEMU writes it; every chunk is stamped with the host's monotonic
    clock when it was seen (polled every 2 ms: the pause figures' resolution)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.chunks: list[tuple[float, bytes]] = []
        self.done = threading.Event()

    def run(self) -> None:
        wait_for(self.path.exists, 60, f"console {self.path}", step=0.01)
        with open(self.path, "rb") as f:
            while True:
                stopping = self.done.is_set()  # read once more after the stop was asked
                data = f.read()
                if data:
                    self.chunks.append((time.monotonic(), data))
                elif stopping:
                    return
                else:
                    time.sleep(0.002)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


class Qemu:
    """One QEMU process of the VM: its own QMP socket, console file and log."""

    def __init__(
        self, work: Path, index: int, image: GuestImage, att: dict[str, Any], incoming: Path | None
    ) -> None:
        self.index = index
        console, qmp = work / f"c{index}.log", work / f"q{index}.qmp"
        args = [
            "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{console}", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
            "-append", "console=ttyS0 panic=-1 quiet bsguest=stream",
            "-blockdev", att["qemu_blockdev"],  # as the API returned it
            "-device", f"virtio-blk-pci,drive={att['qemu_node_name']},id=vd0",
        ]  # fmt: skip
        if incoming is not None:
            args += ["-incoming", f"unix:{incoming}"]
        self.log = work / f"qemu{index}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.tail = ConsoleTail(console)
        self.tail.start()
        self.qmp = Qmp(qmp, 60)

    def quit(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            self.qmp.command("quit")
        assert self.proc.wait(60) == 0, self.log.read_text(errors="replace")
        self.qmp.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.tail.stop()


@dataclass(frozen=True)
class Line:
    vm: int  # the QEMU process whose console the line ended on
    seen: float  # host monotonic clock
    text: str


class Vm:
    """The migrating VM: its QEMU processes in order, and the console they print together."""

    def __init__(self, work: Path, image: GuestImage) -> None:
        self.work, self.image = work, image
        self.qemus: list[Qemu] = []

    def start(self, att: dict[str, Any], incoming: Path | None = None) -> Qemu:
        qemu = Qemu(self.work, len(self.qemus), self.image, att, incoming)
        self.qemus.append(qemu)
        return qemu

    def lines(self) -> list[Line]:
        """The console's complete lines. The serial device's state moves with the guest, so
        the consoles of successive processes concatenate (a line may begin on one, end on the
        next)."""
        out: list[Line] = []
        pending = b""
        for qemu in self.qemus:
            for seen, data in list(qemu.tail.chunks):
                *done, pending = (pending + data).split(b"\n")
                out += [Line(qemu.index, seen, d.decode(errors="replace").strip()) for d in done]
        return out

    def acks(self) -> list[tuple[int, Line]]:
        return [(int(m.group(1)), line) for line in self.lines() if (m := ACK.search(line.text))]

    def wait_acks(self, on: int, count: int, timeout: float) -> None:
        """Until `count` acks have ended on QEMU process `on`'s console."""

        def enough() -> bool:
            assert not self.failures(), self.console()
            assert self.qemus[on].proc.poll() is None, self.qemus[on].log.read_text()
            return sum(line.vm == on for _, line in self.acks()) >= count

        wait_for(enough, timeout, f"{count} acks from QEMU {on}", step=0.05)

    def failures(self) -> list[str]:
        return [line.text for line in self.lines() if "BSGUEST FAIL" in line.text]

    def console(self, n: int = 3000) -> str:
        return "\n".join(line.text for line in self.lines())[-n:]

    def close(self) -> None:
        for qemu in self.qemus:
            qemu.kill()


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_guest_image()


@pytest.fixture
def work() -> Iterator[Path]:
    """Short paths: a unix socket's path is at most 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bs-mig-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hosts(seaweed: SeaweedServer, work: Path) -> Iterator[tuple[ServeHost, ServeHost]]:
    """Hosts A and B over one prefix of the test bucket."""
    prefix = f"migqemu-{next(_n)}-{os.getpid()}/"
    pair = tuple(
        ServeHost(
            work / home,
            endpoint=seaweed.endpoint,
            bucket=seaweed.bucket,
            prefix=prefix,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        ).start()
        for home in ("a", "b")
    )
    yield pair  # type: ignore[misc]
    for host in pair:
        host.stop()


@pytest.fixture
def vm(work: Path, image: GuestImage) -> Iterator[Vm]:
    machine = Vm(work, image)
    yield machine
    machine.close()


# --- one migration -----------------------------------------------------------------------------


def _migrate(
    vm: Vm, src: Qemu, dst_host: ServeHost, *, complete: bool
) -> tuple[Qemu, dict[str, Any]]:
    """Move the running guest from `src` to a new QEMU on `dst_host`, as the protocol goes; the
    new QEMU and what QEMU and the service measured. With `complete`, the test calls
    `complete` once QEMU is done (as a libvirt hook would); without it, nobody does: the guest's
    first write on the destination is what switches the disk over."""
    disk = dst_host.ok("POST", f"/v1/disks/{DISK}/migration", {"vm": VM})
    block = disk["migration"]
    assert block["state"] == "incoming" and block["vm"] == VM, block
    channel = vm.work / f"m{len(vm.qemus)}.sock"
    dst = vm.start(block, incoming=channel)
    assert dst.qmp.command("query-status")["status"] == "inmigrate"
    early = dst_host.ok("GET", f"/v1/disks/{DISK}")
    assert early.get("migration") and early["attachment"]["host"] == block["from_host"], (
        "the destination QEMU's start-up switched the disk over while the guest ran on the "
        f"source: {early.get('last_migration')}"
    )
    wait_for(channel.exists, 60, "the destination QEMU's migration socket")
    src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
    src.qmp.command("migrate", uri=f"unix:{channel}")
    info = wait_for(lambda: _migration_ended(src), MIGRATE_TIMEOUT, "QEMU's migration", 0.02)
    assert info["status"] == "completed", (info, dst.log.read_text(errors="replace"), vm.console())
    if complete:
        done = dst_host.ok("POST", f"/v1/disks/{DISK}/migration/complete")
    else:
        done = wait_for(
            lambda: (d := dst_host.ok("GET", f"/v1/disks/{DISK}")).get("migration") is None and d,
            60,
            "the guest's first write on the destination to switch the disk over",
        )
    src.quit()
    assert done["attachment"]["host"] == block["to_host"], done
    assert done.get("migration") is None, done
    vm.wait_acks(dst.index, ACKS_PER_STAY, 120)  # the guest writes on at the destination
    last = dst_host.ok("GET", f"/v1/disks/{DISK}")["last_migration"]
    assert last["state"] == "completed" and last["to_host"] == block["to_host"], last
    assert last["from_host"] == block["from_host"], last
    return dst, {
        "trigger": "complete" if complete else "first write",
        "from": block["from_host"],
        "to": block["to_host"],
        "downtime_ms": float(info["downtime"]),
        "total_ms": float(info["total-time"]),
        "switchover_ms": float(last["switchover_ms"]),
    }


def _migration_ended(src: Qemu) -> dict[str, Any] | None:
    info: dict[str, Any] = src.qmp.command("query-migrate")
    return info if info.get("status") in ("completed", "failed", "cancelled") else None


# --- checks and the report ---------------------------------------------------------------------


def _pauses(vm: Vm) -> list[float]:
    """Per migration m: the longest gap between two consecutive acks (host time) among those
    on QEMU m's and QEMU m+1's consoles: the longest the guest waited for a write around the
    switchover. (Not just "last ack on m to first ack on m+1": a record written on the source
    may be acknowledged on the destination's console once the guest resumes, before any
    write reaches the destination.)"""
    acks = vm.acks()
    out = []
    for m in range(len(vm.qemus) - 1):
        seen = sorted(line.seen for _, line in acks if line.vm in (m, m + 1))
        out.append(round(max(b - a for a, b in itertools.pairwise(seen)) * 1000, 1))
    return out


def _usual_gap(vm: Vm) -> float:
    """The guest's median gap between two acks on one console (ms): the pause's baseline."""
    acks = vm.acks()
    gaps = [b.seen - a.seen for (_, a), (_, b) in itertools.pairwise(acks) if a.vm == b.vm]
    return round(statistics.median(gaps) * 1000, 1)


def _verify_disk(vm: Vm, host: ServeHost) -> int:
    """Every record the guest saw acknowledged holds exactly its content; the number of them.

    The acks must be 0, 1, 2, ... with none missing: the guest writes in order and stops at
    nothing but a failure (which would print FAIL), so a gap would mean a lost console line."""
    numbers = [i for i, _ in vm.acks()]
    assert numbers == list(range(len(numbers))), vm.console()
    assert len(numbers) * RECORD_BYTES <= DISK_BYTES
    h = connect(host.ok("GET", f"/v1/disks/{DISK}")["attachment"]["socket"])
    try:
        step = 1024  # records per read: 4 MiB
        for start in range(0, len(numbers), step):
            count = min(step, len(numbers) - start)
            data = h.pread(count * RECORD_BYTES, start * RECORD_BYTES)
            for k in range(count):
                got = data[k * RECORD_BYTES : (k + 1) * RECORD_BYTES]
                assert got == record(start + k), f"record {start + k}: {got[:32]!r}"
    finally:
        h.shutdown()
    return len(numbers)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "worst": max(values)}


def _report(rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    keys = ("pause_ms", "downtime_ms", "switchover_ms", "total_ms")
    print(
        f"\n{'#':>3} {'trigger':>12} {'from':>14} {'to':>14} " + " ".join(f"{k:>14}" for k in keys)
    )
    for n, row in enumerate(rows, 1):
        cells = " ".join(f"{row[k]:>14.1f}" for k in keys)
        print(f"{n:>3} {row['trigger']:>12} {row['from'][:14]:>14} {row['to'][:14]:>14} {cells}")
    summary = {k: _summary([row[k] for row in rows]) for k in keys}
    for k in keys:
        print(f"{k:>14}: median {summary[k]['median']:.1f}, worst {summary[k]['worst']:.1f}")
    print(", ".join(f"{k} {v}" for k, v in extra.items()))
    report = {"migrations": rows, "summary": summary, **extra}
    if path := os.environ.get("BLOCKSTORE_MIGRATION_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    return report


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_live_migrations_of_a_writing_guest_lose_no_acknowledged_write(
    hosts: tuple[ServeHost, ServeHost], vm: Vm
) -> None:
    began = time.monotonic()
    a = hosts[0]
    body = {"name": DISK, "size_bytes": DISK_BYTES, "kind": "os", "caching": "readwrite"}
    a.ok("POST", "/v1/disks", body)
    qemu = vm.start(a.ok("POST", f"/v1/disks/{DISK}/attach", {"vm": VM}))
    vm.wait_acks(0, ACKS_PER_STAY, BOOT_TIMEOUT)
    booted = time.monotonic() - began
    rows = []
    for m in range(MIGRATIONS):
        qemu, row = _migrate(vm, qemu, hosts[(m + 1) % 2], complete=m % 2 == 0)
        rows.append(row)
    final = hosts[MIGRATIONS % 2]
    vm.wait_acks(qemu.index, 3 * ACKS_PER_STAY, 120)  # some more after the last migration
    qemu.quit()
    vm.close()  # every console read to its end
    assert not vm.failures(), vm.console()
    for row, pause in zip(rows, _pauses(vm), strict=True):
        row["pause_ms"] = pause
    verified = _verify_disk(vm, final)
    counts = [sum(line.vm == q.index for _, line in vm.acks()) for q in vm.qemus]
    assert all(c >= ACKS_PER_STAY for c in counts), counts  # writing after every migration
    report = _report(rows, {
        "records_verified": verified,
        "usual_gap_ms": _usual_gap(vm),
        "boot_s": round(booted, 1),
        "test_s": round(time.monotonic() - began, 1),
    })  # fmt: skip
    assert report["summary"]["pause_ms"]["worst"] < 30_000
