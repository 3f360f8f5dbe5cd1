"""The one place where blockstore errors become HTTP responses.

Every error is a JSON body `{"error": <kind>, "detail": <message a person can act on>}`;
malformed requests (FastAPI's validation) become 422 with the offending field named. Nothing
a client sends can produce a 500 with a traceback: an unexpected exception is logged here and
answered with a generic 500 message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from blockstore.errors import (
    BlockstoreError,
    Conflict,
    InvalidArgument,
    NotFound,
    StoreRejected,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("blockstore.api")

STATUS: list[tuple[type[BlockstoreError], int]] = [
    (Unauthorized, 401),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidArgument, 422),
    (Unavailable, 503),
    (StoreRejected, 502),
]


def status_of(exc: BlockstoreError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(kind: str, detail: object) -> dict[str, object]:
    return {"error": kind, "detail": detail}


def install(app: FastAPI) -> None:
    @app.exception_handler(BlockstoreError)
    async def blockstore_error(_: Request, exc: BlockstoreError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            error_body(type(exc).__name__, str(exc)), status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = str(err.get("msg"))
            given = err.get("input")
            if err.get("type") != "missing" and isinstance(given, str | int | float | bool):
                # Say what was sent: '"1048576" (a string)' is clearer than the rule alone.
                msg += f", got {given!r:.40} ({type(given).__name__})"
            problems.append(f"{where}: {msg}" if where else msg)
        return JSONResponse(error_body("InvalidArgument", "; ".join(problems)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body("HTTPError", exc.detail),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            error_body("InternalError", "internal error; see the server log"), status_code=500
        )
