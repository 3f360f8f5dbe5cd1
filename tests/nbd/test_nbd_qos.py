"""QoS caps under real load (issue #21): fio over NBD against real nbdkit exports on real
SeaweedFS, through the API (create with caps, attach, PATCH a running export, GET, /metrics).

- A capped disk holds its IOPS cap within 5% over 30 s at QD1 and at QD32, and its MB/s cap
  with 1 MiB requests (each charged as four 256 KiB IOs and its bytes).
- Bursting: the disk runs at its burst rate for as long as its credits pay, then at baseline.
- A PATCH reaches the running export within a second.
- Two disks on one host, one flooding at QD32 under its own cap, the other's latency at QD1
  stays within 1.5x of what it was alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.apihost import Host, new_host
from tests.support.nbdtools import run
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20


@pytest.fixture
def api(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[Host]:
    with new_host(seaweed, tmp_path / "home", "qos") as host:
        yield host


def attached(api: Host, name: str, **caps: Any) -> str:
    """Create a readwrite disk with `caps`, attach it; its NBD URI."""
    body = {"name": name, "size_bytes": 64 * MiB, "kind": "data", "caching": "readwrite", **caps}
    r = api("POST", "/v1/disks", json=body)
    assert r.status_code == 201, r.text
    r = api("POST", f"/v1/disks/{name}/attach", json={"vm": f"vm-{name}"})
    assert r.status_code == 200, r.text
    return str(r.json()["nbd_uri"])


def fio(uri: str, *args: str, seconds: float, log: Path | None = None) -> dict[str, Any]:
    """One time-based fio job over NBD; its JSON job record."""
    cmd = ["fio", "--name=qos", "--ioengine=nbd", f"--uri={uri}", "--size=32M",
           "--time_based", f"--runtime={seconds}", "--output-format=json", *args]  # fmt: skip
    if log is not None:
        cmd += [f"--write_iops_log={log}", "--log_avg_msec=1000"]
    out = run(cmd, timeout=seconds + 120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]  # type: ignore[no-any-return]


def iops(job: dict[str, Any]) -> float:
    return float(job["read"]["iops"] + job["write"]["iops"])


@pytest.mark.parametrize("qd", [1, 32])
def test_nbd_capped_disk_holds_its_iops_for_30_s(api: Host, qd: int) -> None:
    uri = attached(api, f"capped{qd}", iops_limit=400)
    job = fio(uri, "--rw=randrw", "--bs=4k", f"--iodepth={qd}", seconds=30)
    print(f"QD{qd}: {iops(job):.1f} IOPS under a cap of 400")
    assert iops(job) == pytest.approx(400, rel=0.05)
    live = api("GET", f"/v1/disks/capped{qd}").json()["qos"]
    assert live["iops_limit"] == 400
    time.sleep(2.5)  # the next stats snapshot
    live = api("GET", f"/v1/disks/capped{qd}").json()["qos"]["live"]
    assert live["iops_now"] == 400 and live["throttled_seconds"] > 0


def test_nbd_capped_disk_holds_its_mbps_with_large_requests(api: Host) -> None:
    uri = attached(api, "mb", mbps_limit=20, iops_limit=1000)
    job = fio(uri, "--rw=read", "--bs=1M", "--iodepth=4", seconds=15)
    print(f"1 MiB reads: {job['read']['bw_bytes'] / 1e6:.2f} MB/s under a cap of 20")
    assert job["read"]["bw_bytes"] == pytest.approx(20e6, rel=0.05)
    # 1 MiB = 4 IOs of 256 KiB: an IOPS cap of 40 allows 10 MiB/s of 1 MiB reads.
    r = api("PATCH", "/v1/disks/mb", json={"mbps_limit": 0, "iops_limit": 40})
    assert r.status_code == 200, r.text
    time.sleep(1.0)  # applied within a second
    job = fio(uri, "--rw=read", "--bs=1M", "--iodepth=4", seconds=10)
    print(f"1 MiB reads: {job['read']['iops']:.2f} a second under 40 IOPS (10 expected)")
    assert job["read"]["iops"] == pytest.approx(10, rel=0.05)


def test_nbd_burst_runs_on_credits_then_falls_to_baseline(api: Host, tmp_path: Path) -> None:
    # credits: (600 - 200) x 5 s = 2000 IOs, spent at 400 a second above baseline: 5 s
    uri = attached(api, "bursty", iops_limit=200, burst_iops=600, burst_seconds=5)
    log = tmp_path / "burst"
    fio(uri, "--rw=randwrite", "--bs=4k", "--iodepth=16", seconds=12, log=log)
    ended = time.monotonic()
    per_second = [
        int(line.split(",")[1]) for line in Path(f"{log}_iops.1.log").read_text().splitlines()
    ]
    print(f"burst, IOPS second by second: {per_second}")
    assert statistics.median(per_second[:4]) == pytest.approx(600, rel=0.1), per_second
    assert statistics.median(per_second[6:11]) == pytest.approx(200, rel=0.1), per_second
    time.sleep(2.5)
    live = api("GET", "/v1/disks/bursty").json()["qos"]["live"]
    # spent, and earned back only since the job ended: the baseline left unused, 200 a second
    assert live["iops_credit_cap"] == 2000
    assert live["iops_credits"] <= 200 * (time.monotonic() - ended) + 50, live
    metrics = api("GET", "/metrics").text
    assert 'blockstore_disk_qos_limit{dimension="iops",disk="bursty"} 200.0' in metrics
    assert 'blockstore_disk_qos_throttled_seconds_total{disk="bursty"}' in metrics


def test_nbd_a_flooding_neighbour_under_its_cap_leaves_latency_alone(api: Host) -> None:
    quiet = attached(api, "quiet", iops_limit=500)
    noisy = attached(api, "noisy", iops_limit=1000, mbps_limit=8)
    args = ["--rw=randrw", "--bs=4k", "--iodepth=1", "--rate_iops=100"]
    alone = fio(quiet, *args, seconds=10)
    proc = subprocess.Popen(
        ["fio", "--name=flood", "--ioengine=nbd", f"--uri={noisy}", "--size=32M",
         "--rw=randwrite", "--bs=64k", "--iodepth=32", "--time_based", "--runtime=14"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2)
        busy = fio(quiet, *args, seconds=10)
    finally:
        proc.wait(60)
    for side in ("read", "write"):
        a = alone[side]["clat_ns"]["percentile"]["50.000000"]
        b = busy[side]["clat_ns"]["percentile"]["50.000000"]
        print(f"{side}: p50 {a / 1000:.0f} us alone, {b / 1000:.0f} us next to the flood")
        assert b <= 1.5 * a, f"{side} p50 {a / 1000:.0f} us alone, {b / 1000:.0f} us flooded"
