"""What the route modules share: the request's `AppContext`, the token check, path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from api.context import AppContext
from api.guard import refusal
from api.models import NAME_PATTERN
from blockstore.errors import Unauthorized

DiskName = Annotated[str, Path(pattern=NAME_PATTERN, description="disk name")]
SnapName = Annotated[str, Path(pattern=NAME_PATTERN, description="snapshot name")]


def app_context(request: Request) -> AppContext:
    """The context `create_app` was given (never raises: a route asks it for the service)."""
    context: AppContext = request.app.state.context
    return context


Context = Annotated[AppContext, Depends(app_context)]


def require_token(context: Context, request: Request) -> None:
    """Guard answered 401/403 before the body was read; the same check again (bearer token,
    or console session with its header and origin), next to the routes it protects, so a route
    under /v1 can never be reached without it."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    why = refusal(request.method, request.url.path, headers, context.token, context.sessions)
    if why is not None:
        raise Unauthorized(why[2])
