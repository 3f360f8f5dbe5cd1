"""The API's front door, as plain ASGI in front of FastAPI: the token first, then a body cap.

FastAPI reads and parses a request's whole body before it runs any dependency, the token
check included: an unauthenticated 400 MiB POST once took the server from 73 MB to 1.3 GB of
memory. This middleware runs before any of that:

1. A `/v1` request without the right bearer token is answered 401 from its headers alone;
   its body is never read (the server discards it as it arrives).
2. A body larger than `max_body` is answered 413: at once when its Content-Length says so,
   else (chunked) as soon as the bytes read pass the cap. At most `max_body` bytes of one
   request are ever held in memory; the body read is handed on to the application.

Answers are the API's JSON errors (`api/errors.py`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from api.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # the largest request the API takes is a few hundred bytes of JSON
PROTECTED_PREFIX = "/v1"
UNAUTHORIZED = (
    "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
    "(the token is in <home>/api-token or $BLOCKSTORE_API_TOKEN)"
)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def unauthorized() -> JSONResponse:
    return JSONResponse(
        error_body("Unauthorized", UNAUTHORIZED),
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


class Guard:
    """ASGI middleware: 401 before the body for `/v1`, 413 past `max_body`."""

    def __init__(self, app: ASGIApp, token: str, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path: str = scope.get("path", "")
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not token_matches(auth, self.token):
                await unauthorized()(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                too_big = False  # the server rejects a malformed length itself
            if too_big:
                await self._too_large(scope, receive, send)
                return
        elif b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)  # no body
            return
        # Read the body here, up to the cap, and hand it on in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error_body("PayloadTooLarge", f"request body over the limit of {self.max_body} bytes"),
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
