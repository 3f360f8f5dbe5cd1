"""API plumbing: bearer auth on /v1, health, metrics, and errors as JSON (never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import AppContext, create_app
from blockstore.host.config import Settings
from blockstore.store.faults import FaultRule, FaultyStore
from blockstore.store.health import StoreProbe
from blockstore.store.memory import MemoryStore

TOKEN = "test-token-123"


@pytest.fixture
def faulty(tmp_path: Path) -> FaultyStore:
    return FaultyStore(MemoryStore())


@pytest.fixture
def probe(faulty: FaultyStore) -> StoreProbe:
    """Probed by hand (no thread), so a test decides when the store is looked at."""
    p = StoreProbe(faulty, interval=None)
    p.probe()
    return p


@pytest.fixture
def client(tmp_path: Path, faulty: FaultyStore, probe: StoreProbe) -> TestClient:
    ctx = AppContext(settings=Settings(home=tmp_path), store=faulty, token=TOKEN, health=probe)
    return TestClient(create_app(ctx))


def test_v1_requires_the_bearer_token(client: TestClient) -> None:
    assert client.get("/v1/info").status_code == 401
    r = client.get("/v1/info", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.json()["error"] == "Unauthorized"
    assert "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json()["version"]


def test_healthz_reports_the_last_probe(
    client: TestClient, faulty: FaultyStore, probe: StoreProbe
) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["store"]["reachable"] is True
    assert r.json()["store"]["age_s"] >= 0
    faulty.add(FaultRule(op="list", times=1))
    assert client.get("/healthz").status_code == 200  # answered from the last probe
    probe.probe()
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["store"]["reachable"] is False
    assert "injected outage" in r.json()["store"]["error"]
    probe.probe()
    assert client.get("/healthz").status_code == 200


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert 'blockstore_store_requests_total{op="list"}' in r.text


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    r = client.get("/v1/nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
    assert r.json()["error"] == "HTTPError"
