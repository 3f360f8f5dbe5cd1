"""The bench suite: ioping and fio over NBD for every caching mode, with the floors and the peer
measured in the same run, written as raw JSON (`bench/report.py` turns it into the report).

What one run does, in order (every server listens on a Unix socket or 127.0.0.1 only):

1. starts a throw-away SeaweedFS (`weed mini`) in a temporary directory, or uses the configured
   store under a fresh `bench-<time>-<random>/` prefix;
2. measures the object-store floor with the client blockstore uses (`S3Store`, MinIO SDK):
   single 4 KiB PUTs, ranged 4 KiB GETs of a 4 MiB object, 4 KiB GETs from 16 threads, and
   4 MiB PUT/GET throughput from 4 threads;
3. for every target (the floors, blockstore in each caching mode, the ephemeral disk, and the
   peer: nbdkit's `S3` plugin bare and under nbdkit's `cache` filter) starts its nbdkit, writes
   the measured area once (1 MiB writes, then a flush), reads it once where there is a cache,
   runs the read workloads warm, then the write workloads; for targets with a cache it then runs
   each read workload again cold: a new nbdkit process on an empty cache directory;
4. stops everything it started (nbdfuse mounts, nbdkit, SeaweedFS), deletes every object it
   wrote (and the bucket, if it made it) and its temporary directory, even on Ctrl-C.

Failure behaviour: a workload that fails is recorded with its error and the run goes on; a
failure to start a target skips that target's workloads. Nothing is retried. The raw JSON is
written even when the run is interrupted, with `"complete": false`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import blockstore  # noqa: E402
from blockstore.crypto.disk import set_provider  # noqa: E402
from blockstore.crypto.keyring import LocalKeyFile  # noqa: E402
from blockstore.engine.volume import Volume  # noqa: E402
from blockstore.host import contract  # noqa: E402
from blockstore.host.embedded import Credentials, EmbeddedSeaweed, weed_binary  # noqa: E402
from blockstore.host.export import Export, ExportConfig  # noqa: E402
from blockstore.host.qos import QosLimits  # noqa: E402
from blockstore.host.supervisor import EphemeralExport  # noqa: E402
from blockstore.store.s3 import S3Config, S3Store  # noqa: E402
from blockstore.store.stack import build_store  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
SCHEMA = 1
# Debian's own interpreter must be nbdkit's Python home for Debian's S3 plugin (DESIGN.md).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# nbdkit 1.32 refuses every connection when the S3 plugin's object size is above 64K (the plugin
# reports it as its minimum block size), so the peer runs with the largest size that works.
PEER_OBJECT_SIZE = "64K"

Progress = Callable[[str], None]  # called once per finished step with the next step's name


@dataclass(frozen=True)
class SuiteConfig:
    """One run. `quick` picks short runs on a small area; the rest can be overridden."""

    out: Path
    quick: bool = False
    runtime: float = 10.0  # seconds per fio job
    ramp: float = 1.0  # fio ramp_time (not measured)
    area_mib: int = 256  # the measured area of each disk
    disk_mib: int = 1024
    ioping_count: int = 1000
    cold_ios: int = 2000  # requests of a cold random-read fio job
    store_samples: int = 400  # single 4 KiB PUTs and GETs
    adjacent_puts: int = 100  # single 4 KiB PUTs right before and after each QD1 write job
    store_seconds: float = 8.0  # each multi-threaded store floor
    s3: S3Config | None = None  # None: start an embedded SeaweedFS
    keep_work: bool = False  # keep the temporary directory (debugging)
    only: tuple[str, ...] = ()  # run just the targets whose name contains one of these
    variant_rounds: int = 3  # interleaved rounds of the encrypted/compressed variants

    def targets(self) -> list[Target]:
        return [t for t in TARGETS if not self.only or any(o in t.name for o in self.only)]

    @classmethod
    def make(cls, out: Path, quick: bool, s3: S3Config | None = None) -> SuiteConfig:
        if quick:
            return cls(
                out=out,
                quick=True,
                runtime=2.0,
                ramp=0.0,
                area_mib=32,
                disk_mib=256,
                ioping_count=150,
                cold_ios=300,
                store_samples=100,
                adjacent_puts=40,
                store_seconds=2.0,
                s3=s3,
            )
        return cls(out=out, s3=s3)


@dataclass(frozen=True)
class Target:
    """Something that serves an NBD export: a floor, a blockstore disk or the peer."""

    name: str  # row label in the report
    group: str  # "floor", "blockstore", "peer"
    kind: str  # file | python | ephemeral | none | readonly | readwrite | s3 | s3-cache
    durability: str  # what a write acknowledgement means for this row
    cached: bool  # has a cache that can be cold (cold rows are measured)


TARGETS = [
    Target(
        "floor: nbdkit file",
        "floor",
        "file",
        "local file; page cache at ack, local disk at flush (fdatasync)",
        False,
    ),
    Target(
        "floor: minimal Python plugin",
        "floor",
        "python",
        "local file; page cache at ack, flush is a no-op",
        False,
    ),
    Target(
        "blockstore ephemeral",
        "blockstore",
        "ephemeral",
        "host-local only (nbdkit file, cache=none); lost when the VM moves",
        False,
    ),
    Target("blockstore none", "blockstore", "none", "durable in the object store at ack", False),
    Target(
        "blockstore readonly",
        "blockstore",
        "readonly",
        "durable in the object store at ack (host cache updated)",
        True,
    ),
    Target(
        "blockstore readwrite",
        "blockstore",
        "readwrite",
        "in the host cache at ack (survives kill -9); durable in the store at flush/FUA",
        True,
    ),
    # Encryption at rest (issue #20): the same modes with the disk's data sealed, so that the
    # report can put the cost of sealing next to the plain rows of the same run.
    Target(
        "blockstore none, encrypted",
        "blockstore",
        "none-encrypted",
        "durable in the object store at ack (sealed with AES-256-GCM)",
        False,
    ),
    Target(
        "blockstore readwrite, encrypted",
        "blockstore",
        "readwrite-encrypted",
        "in the host cache at ack; durable (sealed) in the store at flush/FUA",
        True,
    ),
    # Compression (zstd): fio's buffers are random, so this is the cost of trying to compress
    # data that does not shrink (stored as it is); bench/compression_ratio.py has real files.
    Target(
        "blockstore none, compressed",
        "blockstore",
        "none-compressed",
        "durable in the object store at ack (zstd per chunk)",
        False,
    ),
    Target(
        "blockstore readwrite, compressed",
        "blockstore",
        "readwrite-compressed",
        "in the host cache at ack; durable (zstd per chunk) in the store at flush/FUA",
        True,
    ),
    # QoS (issue #21): the same disks under caps (`BENCH_QOS`), so that each workload's table
    # shows what a capped disk delivers next to the uncapped one, and the QoS table how close
    # to its cap.
    Target(
        "blockstore none, capped",
        "blockstore",
        "none-capped",
        "durable in the object store at ack; capped (BENCH_QOS)",
        False,
    ),
    Target(
        "blockstore readwrite, capped",
        "blockstore",
        "readwrite-capped",
        "in the host cache at ack; durable in the store at flush/FUA; capped (BENCH_QOS)",
        True,
    ),
    Target(
        "peer: nbdkit S3",
        "peer",
        "s3",
        f"durable in the store at ack ({PEER_OBJECT_SIZE} object read-modify-write)",
        False,
    ),
    Target(
        "peer: nbdkit S3 + cache",
        "peer",
        "s3-cache",
        "in nbdkit's cache file at ack (lost on kill -9); durable in the store at flush",
        True,
    ),
]


@dataclass(frozen=True)
class Workload:
    name: str
    tool: str  # fio | ioping
    rw: str = "randread"
    bs: str = "4k"
    qd: int = 1
    flush_each: bool = False

    @property
    def reads(self) -> bool:
        return "read" in self.rw


WORKLOADS = [
    Workload("ioping 4k read QD1", "ioping"),
    Workload("fio 4k randread QD1", "fio", "randread", "4k", 1),
    Workload("fio 4k randread QD16", "fio", "randread", "4k", 16),
    Workload("fio 1M seqread QD4", "fio", "read", "1M", 4),
    Workload("fio 4k randwrite QD1", "fio", "randwrite", "4k", 1),
    Workload("fio 4k randwrite+flush QD1", "fio", "randwrite", "4k", 1, flush_each=True),
    Workload("fio 1M seqwrite QD4", "fio", "write", "1M", 4),
]


# The caps of the capped targets: below what this machine's uncapped disks deliver in the 4 KiB
# jobs (IOPS) and the 1 MiB ones (MB/s), so that each job runs into one of them.
BENCH_QOS = QosLimits(iops_limit=500, mbps_limit=40)
BLOCKSTORE_KINDS = (
    "none",
    "readonly",
    "readwrite",
    "none-encrypted",
    "readwrite-encrypted",
    "none-compressed",
    "readwrite-compressed",
    "none-capped",
    "readwrite-capped",
)


def plan(targets: list[Target] = TARGETS, variant_rounds: int = 3) -> list[str]:
    """The steps of a run, in order (the progress bar's total)."""
    steps = ["start the object store", "object-store floor"]
    for t in targets:
        steps.append(f"{t.name}: start and fill")
        steps += [f"{t.name}: {w.name} (warm)" for w in WORKLOADS]
        if t.cached:
            steps += [f"{t.name}: {w.name} (cold)" for w in WORKLOADS if w.reads]
    for mode in variant_modes(targets):
        steps += [f"variants {mode}, interleaved: round {r + 1}" for r in range(variant_rounds)]
    return [*steps, "clean up"]


# -- servers --------------------------------------------------------------------------------------


class CommandExport(Export):
    """An nbdkit process with a given plugin command line (floors and the peer), run with the
    same launcher, readiness check and stop as blockstore's exports."""

    def __init__(self, config: ExportConfig, plugin: list[str], env: dict[str, str] | None):
        super().__init__(config)
        self.plugin = plugin
        self.env = env

    def command(self) -> list[str]:
        c = self.config
        cmd = [c.nbdkit, "--foreground", "--unix", str(c.socket), "--threads", str(c.threads)]
        if c.exit_with_parent:
            cmd.append("--exit-with-parent")
        for f in c.filters:
            cmd += ["--filter", f]
        return [*cmd, *self.plugin]

    def environment(self) -> dict[str, str]:
        return self.env if self.env is not None else super().environment()


@dataclass
class Run:
    """Everything one run owns, so that `close()` can undo all of it."""

    config: SuiteConfig
    work: Path
    s3: S3Config  # bucket + this run's prefix
    weed: EmbeddedSeaweed | None = None
    bucket_made: bool = False
    exports: list[Export] = field(default_factory=list)
    mounts: list[tuple[Path, subprocess.Popen[bytes]]] = field(default_factory=list)
    disks: dict[str, str] = field(default_factory=dict)  # target kind -> disk id

    def cache_dir(self, t: Target) -> Path:
        return self.work / "cache" / t.kind

    def _qos(self, t: Target) -> dict[str, str]:
        """A capped target's QoS file (nbd_plugin/throttle.py), as the supervisor writes it."""
        if not t.kind.endswith("-capped"):
            return {}
        path = self.work / "run" / f"{t.kind}.qos.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        contract.write_qos(path, BENCH_QOS.to_dict())
        return {contract.ENV_QOS_FILE: str(path)}

    def start(self, t: Target) -> Export:
        """A new nbdkit process for `t` (its cache directory is kept, so warm stays warm)."""
        sock = self.work / "run" / f"{t.kind}.sock"
        base = ExportConfig(
            disk_id=self.disks.get(t.kind, t.kind),
            socket=sock,
            s3=self.s3,
            log_path=self.work / "logs" / f"{t.kind}.log",
        )
        cdir = self.cache_dir(t)
        cdir.mkdir(parents=True, exist_ok=True)
        size = self.config.disk_mib * MiB
        exp: Export
        if t.kind in ("file", "ephemeral", "python"):
            image = cdir / "disk.img"
            if not image.exists():
                with open(image, "wb") as f:
                    f.truncate(size)
            if t.kind == "ephemeral":
                exp = EphemeralExport(base, image)  # exactly what the product serves
            elif t.kind == "file":
                exp = CommandExport(base, ["file", f"file={image}"], None)
            else:
                plugin = self.work / "minplug.py"
                if not plugin.exists():
                    from bench.nbd_bench import MIN_PLUGIN

                    plugin.write_text(MIN_PLUGIN)
                exp = CommandExport(base, ["python", str(plugin), f"path={image}"], None)
        elif t.kind in BLOCKSTORE_KINDS:
            mode = t.kind.split("-")[0]
            exp = Export(
                replace(
                    base,
                    s3=replace(self.s3, prefix=f"{self.s3.prefix}{t.kind}/"),
                    cache_mode=mode,
                    cache_dir=None if mode == "none" else cdir,
                    extra_env={contract.ENV_KEK_DIR: str(self.work / "kek"), **self._qos(t)},
                )
            )
        else:
            filters: tuple[str, ...] = ("blocksize",)
            args = [
                "S3",
                f"endpoint-url={self.s3.endpoint}",
                f"bucket={self.s3.bucket}",
                f"key={self.s3.prefix}peer-{t.kind}",
                f"size={size}",
                f"object-size={PEER_OBJECT_SIZE}",
            ]
            if t.kind == "s3-cache":
                filters += ("cache",)
                args += ["cache=writeback", "cache-on-read=true"]
            env = {
                "PATH": SYSTEM_PATH,
                "HOME": str(cdir),  # no ~/.aws of the user's
                "TMPDIR": str(cdir),  # the cache filter's file lives in the cache directory
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                "AWS_DEFAULT_REGION": self.s3.region,
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            exp = CommandExport(replace(base, filters=filters), args, env)
        exp.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.exports.append(exp)
        exp.start()
        return exp

    def stop(self, exp: Export) -> None:
        exp.stop()
        if exp in self.exports:
            self.exports.remove(exp)

    def wipe_cache(self, t: Target) -> None:
        shutil.rmtree(self.cache_dir(t), ignore_errors=True)

    def close(self) -> list[str]:
        """Undo everything; returns what could not be undone (for the report)."""
        problems: list[str] = []
        for mnt, proc in list(self.mounts):
            problems += unmount(mnt, proc)
        self.mounts.clear()
        for exp in list(self.exports):
            try:
                exp.stop(timeout=60)
            except Exception as exc:
                problems.append(f"stopping nbdkit {exp.config.socket.name}: {exc}")
                exp.kill()
        self.exports.clear()
        if self.weed is not None:
            self.weed.stop()  # its data directory goes with the work directory
        else:
            problems += delete_prefix(self.s3, self.bucket_made)
        if not self.config.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return problems


def delete_prefix(s3: S3Config, remove_bucket: bool) -> list[str]:
    """Delete every object under this run's prefix (and the bucket if the run made it)."""
    try:
        store = S3Store(s3)
        for info in list(store.list("")):
            store.delete(info.key)
        if remove_bucket:
            store._client.remove_bucket(s3.bucket)
        store.close()
        return []
    except Exception as exc:
        return [f"deleting s3://{s3.bucket}/{s3.prefix}: {exc}"]


# -- clients --------------------------------------------------------------------------------------


def fio(uri: str, w: Workload, cfg: SuiteConfig, cold: bool = False) -> dict[str, Any]:
    """One fio job. Warm jobs are time-based. Cold jobs are not (a time-based job would warm
    the cache in its first seconds and then measure hits): a cold random-read job is its first
    `cold_ios` requests, a cold sequential read is one pass over the area."""
    cmd = [
        "fio",
        f"--name={w.name.replace(' ', '_')}",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={w.rw}",
        f"--bs={w.bs}",
        f"--iodepth={w.qd}",
        f"--size={cfg.area_mib}M",
        "--output-format=json",
        "--randrepeat=0",
        "--norandommap",
        "--lat_percentiles=1",
    ]
    if cold and w.rw == "read":
        pass  # the whole area once
    elif cold:
        cmd.append(f"--number_ios={cfg.cold_ios}")
    else:
        cmd += ["--time_based", f"--runtime={round(cfg.runtime * 1000)}ms"]
        if cfg.ramp:
            cmd.append(f"--ramp_time={round(cfg.ramp * 1000)}ms")
    if w.flush_each:
        cmd.append("--fsync=1")  # the nbd engine sends NBD_CMD_FLUSH after every write
    return {"command": cmd, "fio": _fio_json(cmd, cfg.runtime + cfg.ramp + 120)}


def fill(uri: str, cfg: SuiteConfig, read_back: bool) -> None:
    """Write the whole area once with 1 MiB writes and a flush (so reads really fetch data),
    and read it back once when the target has a cache (so warm means warm)."""
    base = [
        "fio",
        "--name=fill",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--bs=1M",
        "--iodepth=4",
        f"--size={cfg.area_mib}M",
        "--output-format=json",
    ]
    _fio_json([*base, "--rw=write", "--end_fsync=1"], 900)
    if read_back:
        _fio_json([*base, "--rw=read"], 900)


def _fio_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout
    if proc.returncode != 0 or "{" not in out:
        raise RuntimeError(f"fio exited with {proc.returncode}: {proc.stderr.strip()[-400:]}")
    job: dict[str, Any] = json.loads(out[out.index("{") :])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio job error {job['error']}: {proc.stderr.strip()[-400:]}")
    return job


def mount(run: Run, exp: Export, name: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """Expose the export as a file with nbdfuse; returns (mount directory, nbdfuse process)."""
    mnt = run.work / "mnt" / name
    mnt.mkdir(parents=True, exist_ok=True)
    pidfile = mnt.parent / f"{name}.pid"
    pidfile.unlink(missing_ok=True)
    proc = subprocess.Popen(
        ["nbdfuse", "-P", str(pidfile), str(mnt / "disk"), "--unix", str(exp.config.socket)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run.mounts.append((mnt, proc))
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"nbdfuse did not start: {err[-400:]}")
        time.sleep(0.02)
    return mnt, proc


def unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> list[str]:
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()  # ours, by PID; the mount goes with it
        proc.wait()
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
        return [f"nbdfuse on {mnt} did not exit after unmount; killed"]
    return []


def ioping(run: Run, exp: Export, name: str) -> dict[str, Any]:
    cfg = run.config
    mnt, proc = mount(run, exp, name)
    try:
        # -D: O_DIRECT, so every request reaches the export (no page cache in between);
        # -i 0: no pause between requests; the first request is a warm-up, as ioping does.
        cmd = [
            "ioping",
            "-c",
            str(cfg.ioping_count + 1),
            "-i",
            "0",
            "-s",
            "4k",
            "-D",
            "-J",
            "-S",
            f"{cfg.area_mib}m",
            str(mnt / "disk"),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"ioping exited with {p.returncode}: {p.stderr.strip()[-400:]}")
        records = json.loads(p.stdout)
        times = [r["io"]["time"] for r in records if "io" in r and not r["io"].get("ignored")]
        return {"command": cmd, "ioping_ns": times}
    finally:
        run.mounts.remove((mnt, proc))
        problems = unmount(mnt, proc)
        if problems:
            raise RuntimeError("; ".join(problems))


# -- the object-store floor -----------------------------------------------------------------------


def store_floor(s3: S3Config, cfg: SuiteConfig) -> dict[str, Any]:
    st = S3Store(replace(s3, prefix=f"{s3.prefix}floor/"))
    try:
        rng = random.Random(1)
        small = os.urandom(4 * KiB)
        big = os.urandom(4 * MiB)
        st.put("big", big)
        for i in range(10):  # connections and the store's first-request costs
            st.put(f"w{i}", small)
            st.get("big", i * 4 * KiB, 4 * KiB)
        puts = []
        for i in range(cfg.store_samples):
            t = time.perf_counter_ns()
            st.put(f"p{i % 64}", small)
            puts.append(time.perf_counter_ns() - t)
        gets = []
        for _ in range(cfg.store_samples):
            off = rng.randrange(1024) * 4 * KiB
            t = time.perf_counter_ns()
            st.get("big", off, 4 * KiB)
            gets.append(time.perf_counter_ns() - t)
        return {
            "client": "blockstore.store.s3.S3Store (MinIO SDK)",
            "put_4k_ns": puts,
            "get_4k_ns": gets,
            "get_4k_16threads": _threaded(
                16,
                cfg.store_seconds,
                lambda i, r: st.get("big", r.randrange(1024) * 4 * KiB, 4 * KiB),
                4 * KiB,
            ),
            "put_4m_4threads": _threaded(
                4, cfg.store_seconds, lambda i, r: st.put(f"t{i}-{r.randrange(4)}", big), 4 * MiB
            ),
            "get_4m_4threads": _threaded(4, cfg.store_seconds, lambda i, r: st.get("big"), 4 * MiB),
        }
    finally:
        st.close()


def _threaded(
    threads: int, seconds: float, op: Callable[[int, random.Random], object], size: int
) -> dict[str, Any]:
    """Run `op` in `threads` threads for `seconds`; count completed operations."""
    counts = [0] * threads
    stop_at = time.monotonic() + seconds
    errors: list[str] = []

    def worker(i: int) -> None:
        r = random.Random(i)
        try:
            while time.monotonic() < stop_at:
                op(i, r)
                counts[i] += 1
        except Exception as exc:
            errors.append(repr(exc))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "threads": threads,
        "ops": sum(counts),
        "bytes_per_op": size,
        "seconds": elapsed,
        "errors": errors[:3],
    }


# -- the machine ----------------------------------------------------------------------------------


def _cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        return (p.stdout or p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def versions() -> dict[str, str]:
    weed = _cmd_out([weed_binary(), "version"]).splitlines()
    git = _cmd_out(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "blockstore": f"{blockstore.__version__} ({git})",
        "nbdkit": _cmd_out(["nbdkit", "--version"]),
        "fio": _cmd_out(["fio", "--version"]),
        "ioping": _cmd_out(["ioping", "-v"]).splitlines()[0] if _cmd_out(["ioping", "-v"]) else "",
        "nbdfuse": _cmd_out(["nbdfuse", "--version"]).splitlines()[0],
        "seaweedfs": weed[0] if weed else "",
        "python": platform.python_version(),
    }


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine so far (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far (its threads included), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_meter(run: Run, exp: Export) -> Iterator[dict[str, float]]:
    """CPU seconds the export's nbdkit and the object store spent inside the block (filled in
    when it ends): what serving the workload cost the host, divided by its I/Os in the report.
    The store's share is counted only for the embedded store (a remote one is not ours to
    see); the client (fio, ioping, nbdfuse) is not counted."""
    pids = {"nbdkit": exp.pid}
    if run.weed is not None and run.weed.process is not None:
        pids["store"] = run.weed.process.pid
    before = {k: process_cpu_seconds(p) for k, p in pids.items() if p}
    used: dict[str, float] = {}
    yield used
    for k, t0 in before.items():
        t1 = process_cpu_seconds(pids[k])
        if t0 is not None and t1 is not None:
            used[k] = t1 - t0


def own_cpu_seconds() -> float:
    """CPU time of this process and every child it has waited for."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def busy_processes() -> list[str]:
    """Processes other than this run's that used CPU in the last second (what else ran)."""

    def sample() -> dict[int, tuple[int, str]]:
        out: dict[int, tuple[int, str]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (d / "stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
                out[int(d.name)] = (int(rest[11]) + int(rest[12]), cmd)
        return out

    a = sample()
    time.sleep(1.0)
    b = sample()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, cmd) in b.items():
        if pid in a and pid != os.getpid() and cmd:
            pct = (ticks - a[pid][0]) / hz * 100
            if pct >= 5:
                busy.append((pct, f"{pct:.0f}% pid {pid}: {cmd.strip()}"))
    return [text for _, text in sorted(busy, reverse=True)[:8]]


# -- the run --------------------------------------------------------------------------------------


def run_suite(cfg: SuiteConfig, progress: Progress | None = None) -> Path:
    """Run the whole suite; returns the path of the raw JSON (in `cfg.out`)."""
    step = progress or (lambda name: None)
    cfg.out.mkdir(parents=True, exist_ok=True)
    raw_path = cfg.out / "raw.json"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="bsbench-"))
    raw: dict[str, Any] = {
        "schema": SCHEMA,
        "complete": False,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "s3"
        },
        "peer": {
            "object_size": PEER_OBJECT_SIZE,
            "filters": "bare: --filter=blocksize (lets 4 KiB requests through to the "
            "plugin's own read-modify-write); cache: --filter=blocksize "
            "--filter=cache cache=writeback cache-on-read=true",
        },
        "targets": [asdict(t) for t in cfg.targets()],
        "workloads": [asdict(w) for w in WORKLOADS],
        "qos": BENCH_QOS.to_dict(),  # the capped targets' caps
        "load": {"loadavg_start": os.getloadavg(), "busy_at_start": busy_processes()},
        "runs": [],
    }
    cpu0, own0, wall0 = cpu_busy_seconds(), own_cpu_seconds(), time.monotonic()
    if cfg.s3 is None:
        creds = Credentials("bench" + os.urandom(4).hex(), os.urandom(24).hex())
        s3 = S3Config("http://unset", "bench", creds.access_key, creds.secret_key)
    else:
        s3 = replace(cfg.s3, prefix=f"{cfg.s3.prefix}bench-{stamp}-{os.urandom(3).hex()}/")
    run = Run(cfg, work, s3)
    try:
        step("start the object store")
        if cfg.s3 is None:
            run.weed = EmbeddedSeaweed(work / "seaweed", Credentials(s3.access_key, s3.secret_key))
            run.weed.start()
            run.s3 = replace(s3, endpoint=run.weed.endpoint)
            raw["store"] = f"embedded SeaweedFS (weed mini, -filer.maxMB=1) at {run.weed.endpoint}"
        else:
            raw["store"] = f"{cfg.s3.endpoint} bucket {cfg.s3.bucket}"
        probe = S3Store(run.s3)
        run.bucket_made = cfg.s3 is not None and not probe._client.bucket_exists(s3.bucket)
        probe.ensure_bucket()
        probe.close()
        step("object-store floor")
        raw["store_floor"] = store_floor(run.s3, cfg)
        set_provider(LocalKeyFile(work / "kek"))  # the exports get the directory too
        for kind in BLOCKSTORE_KINDS:
            store = build_store(replace(run.s3, prefix=f"{run.s3.prefix}{kind}/"))
            run.disks[kind] = f"bench-{kind}"
            encrypt = kind.endswith("-encrypted")
            codec = "zstd" if kind.endswith("-compressed") else "none"
            size = cfg.disk_mib * MiB
            Volume.create(store, run.disks[kind], size, encrypt=encrypt, compression=codec)
            store.close()
        for t in cfg.targets():
            _run_target(run, t, raw, step)
            _save(raw_path, raw)
        interleaved_variants(run, raw, step)
        raw["complete"] = True
    finally:
        step("clean up")
        raw["cleanup_problems"] = run.close()
        wall = time.monotonic() - wall0
        busy = cpu_busy_seconds() - cpu0
        own = own_cpu_seconds() - own0
        raw["load"].update(
            {
                "loadavg_end": os.getloadavg(),
                "busy_at_end": busy_processes(),
                "wall_seconds": wall,
                "machine_cpu_seconds": busy,
                "own_cpu_seconds": own,
                "other_cpu_seconds": max(0.0, busy - own),
            }
        )
        _save(raw_path, raw)
    return raw_path


def _save(path: Path, raw: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=1))
    tmp.replace(path)


def _record(
    raw: dict[str, Any], t: Target, w: Workload, cache: str, fn: Callable[[], dict[str, Any]]
) -> None:
    rec: dict[str, Any] = {"target": t.name, "workload": w.name, "cache": cache}
    t0 = time.monotonic()
    try:
        rec.update(fn())
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=3)
    rec["wall_seconds"] = time.monotonic() - t0
    raw["runs"].append(rec)


# The variant rows' cost, measured fairly: the store's latency drifts by 20-30% within the
# minutes between one target and the next, so each variant's write and cold-read jobs also run
# alternating with its plain disk's, round by round (raw["variants"]; report.py).
VARIANT_JOBS = {  # mode -> (durable 4 KiB write, cold 1 MiB read)
    "none": ("fio 4k randwrite QD1", "fio 1M seqread QD4"),
    "readwrite": ("fio 4k randwrite+flush QD1", "fio 1M seqread QD4"),
}


def variant_modes(targets: list[Target]) -> dict[str, list[Target]]:
    """Mode -> its plain target and its variants, for the modes where `targets` has both."""
    kinds = {t.kind: t for t in targets}
    out = {}
    for mode in VARIANT_JOBS:
        have = [kinds[k] for k in (mode, f"{mode}-encrypted", f"{mode}-compressed") if k in kinds]
        if mode in kinds and len(have) > 1:
            out[mode] = have
    return out


def interleaved_variants(run: Run, raw: dict[str, Any], step: Progress) -> None:
    """For each mode whose plain and variant targets this run has: `variant_rounds` rounds,
    each running every one's durable-write job, then its cold read (a new process on an empty
    cache), one disk after the other, in an order that reverses from round to round (a trend
    within a round favours no disk; report.py takes the median of each round's own ratio)."""
    by_name = {w.name: w for w in WORKLOADS}
    out: dict[str, dict[str, Any]] = {}
    for mode, targets in variant_modes(run.config.targets()).items():
        write, read = (by_name[n] for n in VARIANT_JOBS[mode])
        disks: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        out[mode] = {"write": write.name, "read": read.name, "disks": disks}
        for r in range(run.config.variant_rounds):
            step(f"variants {mode}, interleaved: round {r + 1}")
            for t in targets if r % 2 == 0 else targets[::-1]:
                disks[t.name].append(_variant_round(run, t, write, read))
    raw["variants"] = out


def _variant_round(run: Run, t: Target, write: Workload, read: Workload) -> dict[str, Any]:
    """One round for one disk: its write job (time-based) and one cold pass of 1 MiB reads."""
    run.wipe_cache(t)
    exp = run.start(t)
    try:
        cfg = replace(run.config, runtime=run.config.runtime / 2, ramp=0.0)
        wrote = fio(exp.uri, write, cfg)
    finally:
        run.stop(exp)
    run.wipe_cache(t)
    exp = run.start(t)  # cold: a new process on an empty cache
    try:
        return {"write": wrote, "read": fio(exp.uri, read, run.config, cold=True)}
    finally:
        run.stop(exp)


def _run_target(run: Run, t: Target, raw: dict[str, Any], step: Progress) -> None:
    step(f"{t.name}: start and fill")
    cache = "warm" if t.cached else "-"
    exp: Export | None = None
    try:
        exp = run.start(t)
        fill(exp.uri, run.config, read_back=t.cached)
    except Exception as exc:
        raw["runs"].append(
            {
                "target": t.name,
                "workload": "start",
                "cache": cache,
                "error": f"{type(exc).__name__}: {exc}",
            }
        )
        for w in WORKLOADS:
            step(f"{t.name}: {w.name} (warm)")
        if t.cached:
            for w in WORKLOADS:
                if w.reads:
                    step(f"{t.name}: {w.name} (cold)")
        if exp is not None:
            with contextlib.suppress(Exception):
                run.stop(exp)
        return
    try:
        for w in WORKLOADS:
            step(f"{t.name}: {w.name} (warm)")
            _record(raw, t, w, cache, _job(run, exp, t, w))
    finally:
        run.stop(exp)
    if not t.cached:
        return
    for w in WORKLOADS:
        if not w.reads:
            continue
        step(f"{t.name}: {w.name} (cold)")
        run.wipe_cache(t)

        def cold(w: Workload = w) -> dict[str, Any]:
            exp = run.start(t)  # a new process on an empty cache directory
            try:
                return _job(run, exp, t, w, cold=True)()
            finally:
                run.stop(exp)

        _record(raw, t, w, "cold", cold)


def _job(
    run: Run, exp: Export, t: Target, w: Workload, cold: bool = False
) -> Callable[[], dict[str, Any]]:
    if w.tool == "ioping":
        return lambda: _metered(run, exp, lambda: ioping(run, exp, t.kind))
    if w.reads:
        return lambda: _metered(run, exp, lambda: fio(exp.uri, w, run.config, cold))

    def write_job() -> dict[str, Any]:
        # Write back what the previous workload left dirty first, so that a write+flush job
        # does not pay for it (its time is recorded: it is what a flush after a burst costs).
        flushed = nbd_flush(exp.uri)
        if w.qd != 1:
            # Its floor is the store's parallel PUT throughput, which drifts too: measured
            # right before and right after the job as well.
            seconds = min(run.config.store_seconds, 2.0)
            before = put_throughput(run.s3, seconds)
            job = _metered(run, exp, lambda: fio(exp.uri, w, run.config))
            after = put_throughput(run.s3, seconds)
            return {**job, "flush_before_seconds": flushed, "put_4m_adjacent": [before, after]}
        # A QD1 write's floor is one PUT, and this store's PUT latency drifts by up to 1.4x
        # within a minute: time single PUTs right before and right after the job too.
        before = put_samples(run.s3, run.config.adjacent_puts)
        job = _metered(run, exp, lambda: fio(exp.uri, w, run.config))
        after = put_samples(run.s3, run.config.adjacent_puts)
        return {**job, "flush_before_seconds": flushed, "put_4k_before_ns": before,
                "put_4k_after_ns": after}  # fmt: skip

    return write_job


def _metered(run: Run, exp: Export, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`job`'s record with the CPU seconds nbdkit and the store spent on it (`cpu_meter`)."""
    with cpu_meter(run, exp) as used:
        rec = job()
    return {**rec, "cpu_seconds": used}


def put_samples(s3: S3Config, n: int) -> list[int]:
    """Nanoseconds of `n` single 4 KiB PUTs (new keys, one at a time), as the store floor's."""
    st = S3Store(replace(s3, prefix=f"{s3.prefix}floor/adjacent/"))
    try:
        small = os.urandom(4 * KiB)
        tag = os.urandom(4).hex()
        st.put(f"{tag}-warm", small)  # the connection
        out = []
        for i in range(n):
            t = time.perf_counter_ns()
            st.put(f"{tag}-{i}", small)
            out.append(time.perf_counter_ns() - t)
        return out
    finally:
        st.close()


def put_throughput(s3: S3Config, seconds: float) -> dict[str, Any]:
    """4 threads of 4 MiB PUTs for `seconds`, as the store floor's `put_4m_4threads`."""
    st = S3Store(replace(s3, prefix=f"{s3.prefix}floor/adjacent-big/"))
    try:
        big = os.urandom(4 * MiB)
        return _threaded(4, seconds, lambda i, r: st.put(f"t{i}-{r.randrange(4)}", big), 4 * MiB)
    finally:
        st.close()


def nbd_flush(uri: str) -> float:
    """One NBD flush on a new connection (libnbd); returns its duration in seconds."""
    import nbd

    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        t0 = time.perf_counter()
        h.flush()
        return time.perf_counter() - t0
    finally:
        h.shutdown()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a run the way Ctrl-C does: through every `finally`, so it cleans up."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
