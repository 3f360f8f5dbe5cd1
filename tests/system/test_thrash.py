"""The thrasher, bounded (bench/thrash.py): two `blockstore serve` hosts over the session's
SeaweedFS (host A through a fault proxy), one journaled verifying NBD client per disk in each
caching mode, and a fixed-seed schedule of faults: kill -9 of nbdkit and of a service, SIGSTOP
of the store, store errors through the proxy, force-attach to the other host, caching PATCH,
detach/attach, online grow, snapshots. After every fault each disk is read back through its
owner: no acknowledged write the mode promises is lost, no write a fenced owner issued after
the fence is visible, no sector holds bytes no one wrote. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

from bench.thrash import StoreHandle, Thrasher
from tests.support.seaweed import SeaweedServer

SEED = 11
CYCLES = 18


def test_thrash_bounded(seaweed: SeaweedServer, tmp_path: Path) -> None:
    store = StoreHandle(seaweed.endpoint, seaweed.bucket, seaweed.access_key,
                        seaweed.secret_key, seaweed.server)  # fmt: skip
    t = Thrasher(seed=SEED, cycles=CYCLES, minutes=2.2, disks=3, workdir=tmp_path, store=store)
    res = t.run()
    report = "\n".join([res.line(), *res.violations, *res.warnings[:10]])
    assert not res.violations, report
    assert res.cycles >= 10, f"only {res.cycles} fault cycles ran: {report}"
    assert res.writes_verified > 500, report
    for mode in ("none", "readonly", "readwrite"):
        acked = sum(s.get(f"acked_{mode}", 0) for s in res.stats.values())
        assert acked > 50, f"only {acked} writes acknowledged in {mode}: {report}"
