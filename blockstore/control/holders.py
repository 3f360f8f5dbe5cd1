"""Noticing, from the disk records, that a disk this host serves was taken elsewhere.

A disk taken over by another host (a force-attach, a live migration's switchover, a forced
detach) must stop being served here: its export would go on acknowledging writes into a cache
that can never reach the store, and serving reads the new owner has overwritten. The export
meets the new writer's fence at its next commit, and while requests come it looks for one every
second (nbd_plugin/fencewatch.py); an idle export asks the store nothing, since a hundred idle
disks must not cost thousands of requests a minute (issue #21). This watch covers them all at
once: every `interval` seconds one listing of the disk records (one LIST per region, however
many disks this host serves), then a read of each served disk's record that changed since.
A record that no longer names this host as the holder makes the supervisor treat the export as
fenced: it is stopped, and served again only if the record names this host again.

Only the holder is compared, not the epoch: an attachment that stays on this host gets its new
epochs from this host's own control plane, which restarts its export itself. A disk migrating
here (its record names this host as the migration's destination) is held here too.

The records read are kept: `/metrics` asks which served disks are migrating from them, so a
scrape costs one listing instead of a read of every disk record in the bucket.
"""

from __future__ import annotations

import logging
import threading

from blockstore.control.context import ControlContext
from blockstore.control.migration import MIGRATION
from blockstore.control.records import Record
from blockstore.errors import BlockstoreError

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0


class HolderWatch:
    """One thread per host; `look` is one pass, `start`/`close` run it every `interval`."""

    def __init__(self, context: ControlContext, interval: float = INTERVAL_SECONDS) -> None:
        self.ctx = context
        self.interval = interval
        self._seen: dict[str, object] = {}  # mark of the record each served disk was read at
        self._records: dict[str, Record] = {}  # ...and that record
        self._lock = threading.Lock()  # one look at a time: the thread's, or a scrape's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HolderWatch:
        self._thread = threading.Thread(target=self._run, name="holder-watch", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.look()
            except BlockstoreError as exc:  # the store is away: the next pass asks again
                log.warning("could not look at the disk records: %s", exc)
            except Exception:  # a bug must not end the watch of every disk
                log.exception("looking at the disk records failed")

    def records(self) -> dict[str, Record]:
        """The records of the disks this host serves, as of a look made now."""
        self.look()
        with self._lock:
            return dict(self._records)

    def look(self) -> list[str]:
        """One pass; returns the disks found held elsewhere (their exports now disowned)."""
        with self._lock:
            served = {d["name"] for d in self.ctx.exports.served_disks()}
            self._seen = {name: mark for name, mark in self._seen.items() if name in served}
            self._records = {n: r for n, r in self._records.items() if n in served}
            if not served:
                return []  # nothing to ask about: no request at all
            marks = self.ctx.disks.marks()
            lost = []
            for name in sorted(served):
                mark = marks.get(name)
                if mark is not None and self._seen.get(name) == mark:
                    continue
                record = self.ctx.disks.find(name)  # also when not listed: never on a hunch
                if record is not None and self._held_here(record):
                    self._seen[name], self._records[name] = mark, record
                    continue
                holder = ((record or {}).get("attachment") or {}).get("host") or "no host"
                log.warning("disk %s is held by %s now: its export here stops", name, holder)
                self.ctx.exports.disown(name)
                self._seen.pop(name, None)
                self._records.pop(name, None)
                lost.append(name)
            return lost

    def _held_here(self, record: Record) -> bool:
        here = self.ctx.host_id
        coming = record.get(MIGRATION) or {}
        return (record.get("attachment") or {}).get("host") == here or coming.get("to_host") == here
