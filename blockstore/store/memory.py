"""`MemoryStore`: the object store in a dict, for engine, cache and simulation tests.

It keeps the same contract as the real stores (`base.ObjectStore`) and passes the same contract
suite, so a test on it exercises the code paths a test on SeaweedFS does, only faster.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import NotFound, PreconditionFailed
from blockstore.store.base import Buffer, ObjectInfo, ObjectStore, StoreStats, etag_of


class MemoryStore(ObjectStore):
    """An object store in a dict: same contract, no network. Thread-safe."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.stats = StoreStats()
        self._clock = clock
        self._objects: dict[str, bytes] = {}
        self._written: dict[str, float] = {}  # key -> when put (not for objects put in raw())
        self._lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.stats.gets += 1
            data = self._objects.get(key)
            if data is None:
                self.stats.not_found += 1
                raise NotFound(f"object {key!r} does not exist")
        end = len(data) if length is None else min(len(data), start + length)
        out = data[start:end]
        self.stats.bytes_fetched += len(out)
        return out

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        body = bytes(data)
        with self._lock:
            self.stats.puts += 1
            if if_none_match or if_match is not None:
                self.stats.conditional_puts += 1
            current = self._objects.get(key)
            if if_none_match and current is not None:
                self.stats.precondition_failed += 1
                raise PreconditionFailed(f"object {key!r} already exists")
            if if_match is not None and (current is None or etag_of(current) != if_match):
                self.stats.precondition_failed += 1
                raise PreconditionFailed(f"object {key!r} does not have ETag {if_match}")
            self._objects[key] = body
            self._written[key] = self._clock.time()
            self.stats.bytes_uploaded += len(body)
        return etag_of(body)

    def delete(self, key: str) -> None:
        with self._lock:
            self.stats.deletes += 1
            self._objects.pop(key, None)
            self._written.pop(key, None)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            self.stats.lists += 1
            items = sorted(
                (k, v, self._written.get(k))
                for k, v in self._objects.items()
                if k.startswith(prefix) and (start_after is None or k > start_after)
            )
        for key, data, written in items:
            yield ObjectInfo(key=key, size=len(data), etag=etag_of(data), modified=written)

    def head(self, key: str) -> ObjectInfo:
        with self._lock:
            self.stats.heads += 1
            data = self._objects.get(key)
        if data is None:
            raise NotFound(f"object {key!r} does not exist")
        return ObjectInfo(key=key, size=len(data), etag=etag_of(data))

    # Test helpers: direct access for corruption and crash tests.
    def raw(self) -> dict[str, bytes]:
        """The live dict of objects (tests flip bytes or drop keys in it)."""
        return self._objects
