"""`CountingStore`: counts one volume's store calls into that volume's stats.

Place in the stack: the top layer, one per open volume (``Volume -> CountingStore -> the shared
stack``). The stack below is shared by every disk of a process and keeps its own `StoreStats`;
this layer says what *this* disk cost (GETs, PUTs, bytes each way), which /metrics and the
bench read from `VolumeStats`.

It changes nothing else: every call goes to `inner` as it is, errors included. A call is counted
when it is made (a PUT before it is sent, a GET once its bytes are in), under the counters' own
lock, which the volume shares for its other counters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from blockstore.store.base import Buffer, ObjectInfo, ObjectStore


class CallCounts(Protocol):
    """The counters this layer keeps (a subset of the volume's stats) and their lock."""

    lock: threading.Lock
    gets: int
    bytes_fetched: int
    puts: int
    bytes_uploaded: int
    heads: int
    lists: int
    deletes: int


class CountingStore(ObjectStore):
    """`inner`, with every call counted in `counts`."""

    def __init__(self, inner: ObjectStore, counts: CallCounts) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.counts = counts

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, start, length)
        with self.counts.lock:
            self.counts.gets += 1
            self.counts.bytes_fetched += len(data)
        return data

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        n = self.inner.get_into(key, start, buf)
        with self.counts.lock:
            self.counts.gets += 1
            self.counts.bytes_fetched += n
        return n

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        with self.counts.lock:
            self.counts.puts += 1
            self.counts.bytes_uploaded += len(data)
        return self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)

    def head(self, key: str) -> ObjectInfo:
        with self.counts.lock:
            self.counts.heads += 1
        return self.inner.head(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self.counts.lock:
            self.counts.lists += 1
        return self.inner.list(prefix, start_after)

    def delete(self, key: str) -> None:
        with self.counts.lock:
            self.counts.deletes += 1
        self.inner.delete(key)

    def close(self) -> None:
        """Nothing to release: the stack below is shared and closed by its owner."""
