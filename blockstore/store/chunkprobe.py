"""A start-up probe: does this object store read a small range of a large object slowly?

A `none` disk's 4 KiB read is one ranged GET of a few-MiB segment. Some stores pay for such a
read in proportion to the stored chunk the range falls in, not to the range: SeaweedFS's filer
stores objects in chunks of `-maxMB` (4 MiB by default) and its volume server reads a whole
chunk to check its CRC, so with 4 MiB chunks a 4 KiB read costs several times the latency and
SeaweedFS CPU it costs with 1 MiB chunks (docs/seaweedfs.md). The engine cannot avoid it (its
segments are up to 4 MiB; smaller ones would not help either, see the doc), so the operator
has to set the store right, and this probe tells them at start-up.

How: PUT one 4 MiB and one 64 KiB object under `<prefix>.probe/`, time interleaved ranged
4 KiB GETs at offsets spread over each, delete both. If the large object's median is both
`ratio` times and `excess_ms` more than the small one's, the store is reported slow. Takes
about 0.3 s on a local store. `blockstore serve` runs it in a background thread on a bare
S3Store (no retries), so it never delays the start, even with the store down. Nothing here
raises: a failed probe is reported, never fatal.
"""

from __future__ import annotations

import logging
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from blockstore.store.base import ObjectStore
from blockstore.store.s3 import S3Config, S3Store

log = logging.getLogger("blockstore")

KiB, MiB = 1 << 10, 1 << 20
PROBE_PREFIX = ".probe/"


@dataclass(frozen=True)
class ProbeConfig:
    large_bytes: int = 4 * MiB  # a full segment
    small_bytes: int = 64 * KiB  # smaller than any store's chunk
    read_bytes: int = 4 * KiB
    rounds: int = 24  # GETs of each object
    # Slow if the large object's median is at least `ratio` times the small one's and
    # `excess_ms` more. The figures seen on SeaweedFS clusters are in docs/seaweedfs.md: 4 MiB
    # filer chunks 2.5-3.5x and 1.8-3.9 ms more (1.8 on a quiet machine), 1 MiB chunks
    # 1.2-1.8x and 0.3-1.4 ms more. Both tests must hold; the ratio keeps a distant store's
    # jitter (tens of ms per GET) from passing for a slow chunk size.
    ratio: float = 1.8
    excess_ms: float = 1.6


@dataclass(frozen=True)
class ProbeResult:
    large_ms: float  # median ranged GET of the large object
    small_ms: float  # median ranged GET of the small object
    slow: bool

    def __str__(self) -> str:
        return (
            f"4 KiB GET of a 4 MiB object {self.large_ms:.2f} ms, of a 64 KiB object "
            f"{self.small_ms:.2f} ms{' (slow)' if self.slow else ''}"
        )


def probe_small_reads(
    store: ObjectStore,
    config: ProbeConfig = ProbeConfig(),
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Measure as described in the module docstring; raises what the store raises."""
    tag = secrets.token_hex(6)
    large, small = f"{PROBE_PREFIX}{tag}-large", f"{PROBE_PREFIX}{tag}-small"
    store.put(large, os.urandom(config.large_bytes))
    try:
        store.put(small, os.urandom(config.small_bytes))
        try:
            t_large: list[float] = []
            t_small: list[float] = []
            span_l = config.large_bytes - config.read_bytes
            span_s = config.small_bytes - config.read_bytes
            for i in range(config.rounds):
                for key, span, times in ((large, span_l, t_large), (small, span_s, t_small)):
                    off = (span * i // max(1, config.rounds - 1)) // 4096 * 4096
                    t = clock()
                    store.get(key, off, config.read_bytes)
                    times.append(clock() - t)
        finally:
            store.delete(small)
    finally:
        store.delete(large)
    lm, sm = statistics.median(t_large) * 1e3, statistics.median(t_small) * 1e3
    slow = lm >= config.ratio * sm and lm - sm >= config.excess_ms
    return ProbeResult(lm, sm, slow)


def warn_if_small_reads_are_slow(store: ObjectStore) -> ProbeResult | None:
    """Run the probe; log one warning line if the store is slow, one info line otherwise.
    Closes `store` (give it a bare S3Store: no retries, so a store that is down costs one
    request timeout, not a retry deadline)."""
    try:
        result = probe_small_reads(store)
    except Exception as exc:  # a probe never stops the service
        log.info("object store small-read probe skipped: %s", exc)
        return None
    finally:
        store.close()
    if result.slow:
        log.warning(
            "object store reads small ranges of large objects slowly (%s): every 4 KiB read "
            "of a `none` disk pays this. On SeaweedFS, run the filer with 1 MiB chunks "
            "(`weed filer -maxMB=1`; `weed server`/`weed mini`: `-filer.maxMB=1`; "
            "scripts/seaweedfs-cluster.sh does); see docs/seaweedfs.md",
            result,
        )
    else:
        log.info("object store small-read probe: %s", result)
    return result


def probe_in_background(config: S3Config) -> threading.Thread:
    """Run `warn_if_small_reads_are_slow` on a bare S3Store of `config` in a daemon thread."""
    t = threading.Thread(
        target=lambda: warn_if_small_reads_are_slow(S3Store(config)),
        name="store-probe",
        daemon=True,
    )
    t.start()
    return t
