"""`RetryingStore`: bounded retries with exponential backoff and full jitter.

Wraps any `ObjectStore` (normally `S3Store`). Only `Unavailable` is retried (5xx, SlowDown,
resets, timeouts, short bodies); `NotFound`, `PreconditionFailed` and `StoreRejected` are final
and returned at once. Every call gives up after `deadline_seconds` and raises `Unavailable`, so
an NBD client sees EIO after a bounded time and never a false success.

Inside an NBD request the request's own deadline (blockstore/deadline.py) bounds the call too,
whichever comes first: a call made once it has passed raises `Unavailable` without asking the
store; no backoff sleeps past it, so the last attempt starts at it at the latest. The attempt
in flight at the deadline ends within one request timeout (`S3Store`), so the request's EIO
comes within its deadline plus one request timeout of being issued.

A create-if-absent PUT whose first attempt failed in transit may have been stored anyway; the
retry then gets 412. That is resolved here by comparing the stored object's ETag with the MD5 of
our body: equal means the object is ours and the PUT succeeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from blockstore import deadline as request_deadline
from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import NotFound, PreconditionFailed, Unavailable
from blockstore.store.base import Buffer, ObjectInfo, ObjectStore, etag_of

T = TypeVar("T")


@dataclass(frozen=True)
class RetryConfig:
    deadline_seconds: float = 30.0  # total time one call may take, retries included
    base_delay: float = 0.02
    max_delay: float = 2.0


class RetryingStore(ObjectStore):
    """An `ObjectStore` that retries transient failures of its `inner` store until a deadline."""

    def __init__(
        self,
        inner: ObjectStore,
        config: RetryConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.config = config or RetryConfig()
        self.stats = inner.stats
        self._clock = clock
        self._rng = rng or random.Random()

    def _call(self, fn: Callable[[], T]) -> T:
        deadline = self._clock.monotonic() + self.config.deadline_seconds
        left = request_deadline.check(self._clock, "object store call not started")
        if left is not None:
            deadline = min(deadline, self._clock.monotonic() + left)
        attempt = 0
        while True:
            try:
                return fn()
            except Unavailable as exc:
                attempt += 1
                now = self._clock.monotonic()
                if now >= deadline:
                    raise Unavailable(
                        f"{exc} (gave up after {attempt} attempts at the deadline, "
                        f"at most {self.config.deadline_seconds:g} s)"
                    ) from exc
                delay = self._rng.uniform(
                    0, min(self.config.max_delay, self.config.base_delay * 2**attempt)
                )
                self.stats.retries += 1
                # Never sleep past the deadline; the last attempt starts at it at the latest
                # (giving up a whole backoff early turned a short outage into EIO).
                self._clock.sleep(min(delay, deadline - now))

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(key, start, length))

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        # A failed attempt may have filled part of `buf`; the next one overwrites it.
        return self._call(lambda: self.inner.get_into(key, start, buf))

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            try:
                return self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)
            except PreconditionFailed:
                if attempts > 1 and if_none_match:
                    mine = etag_of(data)
                    try:
                        if self.inner.head(key).etag == mine:
                            return mine
                    except NotFound:
                        pass
                raise

        return self._call(attempt)

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # A listing is materialised so that a failure part-way is retried from the start
        # rather than handing the caller half a listing.
        return iter(self._call(lambda: list(self.inner.list(prefix, start_after))))

    def head(self, key: str) -> ObjectInfo:
        return self._call(lambda: self.inner.head(key))

    def close(self) -> None:
        self.inner.close()
