"""Prometheus collectors: the object store's counters and every served disk's I/O.

Nothing is re-counted here: the store's `StoreStats` is read as it is, and each export's
counters come from the stats file its plugin writes next to its socket, read through the
contract both sides share (`blockstore.host.contract.ExportStats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from blockstore.host.contract import ExportStats
from blockstore.host.iostats import LATENCY_BUCKETS
from blockstore.stats import counters
from blockstore.store.base import ObjectStore


class StoreCollector:
    """The control plane's own object-store client."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = counters(self.store.stats)
        requests = CounterMetricFamily(
            "blockstore_store_requests", "Object store requests by operation", labels=["op"]
        )
        for op in ("gets", "puts", "deletes", "lists", "heads"):
            requests.add_metric([op.removesuffix("s")], float(stats[op]))
        yield requests
        errors = CounterMetricFamily(
            "blockstore_store_errors", "Object store errors by kind", labels=["kind"]
        )
        for kind, count in stats["errors"].items():
            errors.add_metric([kind], float(count))
        yield errors
        for name in ("bytes_fetched", "bytes_uploaded", "retries", "precondition_failed"):
            yield CounterMetricFamily(
                f"blockstore_store_{name}",
                f"Object store {name.replace('_', ' ')}",
                value=float(stats[name]),
            )


class DiskCollector:
    """Per-disk I/O of the exports this host serves: ops, bytes, latency, cache, store."""

    def __init__(self, disks: Callable[[], list[tuple[str, dict[str, Any]]]]) -> None:
        self.disks = disks  # () -> [(disk name, stats dict written by its plugin)]

    def collect(self) -> Iterator[Metric]:
        label = ["disk", "op"]
        ops = CounterMetricFamily("blockstore_disk_ops", "NBD requests served", labels=label)
        errs = CounterMetricFamily("blockstore_disk_errors", "NBD requests failed", labels=label)
        nbytes = CounterMetricFamily(
            "blockstore_disk_bytes", "Bytes per request kind", labels=label
        )
        lat = HistogramMetricFamily(
            "blockstore_disk_latency_seconds", "NBD request latency", labels=label
        )
        held = GaugeMetricFamily(
            "blockstore_disk_switchover_held_seconds",
            "Live migration: the longest a request waited for the switchover to this host",
            labels=["disk"],
        )
        hits = CounterMetricFamily(
            "blockstore_disk_cache_hits", "Reads from the host cache", labels=["disk"]
        )
        misses = CounterMetricFamily(
            "blockstore_disk_cache_misses", "Reads that went to the store", labels=["disk"]
        )
        dirty = GaugeMetricFamily(
            "blockstore_disk_dirty_bytes",
            "readwrite: bytes acknowledged but not yet in the store",
            labels=["disk"],
        )
        sreq = CounterMetricFamily(
            "blockstore_disk_store_requests",
            "Object store requests of the disk's export",
            labels=label,
        )
        serr = CounterMetricFamily(
            "blockstore_disk_store_errors",
            "Object store errors of the disk's export",
            labels=["disk", "kind"],
        )
        for name, raw in self.disks():
            st = ExportStats.from_dict(raw)
            for op, o in st.io.items():
                ops.add_metric([name, op], float(o["count"]))
                errs.add_metric([name, op], float(o["errors"]))
                nbytes.add_metric([name, op], float(o["bytes"]))
                cumulative, buckets = 0, []
                for bound, n in zip((*LATENCY_BUCKETS, float("inf")), o["buckets"], strict=True):
                    cumulative += n
                    buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
                lat.add_metric([name, op], buckets, float(o["seconds"]))
            held.add_metric([name], st.held_ms_max / 1000)
            hits.add_metric([name], float(st.cache.get("hits", 0)))
            misses.add_metric([name], float(st.cache.get("misses", 0)))
            dirty.add_metric([name], float(st.cache.get("dirty_bytes", 0)))
            for op in ("gets", "puts", "deletes", "lists", "heads"):
                sreq.add_metric([name, op.removesuffix("s")], float(st.store.get(op, 0)))
            for kind, n in st.store.get("errors", {}).items():
                serr.add_metric([name, kind], float(n))
        yield from (ops, errs, nbytes, lat, held, hits, misses, dirty, sreq, serr)


class QosCollector:
    """Per capped disk served here: its caps and rates in force, credits left, throttled time
    (blockstore/host/qos.py `Limiter.counters`, from the export's stats file)."""

    def __init__(self, disks: Callable[[], list[tuple[str, dict[str, Any]]]]) -> None:
        self.disks = disks

    def collect(self) -> Iterator[Metric]:
        dims = ["disk", "dimension"]  # iops | mbps
        limit = GaugeMetricFamily("blockstore_disk_qos_limit", "Baseline cap", labels=dims)
        now = GaugeMetricFamily(
            "blockstore_disk_qos_limit_now",
            "Cap in force now (burst while credits last)",
            labels=dims,
        )
        credits = GaugeMetricFamily(
            "blockstore_disk_qos_credits", "Burst credits left (IOs or MB)", labels=dims
        )
        throttled = CounterMetricFamily(
            "blockstore_disk_qos_throttled_seconds",
            "Time requests were held back by the disk's caps, summed",
            labels=["disk"],
        )
        for name, raw in self.disks():
            q = ExportStats.from_dict(raw).qos
            if not q:
                continue
            throttled.add_metric([name], float(q.get("throttled_seconds", 0)))
            for dim, base in (("iops", "iops_limit"), ("mbps", "mbps_limit")):
                if f"{dim}_now" in q:
                    limit.add_metric([name, dim], float(q["limits"][base]))
                    now.add_metric([name, dim], float(q[f"{dim}_now"]))
                    credits.add_metric([name, dim], float(q[f"{dim}_credits"]))
        yield from (limit, now, credits, throttled)


class ReplicationCollector:
    """Per grs disk: replication lag (seconds, bytes), the RPO target and whether it is
    exceeded, and what the replicator copied."""

    def __init__(self, statuses: Callable[[], list[tuple[str, dict[str, Any]]]]) -> None:
        self.statuses = statuses  # () -> [(disk name, the status GET /v1/disks/{name} shows)]

    def collect(self) -> Iterator[Metric]:
        label = ["disk"]
        lag = GaugeMetricFamily(
            "blockstore_replication_lag_seconds",
            "Age of the oldest acknowledged write not yet on the secondary (0: none pending)",
            labels=label,
        )
        lag_bytes = GaugeMetricFamily(
            "blockstore_replication_lag_bytes",
            "Bytes the primary acknowledged that the secondary does not hold yet",
            labels=label,
        )
        target = GaugeMetricFamily(
            "blockstore_replication_rpo_target_seconds", "Configured RPO target", labels=label
        )
        exceeded = GaugeMetricFamily(
            "blockstore_replication_rpo_exceeded",
            "1 when the lag exceeds the RPO target",
            labels=label,
        )
        copied = CounterMetricFamily(
            "blockstore_replication_bytes_copied", "Bytes copied to the secondary", labels=label
        )
        errors = CounterMetricFamily(
            "blockstore_replication_errors", "Replication passes that failed", labels=label
        )
        for name, st in self.statuses():
            if st.get("lag_seconds") is not None:  # None: not measured (primary down)
                lag.add_metric([name], float(st["lag_seconds"]))
                lag_bytes.add_metric([name], float(st["lag_bytes"]))
            target.add_metric([name], float(st.get("rpo_target_seconds") or 0))
            exceeded.add_metric([name], 1.0 if st.get("rpo_exceeded") else 0.0)
            copied.add_metric([name], float(st.get("bytes_copied") or 0))
            errors.add_metric([name], float(st.get("errors") or 0))
        yield from (lag, lag_bytes, target, exceeded, copied, errors)


class MigrationCollector:
    """Per disk migrating live from or to this host: 1, labelled with this host's role and
    the other host."""

    def __init__(self, migrations: Callable[[], list[tuple[str, str, dict[str, Any]]]]) -> None:
        self.migrations = migrations  # () -> [(disk name, "source" | "destination", block)]

    def collect(self) -> Iterator[Metric]:
        migrating = GaugeMetricFamily(
            "blockstore_disk_migrating",
            "1 while the disk migrates live between this host and `peer`",
            labels=["disk", "role", "peer"],
        )
        for name, role, block in self.migrations():
            peer = block["from_host"] if role == "destination" else block["to_host"]
            migrating.add_metric([name, role, peer], 1.0)
        yield migrating
