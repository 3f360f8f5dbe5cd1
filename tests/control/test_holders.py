"""The host's watch of the disk records (blockstore/control/holders.py), in-process: two hosts
over one prefix of the real SeaweedFS, real exports. The front-door test (two `blockstore
serve` hosts, an idle export stopped after a force-attach) is in test_ownership.py."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from blockstore.control.holders import HolderWatch
from tests.support.apihost import Host
from tests.support.seaweed import SeaweedServer

MiB = 1 << 20
_n = itertools.count()


def _requests(host: Host) -> tuple[int, int]:
    stats = host.store.stats
    return stats.lists, stats.gets


def test_one_listing_per_look_and_a_disk_taken_elsewhere_is_disowned(
    seaweed: SeaweedServer, tmp_path: Path
) -> None:
    prefix = f"holders-{next(_n)}-{os.getpid()}/"
    a = Host(seaweed, prefix, tmp_path / "a")
    b = Host(seaweed, prefix, tmp_path / "b")
    try:
        watch = HolderWatch(a.control.context)
        before = _requests(a)
        assert watch.look() == [] and _requests(a) == before, "nothing served: no request"
        for name in ("h1", "h2"):
            a("POST", "/v1/disks", json={"name": name, "size_bytes": 64 * MiB, "kind": "data"})
            assert a("POST", f"/v1/disks/{name}/attach", json={"vm": "vm-a"}).status_code == 200
        assert watch.look() == []  # first look: one listing, each record read once
        before = _requests(a)
        assert watch.look() == []
        assert _requests(a) == (before[0] + 1, before[1]), "unchanged records were read again"

        taken = b("POST", "/v1/disks/h2/attach", json={"vm": "vm-b", "force": True})
        assert taken.status_code == 200, taken.text
        assert watch.look() == ["h2"]
        a.supervisor.check("h2")  # the watcher's next check: a fenced export, not ours
        assert a.supervisor.dropped == 1
        served = {d["name"] for d in a.supervisor.served_disks()}
        assert served == {"h1"}
        assert watch.look() == []
    finally:
        a.close()
        b.close()
