"""Per-disk I/O statistics kept by the NBD plugin: operations, bytes and latency histograms.

The plugin counts every request here; a thread in the plugin writes `IoStats.counters()` plus
the cache, volume and store stats to the export's stats file every couple of seconds (its
fields: `contract.ExportStats`), and the API's /metrics reads those files (api/metrics.py).
Counting costs two clock reads and one short lock per request: nothing per byte.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

# Upper bounds in seconds (Prometheus `le`), from a cached read to a slow store round trip.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
OPS = ("read", "write", "flush", "trim", "zero")


@dataclass
class OpStats:
    count: int = 0
    errors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


class IoStats:
    """Thread-safe counters of the requests one export served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops = {op: OpStats() for op in OPS}

    def observe(self, op: str, nbytes: int, seconds: float, ok: bool = True) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            s = self.ops[op]
            s.count += 1
            s.bytes += nbytes
            s.seconds += seconds
            s.buckets[i] += 1
            if not ok:
                s.errors += 1

    def counters(self) -> dict[str, dict[str, object]]:
        """A plain copy of every op's counters (the ``io`` section of the stats file)."""
        with self._lock:
            return {
                op: {
                    "count": s.count,
                    "errors": s.errors,
                    "bytes": s.bytes,
                    "seconds": s.seconds,
                    "buckets": list(s.buckets),
                }
                for op, s in self.ops.items()
            }
