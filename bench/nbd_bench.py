"""NBD data-path bench: fio's nbd engine against the blockstore plugin in every caching mode,
with the floors measured in the same run (not a test; nothing is asserted).

    .venv/bin/python bench/nbd_bench.py [--runtime 5] [--json out.json]

Client: fio 3.x, ioengine=nbd over a Unix socket, 4 KiB random I/O at QD1 and QD16 on a 64 MiB
area of a 256 MiB disk that was first written sequentially (so reads in `none` really fetch).
In `none` also: sequential 1 MiB writes at QD4 (durable on ack), then cold sequential 1 MiB
reads at QD4 of that freshly written area (one extent per read), and the same reads again after
the 4 KiB random writes have fragmented the area (a 1 MiB read then spans dozens of extents).
Floors, same run, same machine: nbdkit's C `file` plugin on a local file; a minimal Python
plugin (one os.preadv / os.pwritev per request) on a local file; single 4 KiB PUT and GET
latency of the store client (S3Store over the MinIO SDK) to the same embedded SeaweedFS; and
throughput of 4 threads each doing 4 MiB PUTs, and of 4 threads each doing 1 MiB ranged GETs of
those objects in sequence, with the same client (S3Store) and with boto3.
Next to the cold read (before and after it) the same 4 threads GET exactly the bytes that read
fetches, straight from the volume's segments; the 4 KiB write jobs run in four slices with
single 4 KiB PUTs timed before, between and after them: floors taken at the same moment as the
job they are compared with (the ratio printed is the median of the slices' ratios).
Ratios printed at the end are the issue's targets (lower latency ratio / higher IOPS ratio is
better). Run it when nothing else heavy runs on the machine: it has 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockstore.engine.volume import Volume
from blockstore.format import keys
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.host.export import Export, ExportConfig, venv_bin
from blockstore.store.s3 import S3Config, S3Store
from blockstore.store.stack import build_store

MiB = 1 << 20
AREA = "64M"
MIN_PLUGIN = """
import os
API_VERSION = 2
import nbdkit
fd = -1
def thread_model(): return nbdkit.THREAD_MODEL_PARALLEL
def config(k, v):
    global path
    path = v
def after_fork():
    global fd
    fd = os.open(path, os.O_RDWR)
def open(ro): return 1
def get_size(h): return os.fstat(fd).st_size
def pread(h, buf, off, flags): os.preadv(fd, (buf,), off)
def pwrite(h, buf, off, flags): os.pwritev(fd, (buf,), off)
def flush(h, flags): pass
def can_multi_conn(h): return True
"""


def fio(uri: str, rw: str, bs: str, qd: int, runtime: float, *extra: str) -> dict[str, float]:
    cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--size={AREA}", "--output-format=json", "--randrepeat=0",
           "--norandommap", "--lat_percentiles=1"]  # fmt: skip
    if runtime:
        cmd += ["--time_based", f"--runtime={runtime}"]
    out = subprocess.run([*cmd, *extra], capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {
        "iops": side["iops"],
        "lat_us": side["lat_ns"]["mean"] / 1000,
        "lat_p50_us": side["lat_ns"].get("percentile", {}).get("50.000000", 0) / 1000,
        "mbps": side["bw_bytes"] / 1e6,
    }


def nbdkit_local(tmp: Path, name: str, plugin: list[str]) -> subprocess.Popen[bytes]:
    sock = tmp / f"{name}.sock"
    env = dict(os.environ)
    vb = venv_bin()
    if vb:
        env["PATH"] = f"{vb}:{env['PATH']}"
    p = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(sock),
                          *plugin], env=env)  # fmt: skip
    for _ in range(500):
        if sock.exists():
            break
        time.sleep(0.02)
    time.sleep(0.3)
    return p


def store_latency(s3: S3Config, n: int = 100) -> dict[str, float]:
    st = S3Store(s3)
    body = os.urandom(4096)
    puts, cputs, gets = [], [], []
    tag = os.urandom(4).hex()  # fresh keys for the conditional PUTs of every call
    for i in range(n):
        t = time.perf_counter()
        st.put(f"lat/{i}", body)
        puts.append(time.perf_counter() - t)
        # The kind of PUT the volume sends: If-None-Match fences a second writer, and the
        # store pays a lookup for it.
        t = time.perf_counter()
        st.put(f"clat/{tag}/{i}", body, if_none_match=True)
        cputs.append(time.perf_counter() - t)
    for i in range(n):
        t = time.perf_counter()
        st.get(f"lat/{i}", 0, 4096)
        gets.append(time.perf_counter() - t)
    st.close()
    return {
        "put_us": statistics.median(puts) * 1e6,
        "put_mean_us": statistics.mean(puts) * 1e6,
        "cput_us": statistics.median(cputs) * 1e6,
        "get_us": statistics.median(gets) * 1e6,
    }


def interleaved_writes(
    s3: S3Config, uri: str, runtime: float, *extra: str, rounds: int = 4
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Run fio's 4 KiB random writes at QD1 in `rounds` slices, with single-PUT floors before,
    between and after them (this store's PUT latency drifts by up to 1.4x within a minute).
    Returns the job's figures averaged over the slices, the floors averaged, and each slice's
    mean time per write (1/IOPS at QD1, so a flush after each write counts) over the mean of
    the median PUTs right before and right after it."""
    floors = [store_latency(s3)]
    slices, ratios = [], []
    for _ in range(rounds):
        res = fio(uri, "randwrite", "4k", 1, runtime / rounds, *extra)
        floors.append(store_latency(s3))
        slices.append(res)
        ratios.append(1e6 / res["iops"] / statistics.mean(f["put_us"] for f in floors[-2:]))
    pooled = {k: statistics.mean(s[k] for s in slices) for k in slices[0]}
    floor = {k: statistics.mean(f[k] for f in floors) for k in floors[0]}
    return pooled, floor, ratios


def _parallel(threads: int, seconds: float, op: Callable[[int, int], None]) -> int:
    """Run op(thread, n) in `threads` threads for `seconds`; the number of calls made."""
    counts = [0] * threads

    def loop(i: int) -> None:
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            op(i, n)
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts)


def segment_gets(s3: S3Config, disk_id: str, seconds: float, threads: int = 4) -> float:
    """MB/s of `threads` parallel ranged GETs (S3Store) of exactly the bytes a cold sequential
    read of the volume fetches: the last 1 MiB of each of its segments, in log order. Measured
    right next to that read, on the same objects, so the floor shares its moment and data."""
    st = S3Store(s3)
    segs = [(o.key, o.size) for o in st.list(keys.segment_prefix(disk_id)) if o.size > MiB]
    buf = [memoryview(bytearray(MiB)) for _ in range(threads)]

    def get_op(i: int, n: int) -> None:
        key, size = segs[(n * threads + i) % len(segs)]
        st.get_into(key, size - MiB, buf[i])

    t0 = time.perf_counter()
    n = _parallel(threads, seconds, get_op)
    st.close()
    return n * MiB / (time.perf_counter() - t0) / 1e6


def store_throughput(s3: S3Config, seconds: float, threads: int = 4) -> dict[str, float]:
    """MB/s of `threads` parallel 4 MiB PUTs, then of parallel 1 MiB ranged GETs of them, for
    S3Store and for boto3 (the issue names boto3; the engine uses S3Store)."""
    import boto3
    from botocore.config import Config

    body = os.urandom(4 * MiB)
    st = S3Store(s3)
    b3 = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key, region_name=s3.region,
        config=Config(max_pool_connections=threads * 2),
    )  # fmt: skip

    def b3_get(k: str, off: int) -> None:
        b3.get_object(Bucket=s3.bucket, Key=k, Range=f"bytes={off}-{off + MiB - 1}")["Body"].read()

    clients: dict[str, tuple[Callable[[str], object], Callable[[str, int], object]]] = {
        "s3store": (lambda k: st.put(k, body), lambda k, off: st.get(k, off, MiB)),
        "boto3": (lambda k: b3.put_object(Bucket=s3.bucket, Key=k, Body=body), b3_get),
    }
    out: dict[str, float] = {}
    small = os.urandom(MiB)
    t0 = time.perf_counter()

    def small_op(i: int, n: int) -> None:
        st.put(f"tp/small/{i}/{n}", small)

    n = _parallel(threads, seconds, small_op)
    # Context for the 1 MiB QD4 write job: the same request size and concurrency.
    out["s3store put1m MBps"] = n * MiB / (time.perf_counter() - t0) / 1e6
    for name, (put, get) in clients.items():
        written: list[list[str]] = [[] for _ in range(threads)]

        def put_op(i: int, n: int, name: str = name, put: Callable[[str], object] = put,
                   written: list[list[str]] = written) -> None:  # fmt: skip
            put(f"tp/{name}/{i}/{n}")
            written[i].append(f"tp/{name}/{i}/{n}")

        def get_op(i: int, n: int, get: Callable[[str, int], object] = get,
                   written: list[list[str]] = written) -> None:  # fmt: skip
            ks = written[i]
            get(ks[(n // 4) % len(ks)], (n % 4) * MiB)

        t0 = time.perf_counter()
        n = _parallel(threads, seconds, put_op)
        out[f"{name} put4m MBps"] = n * 4 * MiB / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        n = _parallel(threads, seconds, get_op)
        out[f"{name} get1m MBps"] = n * MiB / (time.perf_counter() - t0) / 1e6
    st.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--modes", default="none,readonly,readwrite", help="cache modes to run")
    ap.add_argument("--no-local-floors", action="store_true", help="skip the file/minpy floors")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    rt = args.runtime
    results: dict[str, dict[str, float]] = {}
    slices: dict[str, list[float]] = {}  # per-slice ratios of the interleaved latency jobs
    with tempfile.TemporaryDirectory(prefix="nbdbench-") as t:
        tmp = Path(t)
        img = tmp / "local.img"
        with open(img, "wb") as f:
            f.truncate(256 * MiB)
        (tmp / "minplug.py").write_text(MIN_PLUGIN)
        floors = [
            ("file", ["file", str(img)]),
            ("minpy", ["python", str(tmp / "minplug.py"), f"path={img}"]),
        ]
        for name, plugin in [] if args.no_local_floors else floors:
            p = nbdkit_local(tmp, name, plugin)
            uri = f"nbd+unix:///?socket={tmp / name}.sock"
            try:
                fio(uri, "write", "1M", 4, 0)
                results[f"{name} randread qd1"] = fio(uri, "randread", "4k", 1, rt)
                results[f"{name} randread qd16"] = fio(uri, "randread", "4k", 16, rt)
                results[f"{name} randwrite qd1"] = fio(uri, "randwrite", "4k", 1, rt)
            finally:
                p.terminate()
                p.wait()
        server = EmbeddedSeaweed(tmp / "weed", Credentials("benchkey", "bench-secret-not-real"))
        server.start()
        try:
            s3 = S3Config(server.endpoint, "bench", "benchkey", "bench-secret-not-real")
            S3Store(s3).ensure_bucket()
            store_latency(s3, 50)  # warm-up: a store just started answers slowly at first
            results["store 4k"] = store_latency(s3)
            results["store parallel"] = store_throughput(s3, rt)
            for i, mode in enumerate(modes):
                s3m = S3Config(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key,
                               prefix=f"m{i}/")  # fmt: skip
                store = build_store(s3m)
                Volume.create(store, "bench", 256 * MiB)
                store.close()
                exp = Export(ExportConfig(
                    disk_id="bench", socket=tmp / f"{mode}.sock", s3=s3m, cache_mode=mode,
                    cache_dir=None if mode == "none" else tmp / f"cache-{mode}",
                    cache_size="512M", dirty_limit="128M", cache_block="64K",
                )).start()  # fmt: skip
                try:
                    uri = exp.uri
                    fio(uri, "write", "1M", 4, 0)  # data everywhere; warms the cache modes
                    if mode == "none":
                        results["none seqwrite 1M qd4"] = fio(uri, "write", "1M", 4, rt)
                        # Floor, ours, floor: the same segments, the same minute.
                        floor = [segment_gets(s3m, "bench", rt)]
                        results["none cold seqread 1M qd4"] = fio(uri, "read", "1M", 4, rt)
                        floor.append(segment_gets(s3m, "bench", rt))
                        results["store segment gets"] = {"mbps": statistics.mean(floor)}
                    if mode == "readonly":
                        fio(uri, "read", "1M", 4, 0)
                    results[f"{mode} randread qd1"] = fio(uri, "randread", "4k", 1, rt)
                    results[f"{mode} randread qd16"] = fio(uri, "randread", "4k", 16, rt)
                    (results[f"{mode} randwrite qd1"],
                     results[f"store put next to {mode} randwrite"],
                     slices[f"{mode} randwrite qd1"]) = interleaved_writes(
                        s3m, uri, rt)  # fmt: skip
                    if mode == "none":
                        results["none fragmented seqread 1M qd4"] = fio(uri, "read", "1M", 4, rt)
                    if mode == "readwrite":
                        (results["readwrite randwrite+flush qd1"],
                         results["store put next to readwrite randwrite+flush"],
                         slices["readwrite randwrite+flush qd1"]) = interleaved_writes(
                            s3m, uri, rt, "--fsync=1")  # fmt: skip
                finally:
                    exp.stop()
        finally:
            server.stop()
    print(f"{'job':34} {'IOPS':>10} {'mean lat us':>12} {'MB/s':>8}")
    for k, v in results.items():
        if "iops" in v:
            print(f"{k:34} {v['iops']:10.0f} {v['lat_us']:12.1f} {v['mbps']:8.1f}")
    st = results["store 4k"]
    print(f"store single 4 KiB PUT {st['put_us']:.0f} us, conditional PUT {st['cput_us']:.0f} us, "
          f"GET {st['get_us']:.0f} us (median)")  # fmt: skip
    for k, val in results["store parallel"].items():
        print(f"store {k:30} {val:8.1f}")
    if "store segment gets" in results:
        print(f"store {'segment gets MBps':30} {results['store segment gets']['mbps']:8.1f}")
    r = results
    sp = r["store parallel"]
    put_floor = max(sp["s3store put4m MBps"], sp["boto3 put4m MBps"])
    get_floor = max(sp["s3store get1m MBps"], sp["boto3 get1m MBps"])
    ratios: dict[str, float] = {}

    def lat(job: str) -> float:
        return r[job]["lat_us"]

    def iops(job: str) -> float:
        return r[job]["iops"]

    # (name, jobs needed, figure): a ratio is printed when its jobs ran.
    wanted: list[tuple[str, list[str], Callable[[], float]]] = [
        ("none randwrite qd1 lat / PUT (target <= 1.3)", ["none randwrite qd1"],
         lambda: lat("none randwrite qd1") / st["put_us"]),
        ("none randwrite qd1 lat / PUT between slices (<= 1.3)",
         ["none randwrite qd1", "store put next to none randwrite"],
         lambda: statistics.median(slices["none randwrite qd1"])),
        ("  fio median lat / median PUT, same floors",
         ["none randwrite qd1", "store put next to none randwrite"],
         lambda: r["none randwrite qd1"]["lat_p50_us"]
         / r["store put next to none randwrite"]["put_us"]),
        ("  fio median lat / median conditional PUT, same floors",
         ["none randwrite qd1", "store put next to none randwrite"],
         lambda: r["none randwrite qd1"]["lat_p50_us"]
         / r["store put next to none randwrite"]["cput_us"]),
        ("  fio mean lat / mean PUT, same floors",
         ["none randwrite qd1", "store put next to none randwrite"],
         lambda: lat("none randwrite qd1") / r["store put next to none randwrite"]["put_mean_us"]),
        # fio's write latency leaves out the flush (--fsync=1 counts it as a sync): per-pair
        # time at QD1 is 1/IOPS.
        ("readwrite write+flush time / PUT (target <= 1.5)", ["readwrite randwrite+flush qd1"],
         lambda: 1e6 / r["readwrite randwrite+flush qd1"]["iops"] / st["put_us"]),
        ("readwrite write+flush time / PUT between slices (<= 1.5)",
         ["readwrite randwrite+flush qd1", "store put next to readwrite randwrite+flush"],
         lambda: statistics.median(slices["readwrite randwrite+flush qd1"])),
        ("  write+flush time / mean PUT, same floors",
         ["readwrite randwrite+flush qd1", "store put next to readwrite randwrite+flush"],
         lambda: 1e6 / r["readwrite randwrite+flush qd1"]["iops"]
         / r["store put next to readwrite randwrite+flush"]["put_mean_us"]),
        ("  write+flush time / median conditional PUT, same floors",
         ["readwrite randwrite+flush qd1", "store put next to readwrite randwrite+flush"],
         lambda: 1e6 / r["readwrite randwrite+flush qd1"]["iops"]
         / r["store put next to readwrite randwrite+flush"]["cput_us"]),
        ("none seqwrite 1M qd4 / best 4M PUTs (>= 0.8)", ["none seqwrite 1M qd4"],
         lambda: r["none seqwrite 1M qd4"]["mbps"] / put_floor),
        ("  none seqwrite 1M qd4 / boto3 4M PUTs (the issue's floor)", ["none seqwrite 1M qd4"],
         lambda: r["none seqwrite 1M qd4"]["mbps"] / sp["boto3 put4m MBps"]),
        ("none cold seqread 1M qd4 / best GETs (>= 0.8)", ["none cold seqread 1M qd4"],
         lambda: r["none cold seqread 1M qd4"]["mbps"] / get_floor),
        ("  none cold seqread 1M qd4 / boto3 GETs", ["none cold seqread 1M qd4"],
         lambda: r["none cold seqread 1M qd4"]["mbps"] / sp["boto3 get1m MBps"]),
        ("none cold seqread 1M qd4 / same-segment GETs (>= 0.8)",
         ["none cold seqread 1M qd4", "store segment gets"],
         lambda: r["none cold seqread 1M qd4"]["mbps"] / r["store segment gets"]["mbps"]),
        ("none fragmented seqread / best GETs", ["none fragmented seqread 1M qd4"],
         lambda: r["none fragmented seqread 1M qd4"]["mbps"] / get_floor),
    ]  # fmt: skip
    for name, need, fig in wanted:
        if all(j in r for j in need):
            ratios[name] = fig()
    for m in ("readonly", "readwrite"):
        q1, q16, m1, m16 = (f"{m} randread qd1", f"{m} randread qd16", "minpy randread qd1",
                            "minpy randread qd16")  # fmt: skip
        if q1 in r and m1 in r:
            ratios[f"{m} warm randread qd1 lat / minpy (<= 1.2)"] = lat(q1) / lat(m1)
        if q16 in r and m16 in r:
            ratios[f"{m} randread qd16 IOPS / minpy (>= 0.9)"] = iops(q16) / iops(m16)
    for k, val in ratios.items():
        print(f"{k:52} {val:6.2f}")
    if args.json:
        out = {"results": results, "ratios": ratios, "slice_ratios": slices}
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
