"""`/console/`: the web console's static files, served from the package; `/` leads there.

The console is plain files (api/console/static/: HTML, CSS, JavaScript modules and the
vendored uPlot): nothing is built, and nothing is fetched from anywhere but this server. The
files are open (they hold no secret); everything the console shows comes from the `/v1` API
after signing in (api/routes/session.py). A strict Content-Security-Policy lets the page run
only its own scripts and talk only to this origin, and no other site may frame it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles

from api.guard import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent.parent / "console" / "static"
PATH = "/console/"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated (ETag): a new version shows at the next load
}


class ConsoleFiles:
    """StaticFiles over the console's directory, with the security headers on every answer."""

    def __init__(self, directory: Path = STATIC) -> None:
        self.files: ASGIApp = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.files(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mount the console at /console/ and send `/` and `/console` there."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(PATH, status_code=307)

    @app.get("/console", include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(PATH, status_code=307)

    app.mount("/console", ConsoleFiles(), name="console")
