"""A disk's performance history: rates from the export's counters, a restarted export, the
one-minute points, bounded memory, the saved file, the ranges asked for; and the sampler that
feeds it from stats files, keeps it in the home and drops a deleted disk's."""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blockstore.clock import FakeClock
from blockstore.control.history import (
    COARSE_POINTS,
    FINE_POINTS,
    SERIES,
    Counters,
    DiskHistory,
    parse_since,
    quantile_ms,
    rates,
)
from blockstore.control.operations import OperationService
from blockstore.control.sampling import HistorySampler
from blockstore.errors import InvalidArgument
from blockstore.host import contract
from blockstore.host.iostats import LATENCY_BUCKETS
from blockstore.store.memory import MemoryStore

T0 = 1_699_999_980.0  # a multiple of 60


def hist(**at_bound: int) -> list[int]:
    """A latency histogram with `n` requests in the bucket whose upper bound is `b` ms."""
    out = [0] * (len(LATENCY_BUCKETS) + 1)
    for key, n in at_bound.items():
        out[LATENCY_BUCKETS.index(float(key.removeprefix("ms")) / 1000)] += n
    return out


def stats(
    reads: int = 0,
    writes: int = 0,
    *,
    epoch: int = 1,
    mode: str = "none",
    hits: int = 0,
    misses: int = 0,
    dirty: int = 0,
    gets: int = 0,
    puts: int = 0,
    errors: int = 0,
    read_hist: list[int] | None = None,
    write_hist: list[int] | None = None,
) -> dict[str, Any]:
    """A stats file as the plugin writes it (4 KiB requests)."""
    empty = [0] * (len(LATENCY_BUCKETS) + 1)
    return {
        "fenced": False,
        "epoch": epoch,
        "cache_mode": mode,
        "io": {
            "read": {"count": reads, "bytes": reads * 4096, "buckets": read_hist or empty},
            "write": {"count": writes, "bytes": writes * 4096, "buckets": write_hist or empty},
        },
        "cache": {"hits": hits, "misses": misses, "dirty_bytes": dirty},
        "store": {"gets": gets, "puts": puts, "errors": {"timeout": errors} if errors else {}},
    }


def c(at: float, **kw: Any) -> Counters:
    return Counters.of(stats(**kw), at)


def test_rates_come_from_counter_deltas_over_the_time_between_the_files() -> None:
    prev = c(T0, reads=100, writes=50, mode="readonly", hits=10, misses=10, gets=5, puts=1)
    cur = c(
        T0 + 4.0,
        reads=500,
        writes=450,
        mode="readonly",
        hits=310,
        misses=110,
        gets=25,
        puts=21,
        errors=2,
        write_hist=hist(ms5=400),
    )
    p = rates(prev, cur, None)
    assert p["read_iops"] == 100.0 and p["write_iops"] == 100.0
    assert p["read_mbps"] == pytest.approx(400 * 4096 / 4 / 1e6)
    assert p["cache_hit_ratio"] == pytest.approx(300 / 400)
    assert p["store_requests_per_s"] == 10.0 and p["store_errors_per_s"] == 0.5
    assert 2.5 < p["write_p50_ms"] < p["write_p99_ms"] <= 5.0  # inside the 2.5-5 ms bucket
    assert math.isnan(p["read_p50_ms"])  # no latencies of reads in the file: not known
    assert math.isnan(p["dirty_bytes"]) and math.isnan(p["replication_lag_seconds"])


def test_not_applicable_series_are_null_and_gauges_need_no_baseline() -> None:
    first = c(T0, writes=10, mode="readwrite", dirty=1 << 20)
    p = rates(None, first, 0.0)
    assert p["dirty_bytes"] == float(1 << 20) and p["replication_lag_seconds"] == 0.0
    assert math.isnan(p["write_iops"])  # no baseline yet
    none_mode = rates(c(T0, reads=1), c(T0 + 5, reads=9, hits=0, misses=8), None)
    assert math.isnan(none_mode["cache_hit_ratio"]) and math.isnan(none_mode["dirty_bytes"])


def test_a_restarted_export_gives_one_null_point_never_a_negative_or_huge_one() -> None:
    h = DiskHistory("v1", "d1", 5.0)
    h.record(T0, c(T0, writes=1_000_000), None)
    h.record(T0 + 5, c(T0 + 5, writes=1_000_500), None)
    # restarted: a new epoch, counters from 0 (and above the old value within one step)
    p = h.record(T0 + 10, c(T0 + 10, writes=2_000_000, epoch=2), None)
    assert math.isnan(p["write_iops"])
    p = h.record(T0 + 15, c(T0 + 15, writes=2_000_100, epoch=2), None)
    assert p["write_iops"] == 20.0
    # same epoch, counters went back (the file of another export lifetime)
    p = h.record(T0 + 20, c(T0 + 20, writes=3, epoch=2), None)
    assert math.isnan(p["write_iops"])
    # a file not rewritten since (a stuck export) is not a rate of 0
    p = h.record(T0 + 25, c(T0 + 20, writes=3, epoch=2), None)
    assert math.isnan(p["write_iops"])
    got = h.query(60, T0 + 25)["series"]["write_iops"]
    assert got == [None, 100.0, None, 20.0, None, None]
    # a pass that woke early reads again for a step that has its point: left out
    h2 = DiskHistory("v2", "d2", 5.0)
    h2.record(T0, c(T0 - 1, writes=0), None)
    assert h2.record(T0 + 5, c(T0 + 4, writes=50), None) is not None
    assert h2.record(T0 + 5, c(T0 + 4, writes=50), None) is None
    assert h2.query(60, T0 + 5)["series"]["write_iops"] == [None, 10.0]


def test_minutes_are_the_mean_of_rates_and_the_max_of_p99_and_lag() -> None:
    h = DiskHistory("v1", "d1", 5.0)
    for i in range(24):  # two minutes of points
        point = dict.fromkeys(SERIES, math.nan)
        point["write_iops"] = float(i)
        point["write_p99_ms"] = float(100 - i)
        point["replication_lag_seconds"] = float(i % 5)
        h.add(T0 + 5 * i, point)
    day = h.query(86400, T0 + 5 * 23)
    assert day["step_seconds"] == 60.0
    assert day["t"] == [int(T0), int(T0) + 60]
    assert day["series"]["write_iops"] == [5.5, 17.5]
    assert day["series"]["write_p99_ms"] == [100.0, 88.0]
    assert day["series"]["replication_lag_seconds"] == [4.0, 4.0]
    assert day["series"]["read_iops"] == [None, None]
    hour = h.query(3600, T0 + 5 * 23)
    assert hour["step_seconds"] == 5.0 and len(hour["t"]) == 24
    assert all(len(v) == len(hour["t"]) for v in hour["series"].values())


def test_memory_is_bounded_whatever_the_time_the_service_runs() -> None:
    h = DiskHistory("v1", "d1", 5.0)
    point = dict.fromkeys(SERIES, 1.0)
    sizes = {len(h.fine.t), len(h.coarse.t), *(len(col) for col in h.fine.cols.values())}
    for i in range(3 * 1440):  # three days, a point a minute (each makes a new minute)
        h.add(T0 + 60 * i, point)
    assert h.fine.count == FINE_POINTS and h.coarse.count == COARSE_POINTS
    assert {len(h.fine.t), len(h.coarse.t), *(len(c) for c in h.fine.cols.values())} == sizes
    day = h.query(86400, T0 + 60 * (3 * 1440 - 1))
    assert len(day["t"]) == 1440 and day["series"]["write_iops"][0] == 1.0


def test_the_grid_has_nulls_for_missing_steps_and_is_empty_without_points() -> None:
    h = DiskHistory("v1", "d1", 5.0)
    assert h.query(900, T0) == {"step_seconds": 5.0, "t": [], "series": {s: [] for s in SERIES}}
    point = dict.fromkeys(SERIES, 2.0)
    h.add(T0, point)
    h.add(T0 + 15, point)  # the service was down for two steps
    got = h.query(900, T0 + 30)
    assert got["t"] == [int(T0 + 5 * i) for i in range(7)]
    assert got["series"]["read_iops"] == [2.0, None, None, 2.0, None, None, None]
    assert h.query(900, T0 + 3600)["t"] == []  # nothing in the last 15 minutes


def test_a_saved_history_reads_back_the_same() -> None:
    h = DiskHistory("v1", "d1", 5.0)
    for i in range(200):
        point = {s: float(i * (j + 1)) if (i + j) % 3 else math.nan for j, s in enumerate(SERIES)}
        h.add(T0 + 5 * i, point)
    data = h.encode()
    back = DiskHistory.decode(data, 5.0)
    assert (back.disk_id, back.name) == ("v1", "d1")
    now = T0 + 5 * 199
    for since in (900, 3600, 86400):
        assert back.query(since, now) == h.query(since, now)
    other_step = DiskHistory.decode(data, 1.0)  # sampled at another interval: minutes only
    assert other_step.fine.count == 0 and other_step.query(86400, now) == h.query(86400, now)
    short = zlib.compress(zlib.decompress(data)[:-8])
    for bad in (b"", data[:-8], b"\x00" + data[1:], short, zlib.compress(b"{}\n")):
        with pytest.raises(ValueError):
            DiskHistory.decode(bad, 5.0)


def test_since_is_a_range_up_to_a_day() -> None:
    assert [parse_since(s) for s in ("15m", "1h", "1d", "30s", "24h")] == [
        900, 3600, 86400, 30, 86400
    ]  # fmt: skip
    for bad in ("", "0m", "2d", "25h", "15", "m", "1.5h", "-1h", "15 m", "1w"):
        with pytest.raises(InvalidArgument, match="15m, 1h, 1d"):
            parse_since(bad)


def test_quantiles_interpolate_inside_a_bucket() -> None:
    assert quantile_ms(0.5, hist(ms1=10)) == pytest.approx(0.75)  # (0.5, 1] ms, halfway
    assert math.isnan(quantile_ms(0.5, hist()))
    over = [0] * len(LATENCY_BUCKETS) + [3]  # all above the last bound
    assert quantile_ms(0.99, over) == LATENCY_BUCKETS[-1] * 1000


# -- the sampler ----------------------------------------------------------------------------


class Exports:
    """The two calls the sampler makes of the supervisor, over stats files in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.disks: list[dict[str, Any]] = []

    def served_disks(self) -> list[dict[str, Any]]:
        return list(self.disks)

    def socket_of(self, disk: dict[str, Any]) -> Path:
        return self.root / f"{disk['name']}.sock"

    def write(self, disk: dict[str, Any], at: float, **kw: Any) -> None:
        path = contract.stats_path(self.socket_of(disk))
        path.write_text(json.dumps(stats(**kw)))
        os.utime(path, (at, at))


def sampler_of(tmp_path: Path, ops: OperationService, clock: FakeClock) -> HistorySampler:
    exports = Exports(tmp_path)
    control = SimpleNamespace(
        context=SimpleNamespace(exports=exports),
        operations=ops,
        records=SimpleNamespace(items=lambda: iter([])),
        geo=SimpleNamespace(replication_status=lambda disk: {"lag_seconds": 1.5}),
    )
    return HistorySampler(control, tmp_path / "home", interval=5.0, clock=clock)  # type: ignore[arg-type]


def test_the_sampler_keeps_history_in_the_home_and_drops_a_deleted_disks(tmp_path: Path) -> None:
    clock, ops = FakeClock(T0), OperationService(MemoryStore(), "h1")
    sampler = sampler_of(tmp_path, ops, clock)
    exports = sampler.control.context.exports
    d1 = {"name": "d1", "volume_id": "v1", "redundancy": "grs"}
    d2 = {"name": "d2", "volume_id": "v2", "redundancy": "lrs"}
    exports.disks = [d1, d2]
    for i in range(3):
        clock.advance(5)
        for d in (d1, d2):
            exports.write(d, clock.time() - 1, writes=100 * i)
        sampler.sample()
    got = sampler.query(d1, 900)
    assert got["series"]["write_iops"] == [None, 20.0, 20.0]
    assert got["series"]["replication_lag_seconds"] == [1.5, 1.5, 1.5]
    assert sampler.query(d2, 900)["series"]["replication_lag_seconds"] == [None] * 3
    sampler.close()
    assert sorted(p.name for p in (tmp_path / "home/history").iterdir()) == ["v1.hist", "v2.hist"]

    again = sampler_of(tmp_path, ops, clock)  # the service restarted
    again.load()
    assert again.query(d1, 900) == got
    ops.start("delete-disk", "d1", lambda progress: None)  # a delete starts here
    ops.wait_all()
    assert again.disks() == ["d2"]
    assert [p.name for p in (tmp_path / "home/history").iterdir()] == ["v2.hist"]
    # a new disk of the same name starts its own history
    assert again.query({"name": "d1", "volume_id": "v9"}, 900)["t"] == []
    again.close()


def test_an_idle_grs_disks_lag_is_measured_once_a_minute(tmp_path: Path) -> None:
    clock, ops = FakeClock(T0), OperationService(MemoryStore(), "h1")
    sampler = sampler_of(tmp_path, ops, clock)
    asked: list[str] = []
    sampler.control.geo.replication_status = lambda disk: (
        asked.append(disk["name"]) or {"lag_seconds": 0.0}
    )
    d1 = {"name": "d1", "volume_id": "v1", "redundancy": "grs"}
    exports = sampler.control.context.exports
    exports.disks = [d1]

    def step(writes: int) -> None:
        clock.advance(5)
        exports.write(d1, clock.time() - 1, writes=writes)
        sampler.sample()

    for _ in range(6):
        step(10)  # idle: the lag was 0 and nothing was written since
    assert len(asked) == 1
    step(11)  # a write: measured again
    assert len(asked) == 2
    for _ in range(12):
        step(11)
    assert len(asked) == 3  # and once a minute regardless
    assert set(sampler.query(d1, 900)["series"]["replication_lag_seconds"]) == {0.0}
    sampler.close()
