"""`/v1/session`: the web console signs in with the API token and out again.

Signing in trades the token, sent once in a POST body, for a session cookie that page scripts
cannot read (HttpOnly), that no other site's page makes the browser send (SameSite=Strict), and
that names a random id kept server-side (api/session.py), never the token. The guard
(api/guard.py) lets `POST /v1/session` in without a token and holds every other request made
with the cookie to the console's header and this host's Origin.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field

from api.guard import token_matches
from api.models import Strict
from api.routes.common import Context, require_token
from api.session import COOKIE, cookie_value
from blockstore.errors import Unauthorized

router = APIRouter(tags=["session"])

WRONG_TOKEN = "wrong token: use the API token in <home>/api-token (or $BLOCKSTORE_API_TOKEN)"


class SignIn(Strict):
    token: Annotated[str, Field(min_length=1, max_length=512)]


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


@router.post("/session")
def sign_in(body: SignIn, request: Request, response: Response, context: Context) -> dict[str, Any]:
    """Check the token (constant time) and set the session cookie; 401 for a wrong token."""
    if not hmac.compare_digest(body.token.strip().encode(), context.token.encode()):
        raise Unauthorized(WRONG_TOKEN)
    context.sessions.revoke(cookie_value(request.headers.get("cookie", "")))  # no fixation
    lifetime = int(context.sessions.config.lifetime_seconds)
    response.set_cookie(
        COOKIE,
        context.sessions.create(),
        max_age=lifetime,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # the service itself listens on plain loopback
    )
    _no_store(response)
    return {"signed_in": True, "expires_in_seconds": lifetime}


@router.get("/session", dependencies=[Depends(require_token)])
def whoami(request: Request, response: Response, context: Context) -> dict[str, Any]:
    """Whether the caller is signed in, and how: the console asks this when it loads."""
    bearer = token_matches(request.headers.get("authorization"), context.token)
    _no_store(response)
    return {"signed_in": True, "via": "bearer" if bearer else "session"}


@router.delete("/session", status_code=204, dependencies=[Depends(require_token)])
def sign_out(request: Request, context: Context) -> Response:
    """Revoke the session (its cookie is refused from now on, even if kept) and clear it."""
    context.sessions.revoke(cookie_value(request.headers.get("cookie", "")))
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    _no_store(response)
    return response
