"""`/v1/disks/{name}/stats`: a disk's performance history, as the console graphs it.

The service samples every disk it serves every 5 s and keeps an hour of those points and a day
of one-minute points (blockstore/control/history.py, control/sampling.py); this route answers
from memory and asks the store only for the disk's record. A disk not served here answers with
the history this host has of it (possibly none: empty lists).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.routes.common import Context, DiskName
from blockstore.control.history import parse_since
from blockstore.control.sampling import no_points

router = APIRouter(tags=["stats"])

Values = list[float | None]  # one per time; None: not known then, or not applicable


class StatsSeries(BaseModel):
    """Every series of a disk's history; MB are 10^6 bytes, rates are per second."""

    read_iops: Values
    write_iops: Values
    read_mbps: Values
    write_mbps: Values
    read_p50_ms: Values
    read_p99_ms: Values
    write_p50_ms: Values
    write_p99_ms: Values
    cache_hit_ratio: Values = Field(description="reads from the host cache; null: none mode")
    dirty_bytes: Values = Field(description="readwrite: acknowledged, not yet in the store")
    store_requests_per_s: Values
    store_errors_per_s: Values
    replication_lag_seconds: Values = Field(description="grs disks; null for lrs")


class DiskStats(BaseModel):
    disk: str
    since_seconds: int
    step_seconds: float = Field(description="5 (the last hour) or 60 (longer ranges)")
    t: list[int | float] = Field(description="Unix seconds of each point, one step apart")
    series: StatsSeries


SinceQuery = Annotated[
    str,
    Query(max_length=16, description="how far back: 15m, 1h, 1d, or <n>s|m|h|d up to 1d"),
]


@router.get("/disks/{name}/stats", response_model=DiskStats)
def disk_stats(name: DiskName, context: Context, since: SinceQuery = "15m") -> dict[str, Any]:
    """IOPS, MB/s, latency p50/p99, cache hit ratio, dirty bytes, store requests and errors
    and replication lag of the last `since`, one point per step, null where not known."""
    seconds = parse_since(since)  # 422 before anything is looked up
    disk = context.service().disks.get(name)
    history = context.history  # None: an app without a sampler (in-process tests): no points
    answer = no_points(seconds) if history is None else history.query(disk, seconds)
    return {"disk": name, "since_seconds": seconds, **answer}
