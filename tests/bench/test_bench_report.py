"""The bench report is re-derivable from its raw JSON: every table figure and ratio is recomputed
here from a small recorded raw.json (a trimmed quick run) and compared with what report.py
prints."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from bench import report
from tests.support.paths import REPO

RAW = REPO / "tests" / "data" / "bench_raw_small.json"


@pytest.fixture
def raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RAW.read_text())
    return data


def _table_line(md: str, section: str, target: str, cache: str) -> list[str]:
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == target and cells[1] == cache:
            return cells
    raise AssertionError(f"no row {target!r} ({cache}) under {section!r}")


def test_percentile_is_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert report.percentile(xs, 50) == 50
    assert report.percentile(xs, 99) == 99
    assert report.percentile(xs, 100) == 100
    assert report.percentile([7.0], 99) == 7


def test_every_fio_row_is_fios_own_percentiles(raw: dict[str, Any]) -> None:
    rows = {(r.target, r.workload, r.cache): r for r in report.rows(raw)}
    flush = {w["name"]: w["flush_each"] for w in raw["workloads"]}
    checked = 0
    for rec in raw["runs"]:
        if "fio" not in rec:
            continue
        job = rec["fio"]
        side = job["read"] if job["read"]["total_ios"] else job["write"]
        p50 = side["lat_ns"]["percentile"]["50.000000"]
        p99 = side["lat_ns"]["percentile"]["99.000000"]
        if flush[rec["workload"]]:  # write + flush, as fio reports them separately
            p50 += job["sync"]["lat_ns"]["percentile"]["50.000000"]
            p99 += job["sync"]["lat_ns"]["percentile"]["99.000000"]
        row = rows[(rec["target"], rec["workload"], rec["cache"])]
        assert row.median_us == pytest.approx(p50 / 1000)
        assert row.p99_us == pytest.approx(p99 / 1000)
        assert row.iops == pytest.approx(side["iops"])
        assert row.mbps == pytest.approx(side["bw_bytes"] / 1e6)
        checked += 1
    assert checked >= 5


def test_ioping_and_store_floor_rows_from_samples(raw: dict[str, Any]) -> None:
    rows = report.rows(raw)
    for rec in raw["runs"]:
        if "ioping_ns" not in rec:
            continue
        row = next(r for r in rows if (r.target, r.workload, r.cache) ==
                   (rec["target"], rec["workload"], rec["cache"]))  # fmt: skip
        assert row.median_us == pytest.approx(statistics.median(rec["ioping_ns"]) / 1000)
        s = sorted(rec["ioping_ns"])
        assert row.p99_us == pytest.approx(s[-(-99 * len(s) // 100) - 1] / 1000)
    sf = raw["store_floor"]
    get = report.store_floor_row(raw, "fio 4k randread QD1")
    assert get is not None
    assert get.median_us == pytest.approx(statistics.median(sf["get_4k_ns"]) / 1000)
    put = report.store_floor_row(raw, "fio 4k randwrite+flush QD1")
    assert put is not None
    assert put.median_us == pytest.approx(statistics.median(sf["put_4k_ns"]) / 1000)
    seq = report.store_floor_row(raw, "fio 1M seqwrite QD4")
    t = sf["put_4m_4threads"]
    assert seq is not None
    assert seq.mbps == pytest.approx(t["ops"] * t["bytes_per_op"] / t["seconds"] / 1e6)


def test_tables_print_the_derived_figures_and_ratios(raw: dict[str, Any]) -> None:
    md = report.markdown(raw)
    rows = report.rows(raw)
    # Latency workload: ratios of medians against each floor, as printed.
    w = "fio 4k randread QD1"
    fl = report.floors(raw, rows, w)
    for r in (r for r in rows if r.workload == w and r.error is None):
        cells = _table_line(md, w, r.target, r.cache)
        assert cells[2] == report.fmt_us(r.median_us)
        assert cells[3] == report.fmt_us(r.p99_us)
        assert fl["file"] and fl["python"] and fl["store"]
        assert r.median_us is not None
        assert cells[7] == report.fmt_ratio(r.median_us / fl["file"].median_us)  # type: ignore[operator]
        assert cells[8] == report.fmt_ratio(r.median_us / fl["python"].median_us)  # type: ignore[operator]
        assert cells[9] == report.fmt_ratio(r.median_us / fl["store"].median_us)  # type: ignore[operator]
    # Throughput workload: ratios of MB/s.
    w = "fio 1M seqread QD4"
    fl = report.floors(raw, rows, w)
    for r in (r for r in rows if r.workload == w and r.error is None):
        cells = _table_line(md, w, r.target, r.cache)
        assert cells[5] == report.fmt_num(r.mbps, 1)
        assert r.mbps is not None and fl["store"] and fl["store"].mbps
        assert cells[9] == report.fmt_ratio(r.mbps / fl["store"].mbps)


def test_article_table_and_header(raw: dict[str, Any]) -> None:
    md = report.markdown(raw)
    rows = report.rows(raw)
    none = next(r for r in rows if r.target == "blockstore none" and r.workload[:6] == "ioping")
    line = next(x for x in md.splitlines() if x.startswith("| data disk (default caching"))
    assert "| 6 ms |" in line
    assert report.fmt_us(none.median_us) in line
    assert none.median_us is not None
    assert report.fmt_ratio(none.median_us / 6000) in line
    assert raw["machine"]["cpu"] in md
    assert raw["versions"]["nbdkit"] in md
    assert "| 0.4 ms |" in md and "| 18 ms |" in md


def test_charts_render(raw: dict[str, Any], tmp_path: Path) -> None:
    paths = report.charts(raw, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "throughput.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_peer_table_ratios(raw: dict[str, Any]) -> None:
    rows = report.rows(raw)
    md = report.markdown(raw)
    line = next(x for x in md.splitlines() if x.startswith("| blockstore readwrite (warm) | peer"))
    cells = [c.strip().strip("*") for c in line.strip("|").split("|")]

    def get(target: str, w: str) -> report.Row:
        return next(r for r in rows if (r.target, r.workload, r.cache) == (target, w, "warm"))

    ours, peer = (
        get("blockstore readwrite", "fio 4k randread QD1"),
        get("peer: nbdkit S3 + cache", "fio 4k randread QD1"),
    )
    assert ours.median_us and peer.median_us
    assert cells[3] == report.fmt_ratio(peer.median_us / ours.median_us)  # latency: peer / ours
    ours, peer = (
        get("blockstore readwrite", "fio 1M seqread QD4"),
        get("peer: nbdkit S3 + cache", "fio 1M seqread QD4"),
    )
    assert ours.mbps and peer.mbps
    assert cells[7] == report.fmt_ratio(ours.mbps / peer.mbps)  # throughput: ours / peer


def test_qd1_writes_compare_with_the_puts_timed_next_to_them(raw: dict[str, Any]) -> None:
    """The suite times single 4 KiB PUTs right before and after each QD1 write job; the report
    divides the job's median by their median. (The recorded run predates those samples: the
    test adds some to one job.)"""
    w = "fio 4k randwrite QD1"
    rec = next(r for r in raw["runs"] if r["workload"] == w and r["target"] == "blockstore none")
    rec["put_4k_before_ns"] = [900_000, 1_000_000, 1_100_000]
    rec["put_4k_after_ns"] = [1_200_000, 1_300_000]
    rows = report.rows(raw)
    row = next(r for r in rows if (r.target, r.workload) == ("blockstore none", w))
    assert row.adjacent_put_us == pytest.approx(1100.0)
    cells = _table_line(report.markdown(raw), w, "blockstore none", "-")
    assert row.median_us is not None
    assert cells[10] == report.fmt_ratio(row.median_us / 1100.0)
    other = next(
        r for r in rows if r.workload == w and r.target != "blockstore none" and r.error is None
    )
    assert _table_line(report.markdown(raw), w, other.target, other.cache)[10] == "-"


def test_cpu_per_request_counts_nbdkit_and_the_store_over_every_request() -> None:
    """CPU us per I/O: the metered seconds of nbdkit and the store over the requests served,
    a time-based job's count scaled up for its ramp (the meter sees the ramp, fio does not)."""
    raw = json.loads(RAW.read_text())
    raw["config"].update(runtime=10.0, ramp=1.0)
    w = "fio 4k randread QD1"
    rec = next(r for r in raw["runs"] if r["workload"] == w and r["target"] == "blockstore none")
    rec["command"] = ["fio", "--time_based"]
    rec["cpu_seconds"] = {"nbdkit": 0.3, "store": 0.1}
    ios = rec["fio"]["read"]["total_ios"] * 1.1
    row = next(r for r in report.rows(raw) if (r.target, r.workload) == ("blockstore none", w))
    assert row.cpu_us_per_io == pytest.approx(0.4e6 / ios)
    cells = _table_line(report.markdown(raw), w, "blockstore none", "-")
    assert cells[6] == report.fmt_num(row.cpu_us_per_io)
    assert "## CPU per request" in report.markdown(raw)


def test_1m_writes_compare_with_the_parallel_puts_timed_next_to_them() -> None:
    """A 1 MiB write job's floor drifts like the single PUT's: 4-thread 4 MiB PUT throughput
    timed before and after it, and the ratio to their mean printed next to the store floor's."""
    raw = json.loads(RAW.read_text())
    w = "fio 1M seqwrite QD4"
    rec = next(r for r in raw["runs"] if r["workload"] == w and r["target"] == "blockstore none")
    rec["put_4m_adjacent"] = [
        {"ops": 100, "bytes_per_op": 4 << 20, "seconds": 2.0},
        {"ops": 50, "bytes_per_op": 4 << 20, "seconds": 1.0},
    ]
    row = next(r for r in report.rows(raw) if (r.target, r.workload) == ("blockstore none", w))
    floor = 100 * (4 << 20) / 2.0 / 1e6
    assert row.adjacent_put_mbps == pytest.approx(floor)
    cells = _table_line(report.markdown(raw), w, "blockstore none", "-")
    assert row.mbps is not None
    assert cells[10] == report.fmt_ratio(row.mbps / floor)


def _job(lat_us: float, mbps: float, write: bool) -> dict[str, Any]:
    side = {"total_ios": 1, "iops": 1.0, "bw_bytes": mbps * 1e6, "lat_ns": {"mean": lat_us * 1000,
            "percentile": {"50.000000": lat_us * 1000, "99.000000": lat_us * 1000}}}  # fmt: skip
    idle = {"total_ios": 0}
    return {"write": side, "read": idle} if write else {"read": side, "write": idle}


def test_interleaved_cost_is_the_median_of_each_rounds_own_ratio() -> None:
    """A store that drifts between rounds moves both disks of a round together: the cost is
    per round (variant / plain), then the median, not a ratio of medians."""
    plain = [(100.0, 500.0), (300.0, 400.0), (500.0, 200.0)]
    enc = [(200.0, 250.0), (310.0, 380.0), (520.0, 190.0)]  # rounds: 2x, 1.03x, 1.04x
    disks = {
        name: [{"write": {"fio": _job(lat, 1, True)}, "read": {"fio": _job(1, mb, False)}}
               for lat, mb in rounds]
        for name, rounds in (("blockstore none", plain), ("blockstore none, encrypted", enc))
    }  # fmt: skip
    raw = {"workloads": [], "variants": {"none": {"write": "w", "read": "r", "disks": disks}}}
    for line in report.interleaved_table(raw, "encrypted").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "blockstore none, encrypted":
            lat_cost = statistics.median(e[0] / p[0] for e, p in zip(enc, plain, strict=True))
            mb_cost = statistics.median(p[1] / e[1] for e, p in zip(enc, plain, strict=True))
            assert cells[3] == report.fmt_ratio(lat_cost) == "1.04x"  # medians alone: 1.03x
            assert cells[5] == report.fmt_ratio(mb_cost) == "1.05x"  # medians alone: 1.05x
            assert cells[6] == "3"
            return
    raise AssertionError("no encrypted row")


def test_qos_table_compares_each_capped_row_with_its_binding_cap() -> None:
    """4 KiB jobs meet the IOPS cap (1 IO each); 1 MiB jobs meet the MB/s cap first (4 IOs
    each: 125 a second by IOPS, 38.1 by 40 MB/s)."""
    rows = [
        report.Row("blockstore none", "fio 4k randread QD1", "-", iops=2000.0),
        report.Row("blockstore none, capped", "fio 4k randread QD1", "-", iops=495.0),
        report.Row("blockstore none, capped", "fio 1M seqread QD4", "-", iops=38.0),
        report.Row("blockstore none, capped", "ioping 4k read QD1", "-", iops=400.0),
    ]
    table = report.qos_table({"qos": {"iops_limit": 500, "mbps_limit": 40}}, rows)
    lines = [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()[2:]]
    assert lines[0] == ["blockstore none, capped", "fio 4k randread QD1", "2,000", "495",
                        "500 IOPS", report.fmt_ratio(495 / 500)]  # fmt: skip
    assert lines[1][4:] == ["40 MB/s", report.fmt_ratio(38.0 / (40e6 / (1 << 20)))]
    assert len(lines) == 2  # ioping is not an fio job with a request size it knows
