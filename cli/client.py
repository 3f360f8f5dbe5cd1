"""A small HTTP client of the blockstore API, used by the CLI (and handy in scripts).

It finds the service and its token the way the CLI documents: flags, then
`$BLOCKSTORE_URL` / `$BLOCKSTORE_API_TOKEN`, then the home directory: the URL the running
service recorded in `<home>/service.json` (blockstore/host/servicefile.py; a file left by a service
that is gone is ignored, with a `notice`), else the port from the settings; the token in
`<home>/api-token`. API errors come back as the core's exceptions, rebuilt from the JSON
error body, so the CLI prints the server's own message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from blockstore.errors import (
    BlockstoreError,
    Conflict,
    InvalidArgument,
    NotFound,
    Unauthorized,
    Unavailable,
)
from blockstore.host import servicefile
from blockstore.host.config import load_settings

BY_STATUS: dict[int, type[BlockstoreError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidArgument,
    503: Unavailable,
}


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        home: Path | None = None,
        timeout: float = 120.0,
    ) -> None:
        settings = load_settings(home)
        self.notice: str | None = None  # for the user: e.g. a stale service.json was ignored
        url = url or os.environ.get("BLOCKSTORE_URL")
        if not url:
            url, self.notice = servicefile.find(settings.home)
        self.url = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
        if self.notice:
            self.notice += f"; trying {self.url}"
        token = token or os.environ.get("BLOCKSTORE_API_TOKEN")
        if not token:
            path = settings.home / "api-token"
            if not path.exists():
                raise Unauthorized(
                    f"no API token: pass --token, set BLOCKSTORE_API_TOKEN, or run on the "
                    f"service's host with --home (looked for {path})"
                )
            token = path.read_text().strip()
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the blockstore API at {self.url}: {exc}") from exc
        if r.status_code == 204:
            return None
        try:
            body = r.json()
        except ValueError:
            body = {"detail": r.text}
        if r.status_code >= 400:
            kind = BY_STATUS.get(r.status_code, BlockstoreError)
            raise kind(str(body.get("detail", body)))
        return body

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
