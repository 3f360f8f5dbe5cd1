"""The console's back end through a real `blockstore serve`: a disk's performance history
(GET /v1/disks/{name}/stats) rises with writes made through NBD and survives a restart of the
service; `blockstore disk stats` prints it; the Grafana dashboard asks only for metrics /metrics
serves; GET /v1/events streams a snapshot's and a delete's operations as they go."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from blockstore.control.history import SERIES
from tests.support.paths import BIN, REPO
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import TOKEN, ServeHost, connect, wait_for

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def host(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeHost]:
    h = ServeHost(
        tmp_path_factory.mktemp("stats") / "home",
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=f"stats-{uuid.uuid4().hex[:8]}/",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    ).start()
    try:
        yield h
    finally:
        h.stop()


def attached_disk(host: ServeHost, name: str, **extra: Any) -> str:
    """Create and attach a 64 MiB data disk; returns its socket."""
    host.ok("POST", "/v1/disks", {"name": name, "size_bytes": 64 << 20, "kind": "data", **extra})
    return str(host.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm1"})["socket"])


class Writer:
    """4 KiB writes through NBD (libnbd) in a thread until stopped."""

    def __init__(self, socket: str) -> None:
        self.h = connect(socket)
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        block = b"\x5a" * 4096
        while not self.stop.is_set():
            self.h.pwrite(block, (self.count % 4096) * 4096)
            self.count += 1
            if self.count % 64 == 0:
                self.h.flush()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.h.flush()
        self.h.shutdown()


def stats(host: ServeHost, name: str, since: str = "15m") -> dict[str, Any]:
    return host.ok("GET", f"/v1/disks/{name}/stats?since={since}")  # type: ignore[no-any-return]


def cli(host: ServeHost, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{host.port}"
    return subprocess.run(
        [BIN, *args, "--url", url, "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_history_rises_with_writes_and_survives_a_restart(host: ServeHost) -> None:
    sock = attached_disk(host, "perf1", iops_limit=1_000_000)  # capped: QoS metrics too
    writer = Writer(sock)
    began = time.monotonic()
    try:
        got = wait_for(
            lambda: (
                (s := stats(host, "perf1"))
                and any((v or 0) > 0 for v in s["series"]["write_iops"])
                and s
            ),
            25,
            "write IOPS in the history",
            step=0.5,
        )
        seen_after = time.monotonic() - began
    finally:
        writer.close()
    assert writer.count > 0
    assert seen_after < 16, f"the history showed the writes only after {seen_after:.1f} s"
    assert (got["disk"], got["since_seconds"], got["step_seconds"]) == ("perf1", 900, 5)
    assert set(got["series"]) == set(SERIES)
    t = got["t"]
    assert all(len(v) == len(t) for v in got["series"].values())
    assert all(b - a == 5 for a, b in itertools.pairwise(t))
    assert abs(t[-1] - time.time()) < 10
    assert max(v or 0 for v in got["series"]["write_mbps"]) > 0
    assert max(v or 0 for v in got["series"]["write_p99_ms"]) > 0
    for none_mode in ("cache_hit_ratio", "dirty_bytes", "replication_lag_seconds"):
        assert set(got["series"][none_mode]) == {None}  # a `none`, lrs disk: not applicable

    status, body = host.call("GET", "/v1/disks/perf1/stats?since=2d")
    assert status == 422 and "15m, 1h, 1d" in body["detail"], body
    status, body = host.call("GET", "/v1/disks/nope/stats")
    assert status == 404 and "nope" in body["detail"], body
    day = stats(host, "perf1", "1d")
    assert day["step_seconds"] == 60 and max(v or 0 for v in day["series"]["write_iops"]) > 0

    check_cli(host)
    check_dashboard(host)

    host.stop()  # the history is saved at a clean stop, and read back at the start
    assert (host.home / "history").is_dir() and list((host.home / "history").iterdir())
    host.start()
    again = stats(host, "perf1")
    before = {x: v for x, v in zip(got["t"], got["series"]["write_iops"], strict=True) if v}
    after = dict(zip(again["t"], again["series"]["write_iops"], strict=True))
    assert before and all(after.get(x) == v for x, v in before.items()), (before, after)


def check_cli(host: ServeHost) -> None:
    out = cli(host, "disk", "stats", "perf1", "--since", "15m")
    assert out.returncode == 0, out.stderr
    lines = {line.split("  ")[0].strip(): line for line in out.stdout.splitlines()}
    write = lines["write IOPS"]
    assert re.search(r"[▁▂▃▄▅▆▇█]+  last [0-9.]+  max [0-9.]+$", write), write
    assert float(write.rsplit("max ", 1)[1]) > 0
    assert lines["cache hit %"].endswith("(no data)")
    out = cli(host, "disk", "stats", "perf1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["disk"] == "perf1"
    out = cli(host, "disk", "stats", "nope")
    assert out.returncode == 1 and "error: disk 'nope' does not exist" in out.stderr
    out = cli(host, "disk", "stats", "perf1", "--since", "1w")
    assert out.returncode == 1 and "15m, 1h, 1d" in out.stderr and "Traceback" not in out.stderr


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bblockstore_[a-z0-9_]+", expr))


def check_dashboard(host: ServeHost) -> None:
    """Every metric the dashboard asks for is one /metrics serves (by the names its families
    give their samples), and the disk metrics have samples: a disk is attached and written."""
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}") as c:
        scrape = c.get("/metrics").text
    samples = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line[:1] != "#"}
    # A family with no sample yet (no store errors, no grs disk) shows in its TYPE line only.
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    served = {
        family + suffix
        for family, kind in re.findall(r"^# TYPE (\S+) (\S+)", scrape, re.M)
        for suffix in suffixes.get(kind, ("",))
    }
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    [var] = dash["templating"]["list"]
    assert var["name"] == "disk" and metric_names(var["definition"]) <= samples
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    asked = set().union(*map(metric_names, exprs))
    assert asked - served == set(), "not in a real /metrics scrape"
    for name in (
        "blockstore_disk_ops_total",
        "blockstore_disk_bytes_total",
        "blockstore_disk_latency_seconds_bucket",
        "blockstore_disk_dirty_bytes",
        "blockstore_disk_store_requests_total",
        "blockstore_disk_qos_throttled_seconds_total",
    ):
        assert name in asked and name in samples, name


class EventReader:
    """GET /v1/events read in a thread: the raw lines and the operation records."""

    def __init__(self, host: ServeHost) -> None:
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{host.port}", timeout=None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            with self.client.stream("GET", "/v1/events", headers=headers) as r:
                self.status, self.content_type = r.status_code, r.headers["content-type"]
                event = None
                for line in r.iter_lines():
                    self.lines.append(line)
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: ") and event == "operation":
                        self.records.append(json.loads(line.removeprefix("data: ")))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def of(self, op_id: str) -> list[tuple[str, float]]:
        return [(r["status"], r["progress"]) for r in self.records if r["id"] == op_id]


def test_the_event_stream_shows_operations_as_they_go(host: ServeHost) -> None:
    attached_disk(host, "ev1")
    events = EventReader(host)
    wait_for(lambda: events.lines, 10, "the stream to open")
    assert events.status == 200 and events.content_type.startswith("text/event-stream")
    assert events.lines[0] == "retry: 3000"

    snap = host.call("POST", "/v1/disks/ev1/snapshots", {"name": "s1"})
    assert snap[0] == 201 and snap[1]["name"] == "s1", snap
    op_id = snap[1]["operation"]
    wait_for(lambda: ("succeeded", 1.0) in events.of(op_id), 10, "the snapshot's end")
    assert events.of(op_id) == [("running", 0.0), ("succeeded", 1.0)]
    [first] = [r for r in events.records if r["id"] == op_id][:1]
    assert (first["kind"], first["target"]) == ("snapshot", "ev1/s1")
    assert host.ok("GET", f"/v1/operations/{op_id}") == events.records[-1]
    assert any(o["id"] == op_id for o in host.ok("GET", "/v1/operations?target=ev1/s1"))

    volume_id = host.ok("GET", "/v1/disks/ev1")["volume_id"]
    host.ok("POST", "/v1/disks/ev1/detach", {})
    op = host.ok("DELETE", "/v1/disks/ev1")
    wait_for(lambda: events.of(op["id"])[-1:] == [("succeeded", 1.0)], 30, "the delete's end")
    seen = events.of(op["id"])
    assert seen[0] == ("running", 0.0) and len(seen) >= 3  # started, progressed, ended
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    assert host.call("GET", "/v1/disks/ev1/stats")[0] == 404

    # A console left open does not hold the service's stop.
    began = time.monotonic()
    host.stop()
    assert time.monotonic() - began < 20
    assert events.ended.wait(10)
    saved = {p.name for p in (host.home / "history").iterdir()}
    assert saved and f"{volume_id}.hist" not in saved  # the deleted disk's history went
    host.start()


def test_a_grs_readwrite_disk_has_its_lag_cache_and_dirty_series(
    seaweed: SeaweedServer, seaweed2: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prefix = f"stats-grs-{uuid.uuid4().hex[:8]}/"
    host = ServeHost(
        tmp_path_factory.mktemp("stats-grs") / "home",
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=prefix,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        extra_env=seaweed2.secondary_env(prefix),
    ).start()
    try:
        sock = attached_disk(host, "geo1", redundancy="grs", caching="readwrite")
        writer = Writer(sock)
        try:

            def known(s: dict[str, Any], key: str) -> bool:
                return any(v is not None for v in s["series"][key])

            def complete() -> dict[str, Any] | None:
                writer.h.pread(4096, 0)  # reads, for the hit ratio
                s = stats(host, "geo1")
                keys = ("replication_lag_seconds", "dirty_bytes", "cache_hit_ratio")
                return s if all(known(s, k) for k in keys) else None

            got = wait_for(complete, 25, "lag, dirty bytes and hit ratio", step=0.5)
        finally:
            writer.close()
        assert all(v >= 0 for v in got["series"]["replication_lag_seconds"] if v is not None)
        assert all(0 <= v <= 1 for v in got["series"]["cache_hit_ratio"] if v is not None)
        with httpx.Client(base_url=f"http://127.0.0.1:{host.port}") as c:
            scrape = c.get("/metrics").text
        dash = DASHBOARD.read_text()
        for name in ("blockstore_replication_lag_seconds", "blockstore_replication_lag_bytes"):
            assert name in dash and f'{name}{{disk="geo1"}}' in scrape
    finally:
        host.stop()
