"""The bench report: Markdown tables and PNG charts derived only from a run's raw JSON.

    .venv/bin/python -m bench.report bench/results/<run>/    # rewrites report.md and the PNGs

Everything printed is computed here from `raw.json` (fio's own JSON job output, ioping's
per-request times, the store floor's per-request times and counts), so a report can always be
re-derived and checked. Definitions (bench/README.md explains them for readers):

- fio rows: median and p99 are fio's total-latency percentiles (`lat_ns`, submission to
  completion); IOPS and MB/s are fio's (MB = 10^6 bytes). For "randwrite+flush" the latency is
  write + flush (fio reports the flush as a separate `sync` latency): median = write p50 + flush
  p50, p99 = write p99 + flush p99, and IOPS counts write+flush pairs.
- ioping and store-floor latency rows: median and nearest-rank p99 of the recorded requests.
- ratios: latency workloads compare medians (target / floor: 3.0x = three times slower);
  throughput workloads compare IOPS or MB/s (target / floor: 0.50x = half the floor's rate).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

FILE_FLOOR = "floor: nbdkit file"
PY_FLOOR = "floor: minimal Python plugin"
STORE_FLOOR = "floor: object store (S3Store)"
# The article's ioping figures (4 KiB reads, QD1) for the disks of the 2012 service.
ARTICLE = {"data disk": 6.0, "OS disk": 18.0, "resource disk": 0.4}  # ms
# Which workloads compare latency, IOPS or MB/s, and what the store floor is for each.
METRIC = {
    "ioping 4k read QD1": "latency",
    "fio 4k randread QD1": "latency",
    "fio 4k randread QD16": "iops",
    "fio 1M seqread QD4": "mbps",
    "fio 4k randwrite QD1": "latency",
    "fio 4k randwrite+flush QD1": "latency",
    "fio 1M seqwrite QD4": "mbps",
}
STORE_FLOOR_OF = {
    "ioping 4k read QD1": ("get_4k_ns", "ranged 4 KiB GET, 1 thread"),
    "fio 4k randread QD1": ("get_4k_ns", "ranged 4 KiB GET, 1 thread"),
    "fio 4k randread QD16": ("get_4k_16threads", "ranged 4 KiB GETs, 16 threads"),
    "fio 1M seqread QD4": ("get_4m_4threads", "4 MiB GETs, 4 threads"),
    "fio 4k randwrite QD1": ("put_4k_ns", "4 KiB PUT, 1 thread"),
    "fio 4k randwrite+flush QD1": ("put_4k_ns", "4 KiB PUT, 1 thread"),
    "fio 1M seqwrite QD4": ("put_4m_4threads", "4 MiB PUTs, 4 threads"),
}


@dataclass(frozen=True)
class Row:
    """One measured figure: a target on a workload, warm or cold."""

    target: str
    workload: str
    cache: str  # warm | cold | - (no cache)
    median_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    iops: float | None = None
    mbps: float | None = None
    error: str | None = None
    # QD1 write jobs: the median of the single 4 KiB PUTs timed right before and after the job
    adjacent_put_us: float | None = None
    # 1 MiB write jobs: the 4-thread 4 MiB PUT throughput measured right before and after
    adjacent_put_mbps: float | None = None
    # CPU microseconds nbdkit and the store spent per request (suite.cpu_meter)
    cpu_us_per_io: float | None = None

    @property
    def label(self) -> str:
        return self.target if self.cache in ("-", "") else f"{self.target} ({self.cache})"

    def metric(self, kind: str) -> float | None:
        return {"latency": self.median_us, "iops": self.iops, "mbps": self.mbps}[kind]


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _from_samples(target: str, workload: str, cache: str, ns: list[float], size: int) -> Row:
    mean = statistics.fmean(ns) / 1000
    return Row(
        target,
        workload,
        cache,
        statistics.median(ns) / 1000,
        percentile(ns, 99) / 1000,
        mean,
        1e6 / mean,
        size * 1e6 / mean / 1e6,
    )


def _from_fio(rec: dict[str, Any], flush_each: bool) -> Row:
    job = rec["fio"]
    side = job["read"] if job["read"]["total_ios"] else job["write"]
    lat = side["lat_ns"]
    p50, p99, mean = lat["percentile"]["50.000000"], lat["percentile"]["99.000000"], lat["mean"]
    if flush_each:
        sync = job["sync"]["lat_ns"]
        p50 += sync["percentile"]["50.000000"]
        p99 += sync["percentile"]["99.000000"]
        mean += sync["mean"]
    return Row(
        rec["target"],
        rec["workload"],
        rec["cache"],
        p50 / 1000,
        p99 / 1000,
        mean / 1000,
        side["iops"],
        side["bw_bytes"] / 1e6,
    )


def rows(raw: dict[str, Any]) -> list[Row]:
    """Every measured row of the run, in run order."""
    flush = {w["name"]: w.get("flush_each", False) for w in raw.get("workloads", [])}
    out = []
    for rec in raw["runs"]:
        if "error" in rec:
            out.append(Row(rec["target"], rec["workload"], rec["cache"], error=rec["error"]))
        elif "fio" in rec:
            row = _from_fio(rec, flush.get(rec["workload"], False))
            adjacent = rec.get("put_4k_before_ns", []) + rec.get("put_4k_after_ns", [])
            if adjacent:
                row = replace(row, adjacent_put_us=statistics.median(adjacent) / 1000)
            big = [_mbps(t) for t in rec.get("put_4m_adjacent", []) if t.get("ops")]
            if big:
                row = replace(row, adjacent_put_mbps=statistics.fmean(big))
            out.append(replace(row, cpu_us_per_io=_cpu_per_io(raw, rec, _fio_ios(raw, rec))))
        elif "ioping_ns" in rec:
            row = _from_samples(
                rec["target"], rec["workload"], rec["cache"], rec["ioping_ns"], 4096
            )
            out.append(replace(row, cpu_us_per_io=_cpu_per_io(raw, rec, len(rec["ioping_ns"]))))
    return out


def _mbps(threaded: dict[str, Any]) -> float:
    return float(threaded["ops"] * threaded["bytes_per_op"] / threaded["seconds"] / 1e6)


def _fio_ios(raw: dict[str, Any], rec: dict[str, Any]) -> float:
    """The requests the target served during the metered job. fio counts none in its ramp
    time, which the meter does see: a time-based job is scaled up by (runtime + ramp) / runtime
    (at the rate it ran; a cold job has no ramp)."""
    job = rec["fio"]
    ios = float(job["read"]["total_ios"] + job["write"]["total_ios"])
    cfg = raw.get("config", {})
    if "--time_based" in rec.get("command", []) and cfg.get("ramp") and cfg.get("runtime"):
        ios *= (cfg["runtime"] + cfg["ramp"]) / cfg["runtime"]
    return ios


def _cpu_per_io(raw: dict[str, Any], rec: dict[str, Any], ios: float) -> float | None:
    used = rec.get("cpu_seconds")
    if not used or not ios:
        return None
    return sum(used.values()) * 1e6 / ios


def store_floor_row(raw: dict[str, Any], workload: str) -> Row | None:
    sf = raw.get("store_floor")
    if not sf or workload not in STORE_FLOOR_OF:
        return None
    key, what = STORE_FLOOR_OF[workload]
    name = f"{STORE_FLOOR} {what}"
    v = sf[key]
    if isinstance(v, list):
        return _from_samples(name, workload, "-", v, 4096)
    rate = v["ops"] / v["seconds"]
    return Row(name, workload, "-", iops=rate, mbps=rate * v["bytes_per_op"] / 1e6)


def floors(raw: dict[str, Any], all_rows: list[Row], workload: str) -> dict[str, Row | None]:
    def find(target: str) -> Row | None:
        for r in all_rows:
            if r.target == target and r.workload == workload and r.error is None:
                return r
        return None

    return {
        "file": find(FILE_FLOOR),
        "python": find(PY_FLOOR),
        "store": store_floor_row(raw, workload),
    }


def ratio(row: Row, floor: Row | None, kind: str) -> float | None:
    a, b = row.metric(kind), floor.metric(kind) if floor else None
    if a is None or not b:
        return None
    return a / b


# -- formatting -----------------------------------------------------------------------------------


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    if us >= 1000:
        return f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"
    return f"{us:.0f} us"


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def durability(raw: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["durability"] for t in raw.get("targets", [])}


def workload_table(raw: dict[str, Any], all_rows: list[Row], workload: str) -> str:
    kind = METRIC[workload]
    fl = floors(raw, all_rows, workload)
    sfr = fl["store"]
    these = [r for r in all_rows if r.workload == workload]
    # Write jobs also compare with the PUTs timed right before and after them.
    adjacent = any(r.adjacent_put_us or r.adjacent_put_mbps for r in these)
    head = "| target | cache | median | p99 | IOPS | MB/s | CPU us/IO | x file floor "
    head += "| x Python floor | x store floor |" + (" x PUT next to it |" if adjacent else "")
    lines = [head, "| --- | --- |" + " ---: |" * (9 if adjacent else 8)]
    for r in [*these, *([sfr] if sfr else [])]:
        if r.error:
            empty = " |" * (8 if adjacent else 7)
            lines.append(f"| {r.target} | {r.cache} | failed: {r.error[:80]} |{empty}")
            continue
        cells = [fmt_ratio(ratio(r, fl[k], kind)) for k in ("file", "python", "store")]
        if adjacent:
            cells.append(fmt_ratio(_next_to(r)))
        lines.append(
            f"| {r.target} | {r.cache} | {fmt_us(r.median_us)} | {fmt_us(r.p99_us)} | "
            f"{fmt_num(r.iops)} | {fmt_num(r.mbps, 1)} | {fmt_num(r.cpu_us_per_io)} | "
            f"{' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _next_to(r: Row) -> float | None:
    """The row against the store's PUTs timed right before and after it: latency over the
    single PUT's, or throughput over the parallel PUTs'."""
    if r.median_us and r.adjacent_put_us:
        return r.median_us / r.adjacent_put_us
    if r.mbps and r.adjacent_put_mbps:
        return r.mbps / r.adjacent_put_mbps
    return None


def _get(all_rows: list[Row], target: str, workload: str, cache: str) -> Row | None:
    for r in all_rows:
        if (r.target, r.workload, r.cache) == (target, workload, cache) and r.error is None:
            return r
    return None


def article_table(all_rows: list[Row]) -> str:
    w = "ioping 4k read QD1"
    pairs = [
        ("data disk (default caching `none`)", "data disk", "blockstore none", "-"),
        ("OS disk (default `readwrite`), warm cache", "OS disk", "blockstore readwrite", "warm"),
        ("OS disk (default `readwrite`), cold cache", "OS disk", "blockstore readwrite", "cold"),
        ("data disk with `readonly`, warm cache", "data disk", "blockstore readonly", "warm"),
        ("resource disk (`ephemeral`)", "resource disk", "blockstore ephemeral", "-"),
    ]
    lines = [
        "| disk | article (ioping) | this run: median | p99 | this run / article |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, art, target, cache in pairs:
        r = _get(all_rows, target, w, cache)
        ms = ARTICLE[art]
        med = r.median_us if r else None
        rel = fmt_ratio(med / (ms * 1000)) if med else "-"
        p99 = r.p99_us if r else None
        lines.append(f"| {label} | {ms:g} ms | {fmt_us(med)} | {fmt_us(p99)} | {rel} |")
    return "\n".join(lines)


# What a write's acknowledgement means, in a few words (the durability table has the long form).
ACK = {
    "file": "page cache",
    "python": "page cache",
    "ephemeral": "host-local only",
    "none": "in the store",
    "readonly": "in the store",
    "readwrite": "host cache; store at flush",
    "none-encrypted": "in the store (sealed)",
    "readwrite-encrypted": "host cache; store (sealed) at flush",
    "none-compressed": "in the store (zstd)",
    "readwrite-compressed": "host cache; store (zstd) at flush",
    "s3": "in the store",
    "s3-cache": "cache file; store at flush",
}

HEADLINE_COLUMNS = [
    ("ioping 4k read QD1", "latency", "ioping 4k read"),
    ("fio 4k randread QD1", "latency", "4k randread QD1"),
    ("fio 4k randread QD16", "iops", "4k randread QD16 IOPS"),
    ("fio 4k randwrite QD1", "latency", "4k write QD1"),
    ("fio 4k randwrite+flush QD1", "latency", "4k write+flush QD1"),
    ("fio 1M seqread QD4", "mbps", "1M read QD4 MB/s"),
    ("fio 1M seqwrite QD4", "mbps", "1M write QD4 MB/s"),
]


def headline_table(raw: dict[str, Any], all_rows: list[Row]) -> str:
    """One row per target and cache state; medians for latency columns."""
    head = "| target | write acked when | " + " | ".join(c[2] for c in HEADLINE_COLUMNS) + " |"
    lines = [head, "| --- | --- |" + " ---: |" * len(HEADLINE_COLUMNS)]
    ack = {t["name"]: ACK.get(t["kind"], t["durability"]) for t in raw.get("targets", [])}
    labels: list[tuple[str, str]] = []
    for r in all_rows:
        if (r.target, r.cache) not in labels and r.workload != "start":
            labels.append((r.target, r.cache))
    for target, cache in labels:
        cells = []
        for w, kind, _ in HEADLINE_COLUMNS:
            got = _get(all_rows, target, w, cache)
            if got is None and cache == "cold":
                cells.append("")  # cold runs are read workloads only
            elif got is None:
                cells.append("failed" if _failed(all_rows, target, w, cache) else "-")
            elif kind == "latency":
                cells.append(fmt_us(got.median_us))
            else:
                cells.append(fmt_num(got.metric(kind)))
        name = target if cache == "-" else f"{target} ({cache})"
        lines.append(f"| {name} | {ack.get(target, '?')} | " + " | ".join(cells) + " |")
    cells = []
    for w, kind, _ in HEADLINE_COLUMNS:
        sfr = store_floor_row(raw, w)
        m = sfr.metric(kind) if sfr else None
        cells.append(fmt_us(m) if kind == "latency" else fmt_num(m))
    lines.append(f"| {STORE_FLOOR} | in the store | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(raw: dict[str, Any], all_rows: list[Row]) -> str:
    """CPU microseconds per request, nbdkit and the store together, one row per target."""
    head = "| target | " + " | ".join(c[2] for c in HEADLINE_COLUMNS) + " |"
    lines = [head, "| --- |" + " ---: |" * len(HEADLINE_COLUMNS)]
    labels: list[tuple[str, str]] = []
    for r in all_rows:
        if (r.target, r.cache) not in labels and r.workload != "start":
            labels.append((r.target, r.cache))
    for target, cache in labels:
        cells = []
        for w, _, _ in HEADLINE_COLUMNS:
            got = _get(all_rows, target, w, cache)
            cells.append(fmt_num(got.cpu_us_per_io) if got and got.cpu_us_per_io else "")
        name = target if cache == "-" else f"{target} ({cache})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What a disk variant costs against the plain disk of the same mode, same run (issue #20):
# (mode, workload, cache state, metric).
VARIANT_METRICS = [
    ("none", "fio 4k randwrite QD1", "-", "latency"),  # durable at ack
    ("none", "fio 1M seqread QD4", "-", "mbps"),  # no cache: every read is cold
    ("readwrite", "fio 4k randwrite+flush QD1", "warm", "latency"),  # durable at the flush
    ("readwrite", "fio 1M seqread QD4", "cold", "mbps"),  # a new process, empty cache
]


def variant_table(all_rows: list[Row], variant: str) -> str:
    """`blockstore <mode>, <variant>` against `blockstore <mode>`: medians and throughput, the
    cost (variant / plain for latency, plain / variant for MB/s: 1.10x is 10% worse), and CPU
    microseconds (nbdkit + store) per MiB moved."""
    head = "| mode | workload | plain | " + variant + " | cost | CPU us/MiB plain | " + variant
    lines = [head + " |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for mode, w, cache, kind in VARIANT_METRICS:
        plain = _get(all_rows, f"blockstore {mode}", w, cache)
        other = _get(all_rows, f"blockstore {mode}, {variant}", w, cache)
        if plain is None or other is None:
            continue
        a, b = plain.metric(kind), other.metric(kind)
        cost = (b / a if kind == "latency" else a / b) if a and b else None
        show = fmt_us if kind == "latency" else fmt_num
        per_mib = MiB_PER_IO.get(w.split()[1], 1.0)
        cpu = [
            fmt_num(r.cpu_us_per_io * per_mib) if r.cpu_us_per_io else "" for r in (plain, other)
        ]
        label = f"{w} ({cache})" if cache != "-" else w
        lines.append(f"| {mode} | {label} | {show(a)} | {show(b)} | {fmt_ratio(cost)} | "
                     f"{cpu[0]} | {cpu[1]} |")  # fmt: skip
    return "\n".join(lines)


MiB_PER_IO = {"4k": 256.0, "1M": 1.0}  # requests per MiB by request size
QOS_UNITS = {"4k": 1, "1M": 4}  # 256 KiB IOs a request counts as (blockstore/host/qos.py)


def qos_table(raw: dict[str, Any], all_rows: list[Row]) -> str:
    """Each capped target's fio rows against its caps (raw["qos"]): the IOs (256 KiB units)
    and MB/s delivered, the cap that binds (the lower one, in requests a second), and
    delivered / that cap (1.00x: exactly the cap), next to the same disk uncapped."""
    caps = raw.get("qos") or {}
    head = "| disk | workload | uncapped | capped | binding cap | capped / cap |"
    lines = [head, "| --- | --- | ---: | ---: | --- | ---: |"]
    for r in all_rows:
        if not r.target.endswith(", capped") or r.iops is None or r.error:
            continue
        size = r.workload.split()[1] if r.workload.startswith("fio") else ""
        if size not in QOS_UNITS:
            continue
        per_req = (4096 if size == "4k" else 1 << 20) / 1e6  # MB a request
        limits = []
        if caps.get("iops_limit"):
            limits.append((caps["iops_limit"] / QOS_UNITS[size], f"{caps['iops_limit']} IOPS"))
        if caps.get("mbps_limit"):
            limits.append((caps["mbps_limit"] / per_req, f"{caps['mbps_limit']:g} MB/s"))
        if not limits:
            continue
        allowed, which = min(limits)
        plain = _get(all_rows, r.target.removesuffix(", capped"), r.workload, r.cache)
        label = f"{r.workload} ({r.cache})" if r.cache != "-" else r.workload
        lines.append(f"| {r.target} | {label} | {fmt_num(plain.iops if plain else None)} | "
                     f"{fmt_num(r.iops)} | {which} | {fmt_ratio(r.iops / allowed)} |")  # fmt: skip
    return "\n".join(lines)


def interleaved_table(raw: dict[str, Any], variant: str) -> str:
    """The variant against the plain disk of its mode from the interleaved rounds
    (suite.interleaved_variants): medians over the rounds; cost as in `variant_table`, but
    the median over rounds of each round's own ratio (paired: what the store's latency does
    between rounds cancels out)."""
    flush = {w["name"]: w.get("flush_each", False) for w in raw.get("workloads", [])}
    head = "| mode | disk | durable 4 KiB write | cost | cold 1 MiB read MB/s | cost | rounds |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for mode, v in raw.get("variants", {}).items():
        plain = f"blockstore {mode}"
        figures = {}
        for name, rounds in v["disks"].items():
            if name != plain and not name.endswith(f", {variant}"):
                continue
            rec = {"target": name, "cache": "-"}
            lat = [_from_fio({**rec, "workload": v["write"], **r["write"]},
                             flush.get(v["write"], False)).median_us for r in rounds]  # fmt: skip
            mbps = [_from_fio({**rec, "workload": v["read"], **r["read"]}, False).mbps
                    for r in rounds]  # fmt: skip
            figures[name] = (lat, mbps)
        if plain not in figures or len(figures) < 2:
            continue
        base_lat, base_mbps = figures[plain]
        for name, (lat, mbps) in figures.items():
            lat_cost = _paired(lat, base_lat, lambda x, b: x / b)
            mbps_cost = _paired(mbps, base_mbps, lambda x, b: b / x)
            lat_ok = [x for x in lat if x is not None]
            mbps_ok = [x for x in mbps if x is not None]
            lines.append(f"| {mode} | {name} | {fmt_us(statistics.median(lat_ok))} | "
                         f"{fmt_ratio(lat_cost)} | {fmt_num(statistics.median(mbps_ok))} | "
                         f"{fmt_ratio(mbps_cost)} | {len(lat)} |")  # fmt: skip
    return "\n".join(lines)


def _paired(
    xs: list[float | None], bases: list[float | None], ratio: Callable[[float, float], float]
) -> float | None:
    """The median over rounds of `ratio(x, base)` (rounds where both were measured)."""
    got = [ratio(x, b) for x, b in zip(xs, bases, strict=False) if x and b]
    return statistics.median(got) if got else None


PEER_PAIRS = [
    ("blockstore none", "-", "peer: nbdkit S3", "-", "both durable in the store at ack"),
    ("blockstore readonly", "warm", "peer: nbdkit S3", "-", "both durable in the store at ack"),
    ("blockstore readwrite", "warm", "peer: nbdkit S3 + cache", "warm", "both cache writes"),
    ("blockstore readwrite", "cold", "peer: nbdkit S3 + cache", "cold", "both cache writes"),
]


def peer_table(all_rows: list[Row]) -> str:
    """Each blockstore mode against the peer row with the nearest durability: latency as
    peer / ours (above 1: blockstore is faster), throughput as ours / peer (above 1: better)."""
    head = "| blockstore | against | " + " | ".join(c[2] for c in HEADLINE_COLUMNS) + " |"
    lines = [head, "| --- | --- |" + " ---: |" * len(HEADLINE_COLUMNS)]
    for ours_t, ours_c, peer_t, peer_c, why in PEER_PAIRS:
        cells = []
        for w, kind, _ in HEADLINE_COLUMNS:
            a, b = _get(all_rows, ours_t, w, ours_c), _get(all_rows, peer_t, w, peer_c)
            x, y = (a.metric(kind) if a else None), (b.metric(kind) if b else None)
            if not x or not y:
                cells.append("")
                continue
            r = y / x if kind == "latency" else x / y
            cells.append(f"**{fmt_ratio(r)}**" if r >= 1 else fmt_ratio(r))
        ours = ours_t if ours_c == "-" else f"{ours_t} ({ours_c})"
        peer = peer_t if peer_c == "-" else f"{peer_t} ({peer_c})"
        lines.append(f"| {ours} | {peer}: {why} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _failed(all_rows: list[Row], target: str, workload: str, cache: str) -> bool:
    return any(
        (r.target, r.workload, r.cache) == (target, workload, cache) and r.error for r in all_rows
    )


def header(raw: dict[str, Any]) -> str:
    m, v, c, load = raw["machine"], raw["versions"], raw["config"], raw.get("load", {})
    mem = m.get("memory_bytes", 0) / (1 << 30)
    mode = "quick" if c.get("quick") else "full"
    lines = [
        f"# blockstore bench, {raw['date']} ({mode} run)",
        "",
        f"- **machine**: {m['host']}: {m['cpu']}, {m['cores']} cores, {mem:.1f} GiB memory, "
        f"Linux {m['kernel']}, {m.get('os', '')}",
        "- **versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- **store**: {raw.get('store', '?')}",
        f"- **peer**: nbdkit `S3` plugin, object-size={raw['peer']['object_size']}; "
        f"{raw['peer']['filters']}",
        f"- **run**: fio {c['runtime']:g} s per job (ramp {c['ramp']:g} s) over a "
        f"{c['area_mib']} MiB area of a {c['disk_mib']} MiB disk written once before; "
        f"ioping {c['ioping_count']} requests; store floor {c['store_samples']} requests per "
        f"latency figure, {c['store_seconds']:g} s per throughput figure",
    ]
    if load:
        other = load.get("other_cpu_seconds")
        wall = load.get("wall_seconds")
        if other is not None and wall:
            lines.append(
                f"- **other load**: processes outside this run used about {other:.0f} "
                f"CPU-seconds during its {wall:.0f} s "
                f"({other / wall / (m['cores'] or 1) * 100:.0f}% "
                f"of the machine; /proc/stat counted {load['machine_cpu_seconds']:.0f} busy "
                f"CPU-seconds, this run's processes {load['own_cpu_seconds']:.0f}); load average "
                f"{load['loadavg_start'][0]:.2f} at start, {load['loadavg_end'][0]:.2f} at end"
            )
        for when in ("busy_at_start", "busy_at_end"):
            if load.get(when):
                lines.append(f"- busy {when[8:]}: " + "; ".join(f"`{b}`" for b in load[when]))
    if not raw.get("complete"):
        lines.append("- **this run did not complete**: tables show what was measured")
    return "\n".join(lines)


def markdown(raw: dict[str, Any]) -> str:
    all_rows = rows(raw)
    parts = [
        header(raw),
        "## Summary (medians; IOPS and MB/s for throughput)",
        headline_table(raw, all_rows),
        "![latency](latency.png)\n\n![throughput](throughput.png)",
        "## CPU per request (microseconds of nbdkit + the store)\n\n"
        "What serving one request cost the host: user and system time of the export's nbdkit "
        "and of the embedded store during the job, divided by the requests served (the client "
        "is not counted). Lower is better.\n\n" + cpu_table(raw, all_rows),
        "## blockstore against the peer (bold: blockstore is better)\n\n"
        "Latency columns: peer median / ours (2.00x: we take half the time); throughput "
        "columns: ours / peer.\n\n" + peer_table(all_rows),
        "## Encryption at rest: the cost of sealing (same run)\n\n"
        "Each encrypted row against the plain disk of its mode: durable 4 KiB writes (median "
        "latency) and cold 1 MiB reads (MB/s). Cost: encrypted / plain for latency, plain / "
        "encrypted for throughput (the target is 1.10x or less); CPU: nbdkit + the store per "
        "MiB moved.\n\n" + variant_table(all_rows, "encrypted") + "\n\nThe same jobs in "
        "interleaved rounds (each disk's write job, then its cold read, one disk after the "
        "other, round after round), so that the store's drift between targets does not count "
        "as a cost:\n\n" + interleaved_table(raw, "encrypted"),
        "## Compression: the cost of trying (same run)\n\n"
        "The same for zstd disks. fio writes random bytes, which do not shrink and are stored "
        "as they are: this is what compressing costs when it does not pay; what it saves on "
        "real files is bench/compression_ratio.py's.\n\n"
        + variant_table(all_rows, "compressed")
        + "\n\nInterleaved:\n\n"
        + interleaved_table(raw, "compressed"),
        "## QoS: capped disks against their caps (requests per second)\n\n"
        "The capped targets run every workload under `iops_limit` / `mbps_limit` (raw.json "
        "`qos`); a 1 MiB request counts as four 256 KiB IOs. The binding cap is the lower of "
        "the two in requests a second; capped / cap at 1.00x is the cap held exactly, below "
        "it the disk was slower than its cap anyway (the uncapped column says how fast it "
        "is).\n\n" + qos_table(raw, all_rows),
        "## The article's figure: ioping, 4 KiB reads at queue depth 1 (nbdfuse, O_DIRECT)",
        article_table(all_rows),
        "## What each row's write acknowledgement means",
        "| target | durability at ack |\n| --- | --- |\n"
        + "\n".join(f"| {k} | {v} |" for k, v in durability(raw).items())
        + f"\n| {STORE_FLOOR} | each PUT is durable in the store when it returns |",
    ]
    for w in METRIC:
        what = {"latency": "median latency", "iops": "IOPS", "mbps": "MB/s"}[METRIC[w]]
        parts.append(
            f"## {w}\n\nRatios compare {what}; the store floor is "
            f"{STORE_FLOOR_OF[w][1]}.\n\n{workload_table(raw, all_rows, w)}"
        )
    errors = [r for r in all_rows if r.error]
    start_errors = [rec for rec in raw["runs"] if rec.get("workload") == "start"]
    if errors or start_errors or raw.get("cleanup_problems"):
        parts.append("## Failures")
        parts += [f"- {r.label}, {r.workload}: {r.error}" for r in errors]
        parts += [f"- {rec['target']} did not start: {rec['error']}" for rec in start_errors]
        parts += [f"- clean-up: {p}" for p in raw.get("cleanup_problems", [])]
    return "\n\n".join(parts) + "\n"


# -- charts ---------------------------------------------------------------------------------------

COLORS = {"floor": "#9e9e9e", "blockstore": "#1f77b4", "peer": "#d62728", "store": "#7f7f7f"}


def _group(raw: dict[str, Any], target: str) -> str:
    for t in raw.get("targets", []):
        if t["name"] == target:
            return str(t["group"])
    return "store"


def _chart_rows(raw: dict[str, Any], all_rows: list[Row]) -> list[tuple[str, str]]:
    """The (target, cache) rows of every chart panel, in run order, then the store floor."""
    keys: list[tuple[str, str]] = []
    for r in all_rows:
        if (r.target, r.cache) not in keys:
            keys.append((r.target, r.cache))
    return [*keys, (STORE_FLOOR, "-")]


def _chart_label(target: str, cache: str) -> str:
    name = target.replace("floor: ", "floor ").replace(STORE_FLOOR, "floor: object store")
    return name if cache == "-" else f"{name} ({cache})"


def _panel(
    raw: dict[str, Any], all_rows: list[Row], keys: list[tuple[str, str]], w: str
) -> list[Row | None]:
    out: list[Row | None] = []
    for target, cache in keys:
        if target == STORE_FLOOR:
            out.append(store_floor_row(raw, w))
        else:
            out.append(_get(all_rows, target, w, cache))
    return out


def charts(raw: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = rows(raw)
    keys = _chart_rows(raw, all_rows)
    labels = [_chart_label(t, c) for t, c in keys]
    colors = [COLORS[_group(raw, t)] for t, _ in keys]
    y = list(range(len(keys)))
    made = []
    panels = [
        ("ioping 4k read QD1", "ioping 4 KiB read, QD1"),
        ("fio 4k randread QD1", "fio 4 KiB random read, QD1"),
        ("fio 4k randwrite QD1", "fio 4 KiB random write, QD1"),
        ("fio 4k randwrite+flush QD1", "fio 4 KiB write + flush, QD1"),
    ]
    height = 1.2 + 0.36 * len(keys)
    fig, axes = plt.subplots(1, 4, figsize=(17, height), dpi=72, sharey=True)
    for ax, (w, title) in zip(axes.flat, panels, strict=True):
        got = _panel(raw, all_rows, keys, w)
        med = [(r.median_us or 0) / 1000 if r else 0 for r in got]
        p99 = [(r.p99_us or 0) / 1000 if r else 0 for r in got]
        ax.barh(y, med, color=colors, height=0.7)
        ax.scatter(p99, y, marker="|", color="black", s=80, zorder=3)
        ax.set_xscale("log")
        ax.set_xlim(0.01, 5000)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ms, log scale (bar: median, tick: p99)", fontsize=8)
        for i, (m, p) in enumerate(zip(med, p99, strict=True)):
            if m:
                text = f"{m:.2f}" if m < 10 else f"{m:.0f}"
                ax.text(max(m, p) * 1.25, i, text, va="center", fontsize=7)
            else:
                ax.text(0.012, i, "n/a", va="center", fontsize=7, color="#777777")
        if w == "ioping 4k read QD1":
            for (name, ms), style in zip(ARTICLE.items(), ("--", "-.", ":"), strict=True):
                ax.axvline(
                    ms, ls=style, lw=1.2, color="#2ca02c", label=f"article {name}: {ms:g} ms"
                )
            ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
        ax.grid(axis="x", which="major", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(_title(raw, "latency by target and caching mode"), fontsize=11)
    fig.tight_layout()
    path = out / "latency.png"
    _save_small(fig, path)
    plt.close(fig)
    made.append(path)

    tpanels = [
        ("fio 1M seqread QD4", "mbps", "1 MiB sequential read, QD4: MB/s"),
        ("fio 1M seqwrite QD4", "mbps", "1 MiB sequential write, QD4: MB/s"),
        ("fio 4k randread QD16", "iops", "4 KiB random read, QD16: IOPS"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, height), dpi=72, sharey=True)
    for ax, (w, kind, title) in zip(axes.flat, tpanels, strict=True):
        got = _panel(raw, all_rows, keys, w)
        vals = [(r.metric(kind) or 0) if r else 0 for r in got]
        ax.barh(y, vals, color=colors, height=0.7)
        ax.set_xscale("log")
        top = max(vals) if any(vals) else 10
        ax.set_xlim(1, top * 8)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(vals):
            ax.text(
                v * 1.1 if v else 1.2,
                i,
                f"{v:,.0f}" if v else "n/a",
                va="center",
                fontsize=7,
                color="black" if v else "#777777",
            )
        ax.grid(axis="x", which="major", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(_title(raw, "throughput by target and caching mode (log scale)"), fontsize=11)
    fig.tight_layout()
    path = out / "throughput.png"
    _save_small(fig, path)
    plt.close(fig)
    made.append(path)
    return made


def _save_small(fig: Any, path: Path) -> None:
    """Save as a palette PNG (a few tens of KB, so a chart can live in the repository)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=64).save(path, optimize=True)


def _title(raw: dict[str, Any], what: str) -> str:
    m = raw["machine"]
    return f"blockstore bench {raw['date'][:10]}: {what} ({m['cores']} cores, {m['cpu'][:40]})"


def write_report(results: Path, with_charts: bool = True) -> Path:
    """(Re)write report.md and the charts in `results` from its raw.json."""
    raw = json.loads((results / "raw.json").read_text())
    if with_charts:
        charts(raw, results)
    path = results / "report.md"
    path.write_text(markdown(raw))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="Re-derive a bench report from its raw.json")
    ap.add_argument("results", type=Path, help="a results directory holding raw.json")
    ap.add_argument("--no-charts", action="store_true")
    args = ap.parse_args()
    print(write_report(args.results, not args.no_charts))


if __name__ == "__main__":
    main()
