"""Request deadlines: the time one NBD request may take, carried to every wait on its path.

The rule (DESIGN.md, "object store unreachable → EIO after a bounded retry time"): a request
gets its deadline when the adapter starts serving it, ``retry_seconds`` after that moment, on
the injected clock. From then on:

- every wait for another thread on its path ends at the deadline with `Unavailable`: the
  acknowledgement of its segment and of every earlier one (`Volume`), room in the PUT
  pipeline, another read's cache fill, dirty room and the journal applier (`HostCache`);
- `RetryingStore` starts no attempt once the deadline has passed and sleeps no backoff past
  it; `S3Store` cuts the attempt in flight at one request timeout past the deadline.

So a request that the store cannot serve fails within its deadline plus one request timeout
of being issued, whatever it queued behind. And a request fails only on its own account: a
transient failure of a PUT made before it (for earlier requests, or by an earlier attempt
at its batch) is not reported to it while its own deadline is still ahead; the batch is sent
again instead. A request issued once the store answers again therefore succeeds, unless the
backlog in front of it takes longer than its deadline.

The deadline travels in a context variable, like a cancel scope: the adapter sets it with
`scope()`, and work handed to a pool on the request's behalf carries the context along
(`contextvars.copy_context().run`). Work outside any request (the committer's pipelined PUTs,
the readwrite uploader, GC, the API) sees no deadline and keeps the store stack's own retry
deadline per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from blockstore.clock import Clock
from blockstore.errors import Unavailable

_current: ContextVar[float | None] = ContextVar("blockstore_request_deadline", default=None)


def current() -> float | None:
    """The deadline (a `Clock.monotonic()` time) of the request being served, if any."""
    return _current.get()


def remaining(clock: Clock) -> float | None:
    """Seconds left before the current request's deadline (<= 0: passed); None: no deadline."""
    d = _current.get()
    return None if d is None else d - clock.monotonic()


def check(clock: Clock, what: str) -> float | None:
    """`remaining()`, raising `Unavailable` when the deadline has passed."""
    left = remaining(clock)
    if left is not None and left <= 0:
        raise Unavailable(f"{what}: the request's deadline passed")
    return left


@contextmanager
def scope(deadline: float | None) -> Iterator[None]:
    """Serve one request under `deadline` (None: no deadline)."""
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)
