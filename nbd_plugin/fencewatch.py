"""Looking for a newer writer of the disk while the export serves it, and only then.

A `readwrite` export fenced by a newer writer (a force-attach elsewhere) must stop at once: it
would otherwise go on acknowledging writes into its cache that can never reach the store, and
serving reads the new owner has overwritten. Commits meet the fence by themselves, but cached
writes and reads do not, so a thread asks the store (one LIST of the disk's fences) every
`interval` seconds while requests come.

While no request comes it asks only every `IDLE_SECONDS` (issue #21: a hundred idle disks
asked 6,000 times a minute; now about 550): after an `interval` without requests it waits, and
the next request wakes it to look at once, while that request is served (one LIST, a few
milliseconds). So an export is fenced within `interval` of a takeover while busy, within one
LIST of its first request after an idle spell, and within `IDLE_SECONDS` while idle: its host
then stops it (blockstore/host/supervisor.py), so a disk taken over elsewhere does not keep an
export running here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from blockstore.engine.volume import Volume
from blockstore.errors import BlockstoreError

IDLE_SECONDS = 10.0  # how often an idle export looks anyway


class FenceWatch:
    """The fence check of one export; `touch` on every request, `run` in its own thread."""

    def __init__(
        self,
        volume: Volume,
        interval: float,
        stop: threading.Event,
        on_fenced: Callable[[int], None],
    ) -> None:
        self.volume = volume
        self.interval = interval
        self.stop = stop
        self.on_fenced = on_fenced
        self.requests = 0  # bumped by every request (a lost increment under a race is harmless)
        self.idle = False  # the thread waits for a request (or IDLE_SECONDS) to look again
        self._wake = threading.Event()

    def touch(self) -> None:
        self.requests += 1
        if self.idle:
            self.idle = False
            self._wake.set()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="fence-check", daemon=True)
        t.start()
        return t

    def run(self) -> None:
        seen = self.requests
        while not self.stop.wait(self.interval):
            if self.requests == seen and not self._wait_for_a_request(seen):
                return
            seen = self.requests
            try:
                newer = self.volume.newer_epoch()
            except BlockstoreError:
                continue  # the store is away: the commits will tell
            if newer is not None:
                self.on_fenced(newer)
                return

    def _wait_for_a_request(self, seen: int) -> bool:
        """Idle: wait until a request comes or `IDLE_SECONDS` pass (True: look now), or the
        export stops (False)."""
        self._wake.clear()
        self.idle = True
        until = time.monotonic() + IDLE_SECONDS
        # A request that came before `idle` was set counts too.
        while self.requests == seen and (left := until - time.monotonic()) > 0:
            if self.stop.is_set():
                return False
            self._wake.wait(min(1.0, left))  # also looks at `stop` now and then
            self._wake.clear()
        self.idle = False
        return not self.stop.is_set()
