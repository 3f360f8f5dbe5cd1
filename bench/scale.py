"""A hundred attached disks on one host (issue #21): what they cost in memory, CPU and store
requests while idle, how fast an attach answers among them, and how long `blockstore serve`
takes to start with all of them to resume. Not a test: prints a Markdown table for the README.

    .venv/bin/python bench/scale.py [--disks 100] [--steps 1,10,50,100] [--idle 60]
    .venv/bin/python bench/scale.py --per-mode     # one idle disk of each caching mode alone

A real `blockstore serve` with its embedded SeaweedFS, in a temporary home; disks of 64 MiB,
caching cycling none, readonly, readwrite; each attached disk is one nbdkit process
(blockstore/host/supervisor.py). At each step, after the attaches, the disks sit idle for
`--idle` seconds (after `--settle`: an export's first GC pass, a minute after it opens the
disk, looks at the store once before it finds nothing to do) and we read:

- memory: the sum over the nbdkit processes of their proportional set size (PSS, from
  /proc/<pid>/smaps_rollup: shared pages counted once across processes, the figure that adds
  up to what the host gives them), their RSS sum for comparison, and the service's own RSS;
- CPU: utime + stime of every nbdkit process over the idle window, as a share of one core;
- store requests: from each export's own counters (its stats file, via the service's /metrics
  `blockstore_disk_store_requests`), per disk per minute;
- attach latency: the API call of the last disk attached at that step (median of the last 5).

Then the service is stopped (SIGTERM: the exports stop with it) and started again: the time
until /healthz answers and until every disk's export serves again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin" / "blockstore"
MODES = ("none", "readonly", "readwrite")


class Service:
    """`blockstore serve` on a free port in `home`, and its API."""

    def __init__(self, home: Path) -> None:
        self.home = home
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; the seconds until /healthz answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKSTORE_")}
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--home", str(self.home), "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return time.monotonic() - t0
            except OSError:
                if self.proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError("blockstore serve did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(300)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        token = (self.home / "api-token").read_text().strip()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
            return json.loads(text) if r.headers.get("Content-Type") == "application/json" else text


def kib(pid: int, field: str, file: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_requests(svc: Service, family: str = "blockstore_disk_store_requests") -> float:
    """Store requests so far, from the service's /metrics: every export's (the default), or
    the service's own (`blockstore_store_requests`: the disk records, the health probe)."""
    total = 0.0
    for line in svc.call("GET", "/metrics").decode().splitlines():
        if line.startswith(family + "_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pids(svc: Service) -> list[int]:
    return [int(d["attachment"]["pid"]) for d in svc.call("GET", "/v1/disks")["disks"]
            if d.get("attachment") and d["attachment"].get("pid")]  # fmt: skip


def idle_figures(svc: Service, n: int, idle: float, settle: float) -> dict[str, float]:
    procs = pids(svc)
    assert len(procs) == n, f"{len(procs)} exports for {n} attached disks"
    time.sleep(settle)  # past the first GC pass of the last disk attached (60 s after open)
    host0 = store_requests(svc, "blockstore_store_requests")
    cpu0, req0, t0 = sum(cpu_seconds(p) for p in procs), store_requests(svc), time.monotonic()
    time.sleep(idle)
    cpu1, req1, dt = sum(cpu_seconds(p) for p in procs), store_requests(svc), time.monotonic() - t0
    host1 = store_requests(svc, "blockstore_store_requests")
    assert svc.proc is not None
    return {
        "pss_mib": sum(kib(p, "Pss", "smaps_rollup") for p in procs) / 1024,
        "rss_mib": sum(kib(p, "VmRSS", "status") for p in procs) / 1024,
        "service_rss_mib": kib(svc.proc.pid, "VmRSS", "status") / 1024,
        "cpu_pct": (cpu1 - cpu0) / dt * 100,
        "requests_per_disk_min": (req1 - req0) / n / (dt / 60),
        "service_requests_min": (host1 - host0) / (dt / 60),
    }


def _resumed(svc: Service, before: set[int], n: int) -> bool:
    """Every disk's record names a new export process, and each one runs."""
    now = pids(svc)
    return len(now) == n and not before & set(now) and all(Path(f"/proc/{p}").exists() for p in now)


def attach(svc: Service, i: int, mode: str | None = None) -> float:
    name = f"d{i:03d}"
    svc.call("POST", "/v1/disks", {"name": name, "size_bytes": 64 << 20, "kind": "data",
                                   "caching": mode or MODES[i % 3]})  # fmt: skip
    t0 = time.monotonic()
    svc.call("POST", f"/v1/disks/{name}/attach", {"vm": f"vm{i:03d}"})
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", type=int, default=100)
    ap.add_argument("--steps", default="1,10,50,100")
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=65.0)
    ap.add_argument("--per-mode", action="store_true", help="one disk of each mode, alone")
    args = ap.parse_args()
    if args.per_mode:
        per_mode(args.idle, args.settle)
        return
    steps = [int(s) for s in args.steps.split(",") if int(s) <= args.disks]
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as t:
        svc = Service(Path(t) / "home")
        svc.start()
        try:
            lat: list[float] = []
            for i in range(args.disks):
                lat.append(attach(svc, i))
                if i + 1 in steps:
                    fig = idle_figures(svc, i + 1, args.idle, args.settle)
                    fig["attach_s"] = statistics.median(lat[-5:])
                    rows.append((str(i + 1), i + 1, fig))
                    print(i + 1, json.dumps(fig), flush=True)
            before = set(pids(svc))
            svc.stop()
            healthy = svc.start()
            t0 = time.monotonic()
            while not _resumed(svc, before, args.disks) and time.monotonic() - t0 < 600:
                time.sleep(0.2)
            resumed = healthy + time.monotonic() - t0
            print(f"restart: /healthz after {healthy:.1f} s, every export serving after "
                  f"{resumed:.1f} s ({len(pids(svc))} of {args.disks})", flush=True)  # fmt: skip
        finally:
            svc.stop()
    table(rows, args.idle)


def per_mode(idle: float, settle: float) -> None:
    """One attached disk of each caching mode, measured alone (detached and deleted after)."""
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as t:
        svc = Service(Path(t) / "home")
        svc.start()
        try:
            for i, mode in enumerate(MODES):
                took = attach(svc, i, mode)
                fig = idle_figures(svc, 1, idle, settle)
                fig["attach_s"] = took
                rows.append((f"1 ({mode})", 1, fig))
                print(mode, json.dumps(fig), flush=True)
                svc.call("POST", f"/v1/disks/d{i:03d}/detach", {})
                svc.call("DELETE", f"/v1/disks/d{i:03d}")
        finally:
            svc.stop()
    table(rows, idle)


def table(rows: list[tuple[str, int, dict[str, float]]], idle: float) -> None:
    """The README's table: a row per (label, attached disks, figures)."""
    print(f"\n{platform.node()}, {os.cpu_count()} cores, idle window {idle:g} s\n")
    print("| attached disks | nbdkit PSS (sum) | per disk | nbdkit RSS (sum) | service RSS | "
          "nbdkit CPU, idle | requests / disk / min | service's / min | attach |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, n, f in rows:
        print(f"| {label} | {f['pss_mib']:,.0f} MiB | {f['pss_mib'] / n:.1f} MiB | "
              f"{f['rss_mib']:,.0f} MiB | {f['service_rss_mib']:.0f} MiB | "
              f"{f['cpu_pct']:.1f}% of a core | {f['requests_per_disk_min']:.2f} | "
              f"{f['service_requests_min']:.1f} | "
              f"{f['attach_s'] * 1000:.0f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
