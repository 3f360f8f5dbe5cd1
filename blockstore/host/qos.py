"""Per-disk performance caps with credit bursting (issue #21), enforced in the export's data path.

What a disk is promised, and how it is counted (README, "Performance you can provision"):

- A request costs IOs and bytes. IOs: one per 256 KiB or part of it (a 1 MiB request is 4 IOs,
  as Azure and EBS count IOs of SSD disks); a trim or zero is 1 IO and no bytes; a flush is
  free. Bytes: the request's length, MB = 10^6 bytes, as the clouds quote MB/s.
- Every read and write the VM sends is charged, whether the host cache serves it or not. (Azure
  counts cache hits against a VM-wide cached limit instead; blockstore has no VM-wide limit,
  and a cap that depends on the hit rate is no promise: the VM gets its number either way, and
  its neighbours are protected from the CPU a hit storm costs as much as from misses.)
- Baseline: `iops_limit` and `mbps_limit` (0: no cap), each a rate with a reservoir of
  `RESERVOIR` seconds of it, so a request after a pause runs at once and a steady stream gets
  exactly the rate.
- Bursting, Azure-style credits: with `burst_iops` (`burst_mbps`) above the baseline, the disk
  may run up to the burst rate while it has credits. The credit bucket holds
  (burst - baseline) x `burst_seconds` units and is full when the export starts (a full bucket
  is `burst_seconds` at the burst rate); capacity the disk leaves unused below its baseline
  flows into it (the baseline reservoir overflowing), use above the baseline is paid from it;
  empty, the disk runs at its baseline until it refills.

Enforcement: `Limiter.charge` reserves the request's cost under a short lock (a bucket may go
into debt: requests queue in reservation order, a large one is never starved), then sleeps
for its delay outside the lock; `time.sleep` releases the GIL, so a throttled request holds
neither the limiter nor the interpreter. Nothing here runs per byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from blockstore.errors import InvalidArgument

IO_UNIT = 256 * 1024  # one IO per this many bytes of a request, or part of it
MB = 1_000_000
RESERVOIR = 0.05  # seconds of baseline a disk may use at once after a pause
MAX_BURST_SECONDS = 86_400.0


@dataclass(frozen=True)
class QosLimits:
    """A disk's caps. 0 means no cap (and no bursting) in that dimension."""

    iops_limit: int = 0
    mbps_limit: float = 0.0
    burst_iops: int = 0  # 0: no bursting; else at least iops_limit
    burst_mbps: float = 0.0
    burst_seconds: float = 1800.0  # how long a full credit bucket lasts at the burst rate

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidArgument(f"{f.name} must be a number >= 0, not {value!r}")
        for base, burst in (("iops_limit", "burst_iops"), ("mbps_limit", "burst_mbps")):
            b, p = getattr(self, base), getattr(self, burst)
            if p and not b:
                raise InvalidArgument(f"{burst} needs {base}: credits accrue below a baseline")
            if p and p < b:
                raise InvalidArgument(f"{burst} ({p:g}) must be at least {base} ({b:g})")
        if not 0 < self.burst_seconds <= MAX_BURST_SECONDS:
            raise InvalidArgument(
                f"burst_seconds must be > 0 and at most {MAX_BURST_SECONDS:g}, "
                f"not {self.burst_seconds:g}"
            )

    @property
    def capped(self) -> bool:
        return bool(self.iops_limit or self.mbps_limit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QosLimits:
        """From a record or a file; unknown fields refused (a typo must not pass as no cap)."""
        data = data or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"unknown QoS settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def changed(self, **given: Any) -> QosLimits:
        """These limits with the given (not None) fields replaced, checked anew."""
        given = {k: v for k, v in given.items() if v is not None}
        return QosLimits.from_dict({**self.to_dict(), **given})


def cost(nbytes: int, data: bool) -> tuple[int, int]:
    """(IOs, bytes) a request of `nbytes` costs: a read or write (`data`), or a trim/zero."""
    if not data:
        return 1, 0
    return max(1, -(-nbytes // IO_UNIT)), nbytes


class Bucket:
    """One dimension (IOs or bytes) of a disk's limits: the baseline rate with its reservoir,
    the burst rate, and the credits that pay for running above the baseline."""

    def __init__(self, base: float, peak: float, burst_seconds: float, now: float) -> None:
        self.base = base
        self.peak = max(peak, base)
        self.level = base * RESERVOIR  # baseline units at hand; below 0: reserved ahead
        self.credit_cap = (self.peak - base) * burst_seconds
        self.credits = self.credit_cap
        self.peak_level = self.peak * RESERVOIR
        self.last = now

    def refill(self, now: float) -> None:
        dt, self.last = max(0.0, now - self.last), now
        self.level += self.base * dt
        top = self.base * RESERVOIR
        if self.level > top:  # unused baseline becomes credit
            self.credits = min(self.credit_cap, self.credits + self.level - top)
            self.level = top
        if self.peak > self.base:
            self.peak_level = min(self.peak * RESERVOIR, self.peak_level + self.peak * dt)

    def reserve(self, units: float, now: float) -> float:
        """Take `units`; the seconds the request must wait before it may run."""
        self.refill(now)
        self.level -= units
        if self.level < 0 and self.credits > 0:
            paid = min(self.credits, -self.level)
            self.credits -= paid
            self.level += paid
        wait = -self.level / self.base if self.level < 0 else 0.0
        if self.peak > self.base:
            self.peak_level -= units
            if self.peak_level < 0:
                wait = max(wait, -self.peak_level / self.peak)
        return wait

    def rate_now(self) -> float:
        """The rate in force: the burst rate while credits last, else the baseline."""
        return self.peak if self.credits > 0 else self.base


class Limiter:
    """The caps of one export, changed at run time by `set` (a PATCH reaches the plugin
    through its QoS file: blockstore/host/contract.py)."""

    def __init__(
        self,
        limits: QosLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self.limits = QosLimits()
        self._ios: Bucket | None = None
        self._bytes: Bucket | None = None
        self.throttled_seconds = 0.0  # the delays requests were given, summed
        self.throttled_requests = 0
        if limits is not None:
            self.set(limits)

    def set(self, limits: QosLimits) -> None:
        """New caps from now on. A dimension whose caps did not change keeps its state; one
        that changed starts afresh, with its credits (up to the new bucket's size) and any
        debt carried over (a change is no way around the queue)."""
        now = self._clock()
        secs = limits.burst_seconds
        with self._lock:
            self._ios = _remade(self._ios, limits.iops_limit, limits.burst_iops, secs, now)
            self._bytes = _remade(
                self._bytes, limits.mbps_limit * MB, limits.burst_mbps * MB, secs, now
            )
            self.limits = limits

    def charge(self, nbytes: int, data: bool = True) -> float:
        """Wait until a request of `nbytes` (a read or write; else a trim or zero) may run
        under the caps; returns the seconds waited."""
        if self._ios is None and self._bytes is None:
            return 0.0  # no caps: no lock on the request path (`set` swaps buckets whole)
        ios, size = cost(nbytes, data)
        with self._lock:
            now = self._clock()
            wait = 0.0
            if self._ios is not None:
                wait = self._ios.reserve(ios, now)
            if self._bytes is not None and size:
                wait = max(wait, self._bytes.reserve(size, now))
            if wait > 0:
                self.throttled_seconds += wait
                self.throttled_requests += 1
        if wait > 0:
            self._sleep(wait)
        return wait

    def counters(self) -> dict[str, Any]:
        """The `qos` section of the export's stats file (api/metrics.py shows it)."""
        with self._lock:
            now = self._clock()
            out: dict[str, Any] = {
                "limits": self.limits.to_dict(),
                "throttled_seconds": self.throttled_seconds,
                "throttled_requests": self.throttled_requests,
            }
            for name, bucket, scale in (("iops", self._ios, 1), ("mbps", self._bytes, MB)):
                if bucket is None:
                    continue
                bucket.refill(now)
                out[f"{name}_now"] = bucket.rate_now() / scale
                out[f"{name}_credits"] = bucket.credits / scale
                out[f"{name}_credit_cap"] = bucket.credit_cap / scale
            return out


def _remade(
    bucket: Bucket | None, base: float, peak: float, burst_seconds: float, now: float
) -> Bucket | None:
    """The bucket for caps (base, peak, burst_seconds), from the one in use (see `Limiter.set`)."""
    if not base:
        return None
    fresh = Bucket(base, peak, burst_seconds, now)
    if bucket is None:
        return fresh
    if (bucket.base, bucket.peak, bucket.credit_cap) == (fresh.base, fresh.peak, fresh.credit_cap):
        return bucket
    bucket.refill(now)
    fresh.credits = min(fresh.credit_cap, bucket.credits)
    fresh.level = min(fresh.level, bucket.level)
    return fresh
