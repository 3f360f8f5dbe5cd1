"""schemathesis over /openapi.json: whatever a client sends, the API never answers 5xx.

Runs in-process against the real control plane (real SeaweedFS store, real export supervisor),
with a bounded number of examples per operation so the whole suite stays short. A few disks
exist first so that generated requests also reach the code behind the 404s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from api.app import AppContext, create_app
from blockstore.control.service import ControlService
from blockstore.host.config import Settings
from blockstore.host.supervisor import ExportSupervisor, SupervisorConfig
from blockstore.store.memory import MemoryStore
from blockstore.store.stack import build_store
from tests.support.seaweed import SeaweedServer

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = int(os.environ.get("BLOCKSTORE_FUZZ_EXAMPLES", "50"))


@pytest.fixture(scope="module")
def fuzz_app(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    home = tmp_path_factory.mktemp("fuzz-home")
    s3 = seaweed.s3_config(f"fuzz-{os.getpid()}/")
    store = build_store(s3)
    supervisor = ExportSupervisor(SupervisorConfig(home=home, s3=s3, retry_seconds=5))
    control = ControlService(store, "fuzz-host", supervisor)
    app = create_app(AppContext(Settings(home=home, s3=s3), store, TOKEN, control))
    client = TestClient(app)
    for name, kind in (("a", "data"), ("b", "os"), ("c", "ephemeral")):
        r = client.post("/v1/disks", json={"name": name, "size_gib": 1, "kind": kind}, headers=AUTH)
        assert r.status_code == 201, r.text
    yield app
    control.operations.wait_all()
    supervisor.close()
    store.close()


def _labels() -> list[str]:
    """Every operation of the API, read from a throw-away app (no store is touched)."""
    app = create_app(AppContext(Settings(home=Path("/nonexistent")), MemoryStore(), TOKEN))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok().label for result in schema.get_all_operations()]


@pytest.mark.parametrize("label", _labels())
def test_no_server_errors(fuzz_app: object, label: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
        )
        assert "Traceback" not in response.text

    check()
