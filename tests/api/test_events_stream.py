"""The event stream's own rules, on its generator with short timers: retry first, records as
written, pings while idle, a slow client dropped (never the operation slowed), unsubscribed
when it ends, ended when the server stops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from api.routes import events
from blockstore.control.operations import OperationService
from blockstore.store.memory import MemoryStore


def context(ops: OperationService) -> Any:
    return SimpleNamespace(
        service=lambda: SimpleNamespace(operations=ops), stopping=threading.Event()
    )


async def stream_of(ctx: Any) -> AsyncIterator[str]:
    response = await events.events(ctx)
    assert response.media_type == "text/event-stream"
    return response.body_iterator  # type: ignore[return-value]


def test_records_then_pings_then_the_end_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "PING_SECONDS", 0.2)
    monkeypatch.setattr(events, "WAKE_SECONDS", 0.05)
    ops = OperationService(MemoryStore(), "h1")
    ctx = context(ops)

    async def run() -> list[str]:
        it = await stream_of(ctx)
        got = [await anext(it)]
        op = await asyncio.to_thread(ops.start, "delete-disk", "d1", lambda progress: None)
        while len(got) < 3:
            got.append(await anext(it))
        assert f'"id":"{op["id"]}"' in got[1] and '"status":"succeeded"' in got[2]
        got.append(await anext(it))  # nothing happens: a ping
        ctx.stopping.set()
        got += [chunk async for chunk in it]
        return got

    got = asyncio.run(run())
    assert got[0] == "retry: 3000\n\n"
    assert got[1].startswith("event: operation\ndata: {") and got[1].endswith("}\n\n")
    assert got[3] == ": ping\n\n"
    assert got[4:] == []  # the server stops: the stream ends
    assert ops._listeners == []


def test_a_slow_client_is_dropped_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "QUEUE_SIZE", 3)
    ops = OperationService(MemoryStore(), "h1")

    async def run() -> list[str]:
        it = await stream_of(context(ops))
        first = await anext(it)  # subscribed now; then it reads nothing for a while
        await asyncio.to_thread(
            lambda: [ops.start("delete-disk", f"d{i}", lambda progress: None) for i in range(4)]
        )
        await asyncio.to_thread(ops.wait_all)
        await asyncio.sleep(0.1)  # the records reach the loop
        return [first] + [chunk async for chunk in it]

    got = asyncio.run(run())
    assert got == ["retry: 3000\n\n"]  # dropped: what it missed is in GET /v1/operations
    assert ops._listeners == []
    assert len(ops.select(status="succeeded")) == 4  # the operations went on regardless
