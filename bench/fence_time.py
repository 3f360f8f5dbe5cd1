"""Time to fence a writer that keeps writing (issue #14, item 2).

Not a test: prints figures for docs/format.md. An *old writer* (a `Volume` in a subprocess, as
on another host) does durable writes at a fixed queue depth; once it has written for a second,
this process opens the same disk writable (`Volume.open`, a new epoch). Per run it records:

- open: from calling `Volume.open(writable=True)` until it returns;
- fence: until BOTH the open has returned and the old writer's next commit has failed with
  `Fenced` (the old writer reports when its first commit failed, on the shared monotonic clock).

After each run it checks that every write the old writer acknowledged reads back from the new
writer. Stores: the embedded SeaweedFS (`weed mini`, blockstore/host/embedded.py) and a
multi-process cluster (`weed master -defaultReplication=001`, two `weed volume`,
`weed filer -maxMB=1`, `weed s3 -config FILE`), all on 127.0.0.1 with data in a temporary
directory, stopped at the end.

    .venv/bin/python bench/fence_time.py [--runs 20] [--stores embedded,cluster]
        [--loads 4k-qd8,1m-qd4]

To time the algorithm of another commit, put its tree first on PYTHONPATH (both this process and
the old writer import `blockstore` from there), e.g. with `git archive <commit> blockstore`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from blockstore.engine.volume import Volume, VolumeConfig
from blockstore.errors import BlockstoreError, Fenced
from blockstore.host.embedded import Credentials, EmbeddedSeaweed, free_ports, weed_binary
from blockstore.store.retry import RetryConfig, RetryingStore
from blockstore.store.s3 import S3Config, S3Store

KiB, MiB = 1024, 1024 * 1024
BUCKET = "fence-bench"
LOADS = {"4k-qd8": (4 * KiB, 8), "1m-qd4": (MiB, 4)}
DISK_SIZE = 1 << 30
WARMUP = 1.0  # seconds the old writer writes before the new writer opens


def make_store(cfg: S3Config) -> RetryingStore:
    return RetryingStore(S3Store(cfg), RetryConfig(deadline_seconds=30))


def vol_config() -> VolumeConfig:
    return VolumeConfig(gc_interval_seconds=0)


# -- the old writer (subprocess) ------------------------------------------------------------


def old_writer(cfg: S3Config, disk: str, size: int, qd: int) -> None:
    """Write until fenced. Prints a JSON line when warmed up (with the segment rate so far),
    then one at the end: first Fenced time, acknowledged writes."""
    v = Volume.open(make_store(cfg), disk, config=vol_config())
    acked: list[list[int]] = [[] for _ in range(qd)]
    fenced_at: list[float] = []
    started = time.monotonic()
    payload = os.urandom(size)

    def lane(k: int) -> None:
        i = k
        while True:
            off = (i * size) % DISK_SIZE
            try:
                v.write(off, payload[:8] + i.to_bytes(8, "little") + payload[16:], durable=True)
            except Fenced:
                fenced_at.append(time.monotonic())
                return
            except BlockstoreError as exc:
                print(json.dumps({"error": repr(exc)}), flush=True)
                return
            acked[k].append(i)
            i += qd

    threads = [threading.Thread(target=lane, args=(k,), daemon=True) for k in range(qd)]
    for t in threads:
        t.start()
    time.sleep(WARMUP)
    rate = v.stats.segments_written / (time.monotonic() - started)
    print(json.dumps({"ready": time.monotonic(), "rate": rate}), flush=True)
    for t in threads:
        t.join()
    n = sum(len(a) for a in acked)
    print(
        json.dumps(
            {
                "fenced_at": min(fenced_at) if fenced_at else None,
                "segments": v.stats.segments_written,
                "seconds": time.monotonic() - started,
                "acked": sorted(i for a in acked for i in a),
                "writes": n,
            }
        ),
        flush=True,
    )
    v.abandon()


# -- stores ---------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded(tmp: Path, creds: Credentials) -> Iterator[S3Config]:
    server = EmbeddedSeaweed(tmp / "mini", creds)
    server.start()
    try:
        cfg = S3Config(server.endpoint, BUCKET, creds.access_key, creds.secret_key)
        raw = S3Store(cfg)
        raw.ensure_bucket()
        raw.close()
        yield cfg
    finally:
        server.stop()


@contextlib.contextmanager
def cluster(tmp: Path, creds: Credentials) -> Iterator[S3Config]:
    """master (replication 001: a second copy on another volume server), two volume servers,
    a filer with 1 MiB chunks and an S3 gateway; every port on 127.0.0.1."""
    weed = weed_binary()
    master, vol1, vol2, filer, s3 = free_ports(5)
    (tmp / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "bench",
                        "credentials": [
                            {"accessKey": creds.access_key, "secretKey": creds.secret_key}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    for d in ("m", "v1", "v2", "f"):
        (tmp / d).mkdir()
    local = ["-ip", "127.0.0.1", "-ip.bind", "127.0.0.1"]
    cmds = [
        [weed, "master", f"-port={master}", f"-mdir={tmp / 'm'}", "-defaultReplication=001",
         "-volumeSizeLimitMB=256", *local],
        [weed, "volume", f"-port={vol1}", f"-dir={tmp / 'v1'}", f"-master=127.0.0.1:{master}",
         "-max=20", *local],
        [weed, "volume", f"-port={vol2}", f"-dir={tmp / 'v2'}", f"-master=127.0.0.1:{master}",
         "-max=20", *local],
        [weed, "filer", f"-port={filer}", f"-master=127.0.0.1:{master}", "-maxMB=1", *local],
        [weed, "s3", f"-port={s3}", f"-filer=127.0.0.1:{filer}", f"-config={tmp / 's3.json'}",
         *local],
    ]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "weed.log", "ab")  # noqa: SIM115 - handed to the children
    try:
        for cmd in cmds:
            procs.append(
                subprocess.Popen(cmd, cwd=tmp / "f", stdout=log, stderr=log, start_new_session=True)
            )
            time.sleep(1.0)
        cfg = S3Config(f"http://127.0.0.1:{s3}", BUCKET, creds.access_key, creds.secret_key)
        deadline = time.monotonic() + 120
        while True:  # ready once a PUT lands: the first one waits for volumes to be grown
            try:
                raw = S3Store(cfg)
                raw.ensure_bucket()
                raw.put("probe", b"x")
                raw.close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield cfg
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


# -- one run --------------------------------------------------------------------------------


def one_run(cfg: S3Config, disk: str, size: int, qd: int, timeout: float) -> dict[str, float]:
    """One old writer, one new open; inf when the open did not return within `timeout` s."""
    store = make_store(cfg)
    Volume.create(store, disk, DISK_SIZE)
    env = dict(os.environ, FENCE_BENCH_SECRET=cfg.secret_key)
    writer = subprocess.Popen(
        [sys.executable, __file__, "--role=writer", f"--endpoint={cfg.endpoint}",
         f"--access-key={cfg.access_key}", f"--disk={disk}", f"--size={size}", f"--qd={qd}"],
        stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent,
    )  # fmt: skip
    assert writer.stdout is not None
    ready = json.loads(writer.stdout.readline())
    if "ready" not in ready:
        raise RuntimeError(f"old writer: {ready}")
    t0 = time.monotonic()
    box: list[Volume] = []
    opener = threading.Thread(
        target=lambda: box.append(Volume.open(store, disk, config=vol_config())), daemon=True
    )
    opener.start()
    opener.join(timeout)
    if not box:
        writer.kill()
        writer.wait()
        return {"open": float("inf"), "fence": float("inf"), "rate": ready["rate"], "writes": 0}
    new = box[0]
    t_open = time.monotonic()
    report = json.loads(writer.stdout.readline())
    writer.wait(60)
    if report.get("fenced_at") is None:
        raise RuntimeError(f"old writer was not fenced: {report}")
    # Every acknowledged write reads back from the new writer (the newest one at its offset:
    # offsets wrap around the disk).
    newest: dict[int, int] = {}
    for i in report["acked"]:
        off = (i * size) % DISK_SIZE
        newest[off] = max(i, newest.get(off, -1))
    for off, i in newest.items():
        got = new.read(off, 512)
        assert int.from_bytes(got[8:16], "little") >= i, f"acknowledged write {i} lost"
    new.abandon()
    store.close()
    return {
        "open": t_open - t0,
        "fence": max(t_open, report["fenced_at"]) - t0,
        "rate": ready["rate"],
        "writes": report["writes"],
    }


def _die_with_parent() -> None:
    """The old writer must not outlive a bench that is stopped (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="bench")
    ap.add_argument("--endpoint")
    ap.add_argument("--access-key")
    ap.add_argument("--disk")
    ap.add_argument("--size", type=int)
    ap.add_argument("--qd", type=int)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--stores", default="embedded,cluster")
    ap.add_argument("--loads", default="4k-qd8,1m-qd4")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up on an open after this")
    args = ap.parse_args()
    if args.role == "writer":
        cfg = S3Config(args.endpoint, BUCKET, args.access_key, os.environ["FENCE_BENCH_SECRET"])
        old_writer(cfg, args.disk, args.size, args.qd)
        return
    import blockstore.engine.volume as engine

    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.node()}  {platform.processor()}")
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        "?",
    )
    print(f"# {os.cpu_count()} cores ({cpu}); engine {engine.__file__}")
    with open("/proc/loadavg") as f:
        print(f"# load average before: {f.read().strip()}")
    creds = Credentials("benchkey", "bench-secret-not-real")
    starters = {"embedded": embedded, "cluster": cluster}
    for store_name in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp, starters[store_name](Path(tmp), creds) as cfg:
            for load in args.loads.split(","):
                size, qd = LOADS[load]
                runs = []
                for r in range(args.runs):
                    res = one_run(cfg, f"{load}-{r}", size, qd, args.timeout)
                    runs.append(res)
                    print(
                        f"  {store_name} {load} run {r + 1}: open {res['open']:.3f} s, "
                        f"fence {res['fence']:.3f} s, old writer {res['rate']:.0f} segments/s",
                        flush=True,
                    )
                fence = [x["fence"] for x in runs]
                opened = [x["open"] for x in runs]
                rate = [x["rate"] for x in runs]
                print(
                    f"{store_name:8s} {load}: fence p50 {pct(fence, 0.5):.3f} s, p99 "
                    f"{pct(fence, 0.99):.3f} s, max {max(fence):.3f} s; open p50 "
                    f"{pct(opened, 0.5):.3f} s; old writer {pct(rate, 0.5):.0f} segments/s "
                    f"(median), {len(runs)} runs",
                    flush=True,
                )


if __name__ == "__main__":
    main()
