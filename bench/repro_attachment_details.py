"""Reproduction of an API defect the thrasher met on every kill -9 of an nbdkit (warnings
"attach on ... returned an attachment without ['socket', 'pid', 'caching']"):

    .venv/bin/python bench/repro_attachment_details.py

One `blockstore serve` over a fresh `weed mini`. A data disk (caching readonly) is attached;
its caching is PATCHed to readwrite ("applies at the next attach"); its nbdkit is killed with
SIGKILL. The supervisor restarts the export (a new writer epoch), and from then on the disk
record's attachment, which POST .../attach (same VM) and GET /v1/disks/{name} return, has no
`socket`, `nbd_uri`, `pid`, `caching` (only vm, host, attached_at, epoch): a hypervisor that
asks again where to connect gets no answer, though the export runs. The restarted export runs
`cache=readwrite` (the record's new mode), so the kill -9 applied the PATCH before any attach,
and nothing in the API says which mode the running export has.
Attach right after the kill (before the watcher restarts it) returns the dead nbdkit's pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockstore.embedded import Credentials, EmbeddedSeaweed
from blockstore.s3store import S3Config, S3Store
from tests.servehost import ServeHost, pid_alive

FIELDS = ("pid", "epoch", "caching", "socket", "nbd_uri")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="repro-attachment-"))
    creds = Credentials("reprokey", "repro-secret-not-a-real-one")
    weed = EmbeddedSeaweed(work / "seaweed", creds)
    weed.start()
    host = None
    try:
        s3 = S3Store(S3Config(weed.endpoint, "repro", creds.access_key, creds.secret_key))
        s3.ensure_bucket()
        s3.close()
        host = ServeHost(work / "a", endpoint=weed.endpoint, bucket="repro", prefix="r/",
                         access_key=creds.access_key, secret_key=creds.secret_key,
                         retry_seconds=4.0).start()  # fmt: skip
        host.ok("POST", "/v1/disks", {"name": "d1", "size_bytes": 8 << 20, "kind": "data",
                                      "caching": "readonly"})  # fmt: skip
        att = host.ok("POST", "/v1/disks/d1/attach", {"vm": "vm1"})
        print("attach:               ", {k: att.get(k) for k in FIELDS})
        host.ok("PATCH", "/v1/disks/d1", {"caching": "readwrite"})
        os.kill(att["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        for _ in range(6):
            again = host.ok("POST", "/v1/disks/d1/attach", {"vm": "vm1"})
            pid = again.get("pid")
            alive = bool(pid and pid_alive(pid))
            shown = {k: again.get(k) for k in FIELDS}
            print(f"attach again +{time.monotonic() - t0:.2f} s:", shown, "pid alive:", alive)
            time.sleep(0.5)
        got = host.ok("GET", "/v1/disks/d1")["attachment"]
        print("GET attachment:       ", {k: got.get(k) for k in FIELDS})
        ps = subprocess.run(["pgrep", "-af", f"nbdkit.*{work}"], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            keep = ("cache=", "epoch=")
            print("running:", line.split()[0], *(a for a in line.split() if a.startswith(keep)))
    finally:
        if host is not None:
            host.stop()
        weed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
