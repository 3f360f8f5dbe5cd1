"""Long-running operations (a delete, seeding a secondary, a failback, a snapshot copy): work
run in a thread of the service that started it, recorded in the bucket so any host can follow it.

Records: `control/operations/<op-id>/`, versioned like disk records (control/records.py), with
the kind, the target (a disk, or "disk/snapshot"), the status (running, succeeded, failed), the
progress (0..1, written in steps of 5%), the error and the host running it.

Failure behaviour: work that raises a `BlockstoreError` fails the operation with its message; any
other exception is a bug, recorded as an internal error rather than lost in the thread. An
operation whose service stops before it finishes is marked failed (`interrupted`) at that host's
next start, so nobody waits on it forever. Finished operations are kept for
OPERATION_RETENTION_SECONDS.

Watching: `subscribe` registers a callable that gets every record this host creates or
changes (started, progress, finished), right after it is written, in the thread that wrote it
(an operation's thread, or a request's for `run`). It must return at once (the console's event
stream hands the record to its event loop and returns); one that raises is logged and kept, and
never fails the operation.
"""

from __future__ import annotations

import logging
import secrets
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.control.model import now_iso
from blockstore.control.records import Record, RecordStore
from blockstore.errors import BlockstoreError, InvalidArgument, NotFound
from blockstore.format import keys
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)

OPERATION_STATUSES = ("running", "succeeded", "failed")
OPERATION_RETENTION_SECONDS = 7 * 86400.0  # finished operations are kept this long

Progress = Callable[[float], None]  # the fraction done, 0..1
Work = Callable[[Progress], None]
Listener = Callable[[Record], None]  # gets each record as written
T = TypeVar("T")


class OperationService:
    """Starts, records and lists the operations of one host."""

    def __init__(self, store: ObjectStore, host_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.records = RecordStore(store, keys.CONTROL_OPERATIONS_PREFIX)
        self.host_id = host_id
        self.clock = clock
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every record this host writes from now on; returns the call
        that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _publish(self, record: Record) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(dict(record))
            except Exception:  # a watcher's bug must not fail the operation
                log.exception("an operation listener failed")

    def _create(self, kind: str, target: str) -> Record:
        op_id = "op-" + secrets.token_hex(8)
        record = {
            "id": op_id,
            "kind": kind,
            "target": target,
            "status": "running",
            "progress": 0.0,
            "error": None,
            "host": self.host_id,
            "created": now_iso(self.clock),
            "finished": None,
        }
        self.records.create(op_id, record)
        self._publish(record)
        return record

    def start(self, kind: str, target: str, work: Work) -> Record:
        """Record the operation and run `work` in a thread of its own; returns the record."""
        record = self._create(kind, target)
        thread = threading.Thread(
            target=self._run, args=(record["id"], work), name=f"{kind}-{target}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return record

    def run(self, kind: str, target: str, work: Callable[[Progress], T]) -> tuple[T, Record]:
        """Record the operation and run `work` in the calling thread: for work short enough
        to answer a request with its result, that still shows as an operation. Returns what
        `work` returned and the finished record; an error is recorded, then raised again."""
        op_id = self._create(kind, target)["id"]
        result = self._attempt(op_id, work)
        return result, self.get(op_id)

    def _set(self, op_id: str, **fields: Any) -> None:
        record = self.records.set_fields(op_id, fields, missing=f"operation {op_id} vanished")
        self._publish(record)

    def _run(self, op_id: str, work: Work) -> None:
        try:
            self._attempt(op_id, work)
        except BlockstoreError:
            pass  # recorded in the operation
        except Exception:  # a bug: recorded too, and its traceback not lost in a thread
            traceback.print_exc()

    def _attempt(self, op_id: str, work: Callable[[Progress], T]) -> T:
        """Run `work`, recording its progress and how it ended; its error is raised again."""
        last = [0.0]

        def progress(fraction: float) -> None:
            # Record progress in steps of 5% so a big delete does not write a version per object.
            if fraction - last[0] >= 0.05:
                last[0] = fraction
                self._set(op_id, progress=round(min(fraction, 1.0), 3))

        try:
            result = work(progress)
        except BlockstoreError as exc:
            self._set(op_id, status="failed", error=str(exc), finished=now_iso(self.clock))
            raise
        except Exception as exc:
            self._set(
                op_id, status="failed", error=f"internal error: {exc}", finished=now_iso(self.clock)
            )
            raise
        self._set(op_id, status="succeeded", progress=1.0, finished=now_iso(self.clock))
        return result

    def get(self, op_id: str) -> Record:
        if not op_id.startswith("op-") or not keys.DISK_ID_RE.match(op_id):
            raise NotFound(f"operation {op_id!r} does not exist")
        try:
            return self.records.get(op_id)
        except NotFound:
            raise NotFound(f"operation {op_id!r} does not exist") from None

    def select(self, *, target: str | None = None, status: str | None = None) -> list[Record]:
        """Operations, newest first, optionally of one target (a disk, or 'disk/snapshot')
        and in one status."""
        if status is not None and status not in OPERATION_STATUSES:
            raise InvalidArgument(
                f"status {status!r} is not one of {', '.join(OPERATION_STATUSES)}"
            )
        ops = [
            op
            for _, op in self.records.items()
            if (target is None or op["target"] == target)
            and (status is None or op["status"] == status)
        ]
        return sorted(ops, key=lambda op: op["created"], reverse=True)

    def tidy(self) -> list[str]:
        """At start-up: mark this host's unfinished operations failed (their thread died with
        the previous process) and remove finished ones past the retention time. Returns the
        ids of the interrupted ones."""
        interrupted = []
        horizon = self.clock.time() - OPERATION_RETENTION_SECONDS
        for op_id, op in self.records.items():
            if op["status"] == "running" and op["host"] == self.host_id:
                self._set(
                    op_id,
                    status="failed",
                    error="interrupted: the service stopped before the operation finished; "
                    "start it again",
                    finished=now_iso(self.clock),
                )
                interrupted.append(op_id)
            elif op["finished"] and datetime.fromisoformat(op["finished"]).timestamp() < horizon:
                self.records.purge(op_id)
        return interrupted

    def wait_all(self, timeout: float = 60.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
