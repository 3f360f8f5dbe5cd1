"""The export's QoS caps (blockstore/host/qos.py) in the plugin: every data call is charged
here before it runs, and a thread applies a changed QoS file within `LOOK_SECONDS`.

The service writes the file (`contract.write_qos`) before it starts the export and again on a
PATCH; its path comes in the environment (`contract.ENV_QOS_FILE`). Without the variable the
export has no caps and `charge` returns at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import nbdkit

from blockstore.errors import InvalidArgument
from blockstore.host import contract
from blockstore.host.qos import Limiter, QosLimits

LOOK_SECONDS = 0.25  # how often the file is looked at (a stat call): a PATCH applies within it

limiter = Limiter()


def charge(op: str, args: tuple[object, ...]) -> None:
    """Wait for the caps to let data call `op` run (flushes are free; see qos.py for costs)."""
    if op in ("read", "write"):
        limiter.charge(len(args[1]))  # type: ignore[arg-type]  # the request's buffer
    elif op != "flush":
        limiter.charge(0, data=False)


def start(stop: threading.Event) -> None:
    """Apply the QoS file now, then watch it until `stop` is set."""
    path = os.environ.get(contract.ENV_QOS_FILE)
    if not path:
        return
    seen = _apply(Path(path), None)
    threading.Thread(target=_watch, args=(Path(path), seen, stop), name="qos", daemon=True).start()


def _watch(path: Path, seen: int | None, stop: threading.Event) -> None:
    while not stop.wait(LOOK_SECONDS):
        seen = _apply(path, seen)


def _apply(path: Path, seen: int | None) -> int | None:
    """Read the file if it changed since `seen` (its mtime in ns); the new `seen`."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return seen
    if mtime == seen:
        return seen
    data = contract.read_qos(path)
    if data is not None:
        try:
            limiter.set(QosLimits.from_dict(data))
            nbdkit.debug(f"blockstore: QoS {data}")
        except (InvalidArgument, TypeError) as exc:  # keep the caps in force
            nbdkit.debug(f"blockstore: QoS file {path} ignored: {exc}")
    return mtime
