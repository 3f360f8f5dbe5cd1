"""The object store interface and its statistics: the contract every layer of the stack keeps.

Sits at the bottom of the stack: `Volume` talks to an `ObjectStore`, which is one of

- `MemoryStore` (`memory.py`): a dict, for fast engine and simulation tests; passes the same
  contract suite as the real stores;
- `S3Store` (`s3.py`): pycurl against any S3-compatible endpoint;
- `RetryingStore` (`blockstore/store/retry.py`): wraps another store with bounded retries;
- `FaultyStore` (`blockstore/store/faults.py`): wraps another store and injects failures for tests.

Contract every implementation keeps:

- `get` of a missing key raises `NotFound`; a range past the end returns what exists (possibly
  nothing) rather than failing, like S3 does for a range that starts inside the object.
- `put(..., if_none_match=True)` is create-if-absent: of any number of racing creators exactly one
  succeeds and the others get `PreconditionFailed`. Correctness in blockstore rests on this only.
- `put(..., if_match=etag)` is offered, but SeaweedFS 4.48 does not apply it atomically, so no
  code may rely on it for correctness.
- `delete` of a missing key succeeds (S3 semantics).
- `list` yields keys under a prefix in ascending byte order.
- Transient failures surface as `Unavailable`; only `RetryingStore` retries.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD says about one object."""

    key: str
    size: int
    etag: str
    # When the store wrote it (Unix seconds, its own clock; S3 lists whole seconds), or None
    # where the answer does not say (HEAD). Replication lag is measured with it.
    modified: float | None = None


@dataclass
class StoreStats:
    """Counters a store keeps; read by /metrics and the bench (nobody re-counts)."""

    gets: int = 0
    puts: int = 0
    conditional_puts: int = 0
    deletes: int = 0
    lists: int = 0
    heads: int = 0
    bytes_fetched: int = 0
    bytes_uploaded: int = 0
    not_found: int = 0
    precondition_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    retries: int = 0

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class ObjectStore(ABC):
    """A flat namespace of immutable-by-convention objects (one bucket, one key prefix)."""

    stats: StoreStats

    @abstractmethod
    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes from `start` (to the end when `length` is None)."""

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        """Read up to `len(buf)` bytes from `start` into `buf`; the number of bytes read (fewer
        only past the end of the object). Stores that can read straight off the wire into
        `buf` override this; the default copies from `get`."""
        data = self.get(key, start, len(buf))
        n = min(len(data), len(buf))
        buf[:n] = memoryview(data)[:n]
        return n

    @abstractmethod
    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Store `data` under `key` and return its ETag; conditional forms may raise
        `PreconditionFailed`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; succeeds when it is already gone."""

    @abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with `prefix`, in ascending key order."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and ETag of `key`; raises `NotFound`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""


def etag_of(data: Buffer) -> str:
    """The ETag S3 gives a single-part upload: the hex MD5 of the body."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
