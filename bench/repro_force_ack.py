"""Reproduction of a bug the thrasher found (bench/thrash.py, seed 11 cycle 1): a force-attach
of a disk to another host loses writes the old host's export acknowledged *as durable* in the
moments before it noticed the fence, in caching mode `none` (or `readonly`).

    .venv/bin/python bench/repro_force_ack.py [--trials 5] [--mode none]

Two `blockstore serve` hosts over one SeaweedFS, host A (the one that force-attaches) through
a fault proxy with no fault armed, as in the thrasher: bench/thrashproxy.py's HonestHeadProxy by
default, `--lying-head` for tests/faultproxy.py's FaultProxy as is, `--direct` for none.

Found with --lying-head (2026-11-30, 3 of 4 trials in `none`: 14-42 acknowledged writes missing
through A, all visible again through B): FaultProxy answers HEAD with Content-Length 0, A's
fence takes the old writer's newest segments for torn and voids them. A harness bug, not the
product's; with the honest proxy or --direct nothing is missing. Per trial: a disk in `mode`
is attached on host B; one libnbd client writes 4 KiB to consecutive 4 KiB blocks (block i
holds write i) at QD1 and journals every acknowledgement; while it writes, host A
force-attaches the disk. The client goes on until its export refuses (EPERM) or drops it.
Then the disk is read through A (the new owner): every write B acknowledged must be there
(in `none`/`readonly` an acknowledgement means durable in the store). Then the disk is
force-attached back to B and read again. Prints, per trial, the acknowledged writes missing
through A and whether they are visible again through B.
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbd

from bench.thrashproxy import HonestHeadProxy
from blockstore import keys
from blockstore.embedded import Credentials, EmbeddedSeaweed
from blockstore.s3store import S3Config, S3Store
from tests.faultproxy import FaultProxy
from tests.servehost import ServeHost

BLOCK = 4096


def block(i: int) -> bytes:
    return struct.pack("<Q", i) * (BLOCK // 8)


def read_blocks(sock: str, n: int) -> list[int]:
    h = nbd.NBD()
    h.connect_unix(sock)
    step = 64 * BLOCK  # small reads: a cold read through the proxy must beat one deadline
    data = b"".join(h.pread(min(step, n * BLOCK - o), o) for o in range(0, n * BLOCK, step))
    h.shutdown()
    return [struct.unpack_from("<Q", data, i * BLOCK)[0] if any(data[i * BLOCK : i * BLOCK + 8])
            else -1 for i in range(n)]  # fmt: skip


def trial(a: ServeHost, b: ServeHost, name: str, mode: str, store: S3Store) -> None:
    kind = "os" if mode == "readwrite" else "data"
    a.ok("POST", "/v1/disks", {"name": name, "size_bytes": 64 << 20, "kind": kind,
                               "caching": mode})  # fmt: skip
    att_b = b.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm1"})
    h = nbd.NBD()
    h.connect_unix(att_b["socket"])
    acked: list[tuple[int, float]] = []
    refused: list[tuple[int, float, str]] = []
    stop = threading.Event()

    def writer() -> None:
        i = 1
        while not stop.is_set() and i < 16384:
            try:
                h.pwrite(block(i), i * BLOCK)
            except nbd.Error as e:
                refused.append((i, time.monotonic(), str(e.errno)))
                return
            acked.append((i, time.monotonic()))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    claims: dict[int, float] = {}
    vol = Path(att_b["socket"]).stem  # <home>/run/<volume-id>.sock

    def watch_claims() -> None:
        """When each writer epoch claim (disks/<id>/epoch/<n>) appears in the bucket."""
        while not stop.is_set():
            for info in store.list(keys.epoch_prefix(vol)):
                e = keys.parse_epoch_key(info.key)
                if e is not None and e not in claims:
                    claims[e] = time.monotonic()
            time.sleep(0.1)

    w = threading.Thread(target=watch_claims)
    w.start()
    time.sleep(1.0)
    t_force = time.monotonic()
    att_a = a.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm2", "force": True})
    t_forced = time.monotonic()
    stop.set()
    t.join(30)
    w.join(30)
    with contextlib.suppress(nbd.Error):
        h.shutdown()
    top = max(i for i, _ in acked) + 2
    seen_a = read_blocks(att_a["socket"], top)
    missing = [i for i, _ in acked if seen_a[i] != i]
    acked_after_call = [i for i, ts in acked if ts > t_force]
    print(f"{name} ({mode}): {len(acked)} writes acknowledged by B; force-attach on A took "
          f"{t_forced - t_force:.2f} s; B acknowledged writes {acked_after_call[:1]}.."
          f"{acked_after_call[-1:]} after the force-attach call was sent; first refusal: "
          f"{refused[:1]}")  # fmt: skip
    last_ack = max(ts for _, ts in acked)
    print("  epoch claims seen (s from the force-attach call): "
          f"{ {e: round(ts - t_force, 2) for e, ts in sorted(claims.items())} }; B's last "
          f"acknowledgement {last_ack - t_force:+.2f} s, its first refusal "
          f"{(refused[0][1] - t_force) if refused else float('nan'):+.2f} s")  # fmt: skip
    if not missing:
        print("  through A: every acknowledged write is there")
    else:
        when = {i: ts for i, ts in acked}
        print(f"  through A: {len(missing)} acknowledged writes MISSING: {missing[:12]} "
              f"(acknowledged {when[missing[0]] - t_force:+.3f} .. "
              f"{when[missing[-1]] - t_force:+.3f} s from the force-attach call)")  # fmt: skip
    att_b2 = b.ok("POST", f"/v1/disks/{name}/attach", {"vm": "vm1", "force": True})
    seen_b = read_blocks(att_b2["socket"], top)
    back = [i for i in missing if seen_b[i] == i]
    still = [i for i, _ in acked if seen_b[i] != i]
    print(f"  force-attached back to B: {len(back)} of the missing writes visible again; "
          f"{len(still)} acknowledged writes missing there")  # fmt: skip
    # Leave it clean.
    b.ok("POST", f"/v1/disks/{name}/detach", {"force": True})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--mode", default="none", choices=["none", "readonly", "readwrite"])
    p.add_argument(
        "--lying-head",
        action="store_true",
        help="tests/faultproxy.py's FaultProxy as is (every HEAD says 0 bytes)",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="host A straight to the store (default: through a FaultProxy, no faults)",
    )
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repro-force-ack-"))
    creds = Credentials("reprokey", "repro-secret-not-a-real-one")
    weed = EmbeddedSeaweed(work / "seaweed", creds)
    weed.start()
    hosts: list[ServeHost] = []
    try:
        s3 = S3Store(S3Config(weed.endpoint, "repro", creds.access_key, creds.secret_key))
        s3.ensure_bucket()
        s3.close()
        watch = S3Store(S3Config(weed.endpoint, "repro", creds.access_key, creds.secret_key,
                                 prefix="r/"))  # fmt: skip
        proxy = None
        if not args.direct:
            proxy = FaultProxy(weed.endpoint) if args.lying_head else HonestHeadProxy(weed.endpoint)
        for n in ("a", "b"):
            endpoint = proxy.endpoint if proxy is not None and n == "a" else weed.endpoint
            hosts.append(ServeHost(work / n, endpoint=endpoint, bucket="repro", prefix="r/",
                                   access_key=creds.access_key, secret_key=creds.secret_key,
                                   retry_seconds=4.0).start())  # fmt: skip
        for i in range(args.trials):
            trial(hosts[0], hosts[1], f"r{i}", args.mode, watch)
    finally:
        for h in hosts:
            h.stop()
        weed.stop()
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
