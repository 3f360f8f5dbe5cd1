"""A disk's performance history: rates derived from its export's counters, kept in bounded
memory at two resolutions, and the encoding it is saved in.

Place: the data half of the history the console graphs and `blockstore disk stats` prints
(GET /v1/disks/{name}/stats); `control/sampling.py` feeds it every few seconds from the stats
file each export writes (`blockstore.host.contract.ExportStats`) and keeps it in the service's
home. It lives in the control plane, not in `host/`, because a history belongs to a disk (its
engine disk id, so a deleted disk's name reused later starts afresh) and carries the disk's
replication lag, which only the control plane measures; it imports no web framework.

What a point holds (`SERIES`): read/write IOPS and MB/s (10^6 bytes), read/write latency p50
and p99 (ms, from the latency histograms, interpolated within a bucket as Prometheus'
`histogram_quantile` does), the host-cache hit ratio (reads), dirty bytes (readwrite), store
requests and errors a second, and the replication lag (seconds). Rates come from the deltas of
the cumulative counters between two stats files, over the time between their writes. Null
(NaN here) where not known: no baseline yet, the counters went back (the export restarted: a
new epoch, or any counter lower than before), nothing read in the interval (ratio, latency),
or not applicable (the ratio of a `none` disk, dirty bytes of any but `readwrite`, the lag of
an lrs disk). A restart therefore costs one null point, never a negative or huge one.

Resolutions: `FINE_POINTS` (720) points one sampling step apart (5 s: the last hour) and
`COARSE_POINTS` (1440) one-minute points (the last day), each minute recomputed from the fine
points in it every time one is added: the mean of each series, the max for p99 and lag
(`PEAK`). Bounded memory: 14 columns of doubles (the times and 13 series) in two rings of 720
and 1440 points, 14 x 2160 x 8 bytes = 242 KB per disk however long the service runs.
"""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from blockstore.errors import InvalidArgument
from blockstore.host.iostats import LATENCY_BUCKETS

SERIES = (
    "read_iops", "write_iops", "read_mbps", "write_mbps",
    "read_p50_ms", "read_p99_ms", "write_p50_ms", "write_p99_ms",
    "cache_hit_ratio", "dirty_bytes", "store_requests_per_s", "store_errors_per_s",
    "replication_lag_seconds",
)  # fmt: skip
PEAK = frozenset({"read_p99_ms", "write_p99_ms", "replication_lag_seconds"})  # max per minute
FINE_POINTS = 720
COARSE_POINTS = 1440
COARSE_STEP = 60.0
MAX_SINCE_SECONDS = 86400
STORE_OPS = ("gets", "puts", "deletes", "lists", "heads")  # as api/metrics.py counts requests
NULL = math.nan
FORMAT_VERSION = 1

_SINCE = re.compile(r"^([0-9]{1,6})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> int:
    """Seconds of a range given as `<n>s|m|h|d` (15m, 1h, 1d), from 1 s up to one day."""
    m = _SINCE.match(text)
    seconds = int(m[1]) * _UNIT[m[2]] if m else 0
    if not 0 < seconds <= MAX_SINCE_SECONDS:
        raise InvalidArgument(
            f"since {text!r} is not a range this history holds: give <n>s, <n>m, <n>h or <n>d "
            "between 1s and 1d, e.g. 15m, 1h, 1d"
        )
    return seconds


@dataclass(frozen=True)
class Counters:
    """The cumulative counters of one stats file, and when its export wrote it."""

    at: float  # the file's modification time (the plugin rewrites it every couple of seconds)
    epoch: int | None
    cache_mode: str
    io: dict[str, tuple[int, int, tuple[int, ...]]]  # read/write: count, bytes, histogram
    cache_hits: int
    cache_misses: int
    dirty_bytes: int
    store_requests: int
    store_puts: int
    store_errors: int

    @classmethod
    def of(cls, raw: dict[str, Any], at: float) -> Counters:
        """From a stats file as the plugin wrote it (`contract.ExportStats`)."""
        io = {}
        for op in ("read", "write"):
            o = (raw.get("io") or {}).get(op) or {}
            io[op] = (int(o.get("count", 0)), int(o.get("bytes", 0)), tuple(o.get("buckets", ())))
        cache, store = raw.get("cache") or {}, raw.get("store") or {}
        return cls(
            at=at,
            epoch=raw.get("epoch"),
            cache_mode=str(raw.get("cache_mode", "none")),
            io=io,
            cache_hits=int(cache.get("hits", 0)),
            cache_misses=int(cache.get("misses", 0)),
            dirty_bytes=int(cache.get("dirty_bytes", 0)),
            store_requests=sum(int(store.get(op, 0)) for op in STORE_OPS),
            store_puts=int(store.get("puts", 0)),
            store_errors=sum(int(n) for n in (store.get("errors") or {}).values()),
        )

    def totals(self) -> tuple[int, ...]:
        """Every cumulative count, to tell a restarted export (one of them went back)."""
        flat = [n for count, nbytes, hist in self.io.values() for n in (count, nbytes, *hist)]
        return (*flat, self.cache_hits, self.cache_misses, self.store_requests, self.store_errors)


def quantile_ms(q: float, buckets: list[int]) -> float:
    """The q-quantile of a latency histogram (counts per `LATENCY_BUCKETS` bucket, then +Inf),
    in ms; NaN when it is empty."""
    total = sum(buckets)
    if total <= 0:
        return NULL
    rank, seen, lower = q * total, 0, 0.0
    for bound, n in zip((*LATENCY_BUCKETS, math.inf), buckets, strict=False):
        if n and seen + n >= rank:
            if bound == math.inf:
                return LATENCY_BUCKETS[-1] * 1000  # as histogram_quantile: the last finite bound
            return (lower + (bound - lower) * (rank - seen) / n) * 1000
        seen += n
        lower = bound
    return LATENCY_BUCKETS[-1] * 1000


def rates(prev: Counters | None, cur: Counters, lag: float | None) -> dict[str, float]:
    """One point: the rates between `prev` and `cur` (NaN without a usable baseline), the
    gauges of `cur`, and the lag given (None: not applicable or not measured)."""
    point = dict.fromkeys(SERIES, NULL)
    point["dirty_bytes"] = float(cur.dirty_bytes) if cur.cache_mode == "readwrite" else NULL
    point["replication_lag_seconds"] = NULL if lag is None else float(lag)
    if prev is None or prev.epoch != cur.epoch or cur.at <= prev.at:
        return point
    if any(b < a for a, b in zip(prev.totals(), cur.totals(), strict=False)):
        return point  # counters went back: the export restarted
    dt = cur.at - prev.at
    for op in ("read", "write"):
        (c0, b0, h0), (c1, b1, h1) = prev.io[op], cur.io[op]
        point[f"{op}_iops"] = (c1 - c0) / dt
        point[f"{op}_mbps"] = (b1 - b0) / dt / 1e6
        delta = [b - a for a, b in zip(h0, h1, strict=False)]
        point[f"{op}_p50_ms"] = quantile_ms(0.5, delta)
        point[f"{op}_p99_ms"] = quantile_ms(0.99, delta)
    reads = (cur.cache_hits - prev.cache_hits) + (cur.cache_misses - prev.cache_misses)
    if cur.cache_mode != "none" and reads > 0:
        point["cache_hit_ratio"] = (cur.cache_hits - prev.cache_hits) / reads
    point["store_requests_per_s"] = (cur.store_requests - prev.store_requests) / dt
    point["store_errors_per_s"] = (cur.store_errors - prev.store_errors) / dt
    return point


class Ring:
    """At most `capacity` points in time order, one column of doubles per series; the
    oldest point goes when a new one comes to a full ring."""

    def __init__(self, capacity: int, step: float) -> None:
        self.capacity, self.step = capacity, step
        self.t = array("d", [NULL]) * capacity
        self.cols = {s: array("d", [NULL]) * capacity for s in SERIES}
        self.start = self.count = 0

    def _slot(self, i: int) -> int:
        return (self.start + i) % self.capacity

    def last_t(self) -> float:
        return self.t[self._slot(self.count - 1)] if self.count else -math.inf

    def put(self, t: float, point: dict[str, float]) -> None:
        """Add the point at time `t`; one at the newest point's time replaces it, and one
        older than the newest (the clock went back) is dropped."""
        last = self.last_t()
        if t < last:
            return
        if t > last:
            if self.count == self.capacity:
                self.start = self._slot(1)
            else:
                self.count += 1
        slot = self._slot(self.count - 1)
        self.t[slot] = t
        for s in SERIES:
            self.cols[s][slot] = point.get(s, NULL)

    def indices_since(self, t0: float) -> Iterator[int]:
        """Slots of the points at or after `t0`, oldest first."""
        first = self.count
        while first > 0 and self.t[self._slot(first - 1)] >= t0:
            first -= 1
        return (self._slot(i) for i in range(first, self.count))

    def dump(self) -> bytes:
        """The points oldest first: the times, then each series, as little-endian doubles."""
        out = b""
        for col in (self.t, *(self.cols[s] for s in SERIES)):
            part = array("d", (col[self._slot(i)] for i in range(self.count)))
            if sys.byteorder == "big":
                part.byteswap()
            out += part.tobytes()
        return out

    def load(self, data: bytes, count: int, series: list[str]) -> None:
        """Points `dump` wrote (with `series` named as they were then); the newest kept."""
        cols: list[array[float]] = []
        for i in range(1 + len(series)):
            part = array("d")
            part.frombytes(data[i * count * 8 : (i + 1) * count * 8])
            if sys.byteorder == "big":
                part.byteswap()
            cols.append(part)
        known = {name: cols[1 + i] for i, name in enumerate(series)}
        for j in range(max(0, count - self.capacity), count):
            self.put(cols[0][j], {s: known[s][j] for s in SERIES if s in known})


class DiskHistory:
    """One disk's points: `fine` every sampling step for the last `FINE_POINTS` steps,
    `coarse` every minute for the last day."""

    def __init__(self, disk_id: str, name: str, step: float) -> None:
        self.disk_id, self.name, self.step = disk_id, name, step
        self.fine = Ring(FINE_POINTS, step)
        self.coarse = Ring(COARSE_POINTS, COARSE_STEP)
        self.prev: Counters | None = None  # the last counters seen (not kept across restarts)
        self.changed = False  # since it was last saved

    def add(self, t: float, point: dict[str, float]) -> None:
        """A point at time `t` (a multiple of `step`); its minute is recomputed."""
        self.fine.put(t, point)
        minute = t // COARSE_STEP * COARSE_STEP
        self.coarse.put(minute, self._minute(minute))
        self.changed = True

    def record(self, t: float, counters: Counters, lag: float | None) -> dict[str, float] | None:
        """The point for the counters read at time `t`, added; returns it. A second reading
        for a step that has its point already (a pass woke early) is left out: its counters
        are those of the first, and would replace its rates with nothing known."""
        if self.prev is not None and t <= self.fine.last_t():
            return None
        point = rates(self.prev, counters, lag)
        self.prev = counters
        self.add(t, point)
        return point

    def _minute(self, minute: float) -> dict[str, float]:
        slots = [i for i in self.fine.indices_since(minute) if self.fine.t[i] < minute + 60]
        out = {}
        for s in SERIES:
            col = self.fine.cols[s]
            known = [col[i] for i in slots if not math.isnan(col[i])]
            if not known:
                out[s] = NULL
            else:
                out[s] = max(known) if s in PEAK else sum(known) / len(known)
        return out

    def query(self, since: float, now: float) -> dict[str, Any]:
        """The points of the last `since` seconds on a regular grid ending at `now`: the fine
        points when they reach that far back, else the minutes. The grid starts at the first
        point known in the range (none: empty lists); steps without a point are None."""
        ring = self.fine if since <= FINE_POINTS * self.step else self.coarse
        step = ring.step
        end = (now + self.step / 2) // step * step  # points are at `now` rounded to a step
        slots = list(ring.indices_since(end - since + step))
        if not slots:
            return {"step_seconds": step, "t": [], "series": {s: [] for s in SERIES}}
        first = ring.t[slots[0]]
        n = round((end - first) / step) + 1
        grid = [first + i * step for i in range(n)]
        series: dict[str, list[float | None]] = {s: [None] * n for s in SERIES}
        for slot in slots:
            i = round((ring.t[slot] - first) / step)
            if 0 <= i < n:
                for s in SERIES:
                    v = ring.cols[s][slot]
                    series[s][i] = None if math.isnan(v) else round(v, 4)
        t = [int(x) if x == int(x) else x for x in grid]
        return {"step_seconds": step, "t": t, "series": series}

    def encode(self) -> bytes:
        """The history as saved: a JSON header line, then both rings' doubles; compressed."""
        head = {
            "version": FORMAT_VERSION,
            "disk_id": self.disk_id,
            "name": self.name,
            "step": self.step,
            "series": list(SERIES),
            "fine": self.fine.count,
            "coarse": self.coarse.count,
        }
        body = json.dumps(head).encode() + b"\n" + self.fine.dump() + self.coarse.dump()
        return zlib.compress(body, 1)

    @classmethod
    def decode(cls, data: bytes, step: float) -> DiskHistory:
        """A saved history; ValueError if it is not one. Fine points taken at another step
        than `step` (the sampling interval changed) are left out; the minutes stay."""
        try:
            raw = zlib.decompress(data)
            line, _, body = raw.partition(b"\n")
            head = json.loads(line)
            if head.get("version") != FORMAT_VERSION:
                raise ValueError(f"history format {head.get('version')!r}")
            series, nfine, ncoarse = list(head["series"]), int(head["fine"]), int(head["coarse"])
            history = cls(str(head["disk_id"]), str(head["name"]), step)
        except (zlib.error, KeyError, TypeError) as exc:
            raise ValueError(f"not a saved history: {exc}") from None
        fine_bytes = nfine * 8 * (1 + len(series))
        if len(body) != fine_bytes + ncoarse * 8 * (1 + len(series)):
            raise ValueError("a saved history of the wrong length")
        if head.get("step") == step:
            history.fine.load(body[:fine_bytes], nfine, series)
        history.coarse.load(body[fine_bytes:], ncoarse, series)
        return history
