"""Looking for a newer writer of the disk while the export serves it, and only then.

A `readwrite` export fenced by a newer writer (a force-attach elsewhere) must stop at once: it
would otherwise go on acknowledging writes into its cache that can never reach the store, and
serving reads the new owner has overwritten. Commits meet the fence by themselves, but cached
writes and reads do not, so a thread asks the store (one LIST of the disk's fences) every
`interval` seconds while requests come.

While no request comes it asks nothing (issue #21: an idle disk makes no store request; a
hundred of them asked 6,000 times a minute): after an `interval` without requests it waits, and
the next request wakes it to look at once, while that request is served (one LIST, a few
milliseconds). So an export is fenced within `interval` of a takeover while busy and within one
LIST of its first request after an idle spell. An idle export of a disk taken elsewhere is
found by its host instead, from one listing of the disk records for all its disks
(blockstore/control/holders.py), and stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from blockstore.engine.volume import Volume
from blockstore.errors import BlockstoreError


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
        self.idle = False  # the thread waits for a request to look again
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
        """Idle: wait until a request comes (True: look now) or the export stops (False)."""
        self._wake.clear()
        self.idle = True
        # A request that came before `idle` was set counts too.
        while self.requests == seen and not self.stop.is_set():
            self._wake.wait(1.0)  # also looks at `stop` now and then
            self._wake.clear()
        self.idle = False
        return not self.stop.is_set()
