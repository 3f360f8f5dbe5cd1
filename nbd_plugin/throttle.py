"""The export's QoS caps (blockstore/host/qos.py) in the plugin: every data call is charged
here before it runs.

The service writes the caps to the export's QoS file (`contract.write_qos`) before it starts
the export and again on a PATCH; its path comes in the environment (`contract.ENV_QOS_FILE`).
The request path looks at the file (one stat) at most every `LOOK_SECONDS` and applies
a changed file at once: a PATCH reaches a running export within that, and an idle export does
nothing at all (no thread waking a hundred idle disks: issue #21). Without the variable the
export has no caps and `charge` returns at once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import nbdkit

from blockstore.errors import InvalidArgument
from blockstore.host import contract
from blockstore.host.qos import Limiter, QosLimits

LOOK_SECONDS = 0.25  # how often a busy export looks at the file

limiter = Limiter()
_path: Path | None = None
# The file last applied: (inode, mtime in ns); each write is a new file (rename), so two
# writes within the clock's granularity still differ.
_seen: tuple[int, int] | None = None
_next_look = 0.0
_look_lock = threading.Lock()


def start() -> None:
    """Apply the QoS file, if the export has one."""
    global _path
    path = os.environ.get(contract.ENV_QOS_FILE)
    if path:
        _path = Path(path)
        _look()


def charge(op: str, args: tuple[object, ...]) -> None:
    """Wait for the caps to let data call `op` run (flushes are free; see qos.py for costs)."""
    global _next_look
    if _path is not None and (now := time.monotonic()) >= _next_look:
        _next_look = now + LOOK_SECONDS
        _look()
    if op in ("read", "write"):
        limiter.charge(len(args[1]))  # type: ignore[arg-type]  # the request's buffer
    elif op != "flush":
        limiter.charge(0, data=False)


def _look() -> None:
    """Apply the file if it changed since it was last applied."""
    global _seen
    assert _path is not None
    with _look_lock:
        try:
            st = _path.stat()
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) == _seen:
            return
        _seen = (st.st_ino, st.st_mtime_ns)
        data = contract.read_qos(_path)
        if data is None:
            return
        try:
            limiter.set(QosLimits.from_dict(data))
            nbdkit.debug(f"blockstore: QoS {data}")
        except (InvalidArgument, TypeError) as exc:  # keep the caps in force
            nbdkit.debug(f"blockstore: QoS file {_path} ignored: {exc}")
