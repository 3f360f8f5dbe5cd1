"""The API's front door, as plain ASGI in front of FastAPI: who may ask first, then a body cap.

FastAPI reads and parses a request's whole body before it runs any dependency, the token
check included: an unauthenticated 400 MiB POST once took the server from 73 MB to 1.3 GB of
memory. This middleware runs before any of that:

1. A `/v1` request is let in by the right bearer token, or by a web console's session cookie
   (api/session.py); anything else is answered 401 from its headers alone, its body never
   read (the server discards it as it arrives). Only the sign-in itself (`POST /v1/session`)
   needs neither. A browser sends the cookie by itself, so with the cookie alone a request
   that changes something (not GET/HEAD) must also carry the console's custom header and, if
   it says where it comes from (Origin), come from this host: a cross-site form cannot add a
   header, and a cross-site fetch that adds one needs a CORS preflight that is never granted,
   so another site cannot act with a signed-in user's cookie (403 otherwise).
2. A body larger than `max_body` is answered 413: at once when its Content-Length says so,
   else (chunked) as soon as the bytes read pass the cap. At most `max_body` bytes of one
   request are ever held in memory; the body read is handed on to the application.

Answers are the API's JSON errors (`api/errors.py`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from api.errors import error_body
from api.session import CONSOLE_HEADER, SessionStore, cookie_value

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # the largest request the API takes is a few hundred bytes of JSON
PROTECTED_PREFIX = "/v1"
SIGN_IN = "/v1/session"
SAFE_METHODS = ("GET", "HEAD")
UNAUTHORIZED = (
    "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
    "(the token is in <home>/api-token or $BLOCKSTORE_API_TOKEN)"
)
NO_CONSOLE_HEADER = (
    f"a request signed in by the console's cookie must carry the header '{CONSOLE_HEADER}: 1' "
    "(or use 'Authorization: Bearer <token>')"
)
FOREIGN_ORIGIN = "request from another site (Origin {origin!r}) refused"


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def same_origin(headers: Mapping[str, str]) -> bool:
    """No Origin header, or one naming the host the request was sent to."""
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host", "") != ""


def refusal(
    method: str, path: str, headers: Mapping[str, str], token: str, sessions: SessionStore
) -> tuple[int, str, str] | None:
    """Why a `/v1` request may not go on, as (status, kind, message); None if it may.

    `headers`: lower-case names. The bearer token lets in anything; the console's session
    cookie lets in reads, and changes only with the console header from this host's pages."""
    if token_matches(headers.get("authorization"), token):
        return None
    if method == "POST" and path == SIGN_IN:  # the route checks the token in the body
        if not same_origin(headers):
            return 403, "Forbidden", FOREIGN_ORIGIN.format(origin=headers.get("origin"))
        return None
    if not sessions.valid(cookie_value(headers.get("cookie", ""))):
        return 401, "Unauthorized", UNAUTHORIZED
    if method in SAFE_METHODS:
        return None
    if headers.get(CONSOLE_HEADER) != "1":
        return 403, "Forbidden", NO_CONSOLE_HEADER
    if not same_origin(headers):
        return 403, "Forbidden", FOREIGN_ORIGIN.format(origin=headers.get("origin"))
    return None


def refused(status: int, kind: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


class Guard:
    """ASGI middleware: 401/403 before the body for `/v1`, 413 past `max_body`."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        sessions: SessionStore | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.token = token
        self.sessions = sessions if sessions is not None else SessionStore()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path: str = scope.get("path", "")
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            text = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
            why = refusal(scope.get("method", ""), path, text, self.token, self.sessions)
            if why is not None:
                await refused(*why)(scope, receive, send)
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
