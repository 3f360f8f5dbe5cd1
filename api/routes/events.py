"""`/v1/events`: this host's operations as they start, progress and end (server-sent events).

Each time an operation record is created or changes here (blockstore/control/operations.py
`subscribe`), the stream carries `event: operation` with the record as GET
/v1/operations/{id} returns it. `retry: 3000` comes first (a browser's EventSource reconnects
3 s after a drop) and a `: ping` comment every 15 s keeps proxies and idle timeouts from closing
the connection.

The operation threads must never wait for a client: each client has a bounded queue in the
event loop, filled with `call_soon_threadsafe`; a client that falls `QUEUE_SIZE` events behind
is dropped (its stream ends; it reconnects and reads GET /v1/operations for what it missed).
A client that goes away is unsubscribed at once, and every stream ends when the server starts
to stop (`AppContext.stopping`), which would otherwise wait for them forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.routes.common import Context

router = APIRouter(tags=["operations"])

QUEUE_SIZE = 256  # events a client may be behind before it is dropped
PING_SECONDS = 15.0
WAKE_SECONDS = 1.0  # how soon a stream notices the server stopping
RETRY_MS = 3000


def frame(record: dict[str, Any]) -> str:
    return f"event: operation\ndata: {json.dumps(record, separators=(',', ':'))}\n\n"


class Subscription:
    """One client's queue of operation records, fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def deliver(self, record: dict[str, Any]) -> None:
        """Called in an operation's thread: hand the record over and return at once."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            self.loop.call_soon_threadsafe(self._put, record)

    def _put(self, record: dict[str, Any]) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.overflowed = True  # a slow client: dropped rather than the service slowed


# Not in /openapi.json: OpenAPI cannot describe a stream that never ends, and clients generated
# from the schema (and its fuzzing, tests/api/test_api_fuzz.py) would wait on it forever.
@router.get("/events", response_class=StreamingResponse, include_in_schema=False)
async def events(context: Context) -> StreamingResponse:
    """Operations as they happen, as server-sent events (text/event-stream)."""
    ops = context.service().operations
    sub = Subscription(asyncio.get_running_loop())

    async def stream() -> AsyncIterator[str]:
        unsubscribe = ops.subscribe(sub.deliver)  # here, so that `finally` always undoes it
        try:
            yield f"retry: {RETRY_MS}\n\n"
            loop = asyncio.get_running_loop()
            pinged = loop.time()
            while not context.stopping.is_set() and not sub.overflowed:
                try:
                    record = await asyncio.wait_for(sub.queue.get(), WAKE_SECONDS)
                except TimeoutError:
                    if loop.time() - pinged >= PING_SECONDS:
                        pinged = loop.time()
                        yield ": ping\n\n"
                    continue
                yield frame(record)
        finally:
            unsubscribe()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
