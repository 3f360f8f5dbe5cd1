"""The web console's sign-in and the guard's rules for its cookie, in process (api/guard.py,
api/session.py, api/routes/session.py): the token is traded once for an HttpOnly SameSite=Strict
cookie; with the cookie alone, a change needs the console header and this host's Origin; the
bearer token works as before; a signed-out or expired cookie is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import AppContext, create_app
from api.session import COOKIE, SessionConfig, SessionStore
from blockstore.clock import FakeClock
from blockstore.host.config import Settings
from blockstore.store.health import StoreProbe
from blockstore.store.memory import MemoryStore

TOKEN = "session-test-token"
CONSOLE = {"X-Blockstore-Console": "1"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(tmp_path: Path, clock: FakeClock) -> TestClient:
    store = MemoryStore()
    probe = StoreProbe(store, interval=None)
    sessions = SessionStore(SessionConfig(lifetime_seconds=3600, max_sessions=4), clock)
    ctx = AppContext(
        settings=Settings(home=tmp_path), store=store, token=TOKEN, health=probe, sessions=sessions
    )
    return TestClient(create_app(ctx))


def sign_in(client: TestClient) -> str:
    r = client.post("/v1/session", json={"token": TOKEN})
    assert r.status_code == 200, r.text
    return r.cookies[COOKIE]


def test_sign_in_sets_a_safe_cookie_and_never_echoes_the_token(client: TestClient) -> None:
    r = client.post("/v1/session", json={"token": TOKEN})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie and TOKEN not in r.text
    assert r.headers["cache-control"] == "no-store"
    assert client.get("/v1/info").status_code == 200  # the cookie alone reads
    assert client.get("/v1/session").json() == {"signed_in": True, "via": "session"}


def test_a_wrong_or_missing_token_is_401_and_sets_nothing(client: TestClient) -> None:
    r = client.post("/v1/session", json={"token": "nope"})
    assert r.status_code == 401 and "api-token" in r.json()["detail"]
    assert "set-cookie" not in r.headers
    assert client.post("/v1/session", json={}).status_code == 422
    assert client.post("/v1/session", json={"token": 5}).status_code == 422
    assert client.get("/v1/session").status_code == 401


def test_with_the_cookie_a_change_needs_the_console_header(client: TestClient) -> None:
    sign_in(client)
    r = client.post("/v1/disks", json={"name": "d", "size_gib": 1, "kind": "data"})
    assert r.status_code == 403
    assert "x-blockstore-console" in r.json()["detail"]
    assert client.request("DELETE", "/v1/session").status_code == 403
    # With the header it reaches the route (no control plane in this app: 503, not refused).
    r = client.post("/v1/disks", json={"name": "d", "size_gib": 1, "kind": "data"}, headers=CONSOLE)
    assert r.status_code == 503


def test_a_foreign_origin_is_refused_even_with_the_header(client: TestClient) -> None:
    sign_in(client)
    for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
        r = client.post(
            "/v1/disks/d/snapshots", json={"name": "s"}, headers={**CONSOLE, "Origin": origin}
        )
        assert r.status_code == 403, origin
        assert "another site" in r.json()["detail"]
    r = client.post("/v1/session", json={"token": TOKEN}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    same = {**CONSOLE, "Origin": "http://testserver"}
    assert client.post("/v1/disks/d/snapshots", json={"name": "s"}, headers=same).status_code == 503


def test_the_bearer_token_still_works_without_cookie_or_header(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/info", headers=auth).status_code == 200
    r = client.post("/v1/disks", json={"name": "d", "size_gib": 1, "kind": "data"}, headers=auth)
    assert r.status_code == 503  # past the guard; no control plane here
    assert client.get("/v1/session", headers=auth).json()["via"] == "bearer"
    assert client.get("/v1/info", headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_cookie_after_sign_out_is_refused(client: TestClient) -> None:
    cookie = sign_in(client)
    r = client.request("DELETE", "/v1/session", headers=CONSOLE)
    assert r.status_code == 204
    assert COOKIE in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    client.cookies.set(COOKIE, cookie)  # a copy kept by someone is no good either
    assert client.get("/v1/info").status_code == 401
    assert client.post("/v1/disks", json={}, headers=CONSOLE).status_code == 401


def test_sessions_expire_and_are_bounded(client: TestClient, clock: FakeClock) -> None:
    first = sign_in(client)
    clock.advance(3601)
    assert client.get("/v1/info").status_code == 401
    cookies = []
    for _ in range(6):  # the table holds 4: the oldest two go
        client.cookies.clear()
        cookies.append(sign_in(client))
        clock.advance(1)

    def works(cookie: str) -> bool:
        client.cookies.clear()
        client.cookies.set(COOKIE, cookie)
        return client.get("/v1/info").status_code == 200

    assert [works(c) for c in [first, *cookies]] == [False, False, False, True, True, True, True]


def test_signing_in_again_revokes_the_session_the_browser_had(client: TestClient) -> None:
    old = sign_in(client)
    new = sign_in(client)  # the client sends its old cookie along
    assert old != new
    client.cookies.clear()
    client.cookies.set(COOKIE, old)
    assert client.get("/v1/info").status_code == 401


def test_a_forged_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set(COOKIE, "made-up-session-id")
    assert client.get("/v1/info").status_code == 401
