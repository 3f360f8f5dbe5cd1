"""In-process blockstore hosts for API tests: the real app, services and exports, one store.

`Host` is one host (API, control plane, nbdkit exports) on a test bucket prefix; `GeoHost` one
with a primary and a secondary region. Both are called like `host("GET", "/v1/disks")` and
answer through FastAPI's TestClient, while the exports are real nbdkit processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbd
from fastapi.testclient import TestClient

from api.app import AppContext, create_app
from blockstore.control.service import ControlService
from blockstore.geo.config import ReplicationConfig
from blockstore.host.config import Settings
from blockstore.host.supervisor import ExportSupervisor, SupervisorConfig
from blockstore.store.base import ObjectStore
from blockstore.store.retry import RetryConfig
from blockstore.store.stack import build_store
from tests.support.seaweed import SeaweedServer

TOKEN = "control-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Client:
    client: TestClient

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers=AUTH, **kw)


class Host(_Client):
    """One blockstore host (API + its exports) over the shared test bucket prefix."""

    def __init__(
        self,
        seaweed: SeaweedServer,
        prefix: str,
        home: Path,
        backups: dict[str, ObjectStore] | None = None,
    ) -> None:
        s3 = replace(seaweed.s3_config(prefix))
        self.store = build_store(s3)
        self.supervisor = ExportSupervisor(SupervisorConfig(home=home, s3=s3, retry_seconds=10))
        self.control = ControlService(
            self.store, f"host-{home.name}", self.supervisor, backups=backups
        )
        ctx = AppContext(Settings(home=home, s3=s3), self.store, TOKEN, self.control)
        self.client = TestClient(create_app(ctx))

    def close(self) -> None:
        self.control.operations.wait_all()
        self.control.close()
        self.supervisor.close()
        self.store.close()


_prefixes = itertools.count()


@contextmanager
def new_host(seaweed: SeaweedServer, home: Path, tag: str) -> Iterator[Host]:
    """A `Host` on a bucket prefix of its own (`tag`-n-pid/), closed afterwards."""
    host = Host(seaweed, f"{tag}-{next(_prefixes)}-{os.getpid()}/", home)
    try:
        yield host
    finally:
        host.close()


class GeoHost(_Client):
    """One host whose service has a primary and a secondary region."""

    def __init__(
        self,
        seaweed: SeaweedServer,
        seaweed2: SeaweedServer | None,
        prefix: str,
        home: Path,
        *,
        primary_endpoint: str | None = None,
        retry_seconds: float = 10.0,
        primary_hold_seconds: float = 30.0,
        replication: ReplicationConfig | None = None,
    ) -> None:
        self.prefix = prefix
        s3 = seaweed.s3_config(prefix)
        if primary_endpoint is not None:
            s3 = dataclasses.replace(s3, endpoint=primary_endpoint)
        s3b = seaweed2.s3_config(prefix) if seaweed2 else None
        retry = RetryConfig(deadline_seconds=retry_seconds)
        self.store = build_store(s3, retry)
        self.secondary = build_store(s3b, retry) if s3b else None
        self.supervisor = ExportSupervisor(
            SupervisorConfig(home=home, s3=s3, retry_seconds=retry_seconds, secondary=s3b)
        )
        self.control = ControlService(
            self.store,
            f"host-{home.name}",
            self.supervisor,
            secondary=self.secondary,
            replication_config=replication
            or ReplicationConfig(rpo_target_seconds=60, marker_every_seconds=0),
            primary_hold_seconds=primary_hold_seconds,
        )
        ctx = AppContext(Settings(home=home, s3=s3, secondary=s3b), self.store, TOKEN, self.control)
        self.client = TestClient(create_app(ctx))

    def replicate(self) -> None:
        assert self.control.replication is not None
        self.control.replication.run_pass()

    def close(self) -> None:
        self.control.operations.wait_all()
        if self.control.replication is not None:
            self.control.replication.close()
        self.control.close()
        self.supervisor.close()
        self.store.close()
        if self.secondary is not None:
            self.secondary.close()


def wait_op(api: Host, op: dict[str, Any]) -> dict[str, Any]:
    for _ in range(300):
        got = api("GET", f"/v1/operations/{op['id']}").json()
        if got["status"] != "running":
            return got  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"operation {op['id']} still running")


def nbd_write(socket: str, offset: int, data: bytes) -> None:
    nbd_write_all(socket, [(offset, data)])


def nbd_write_all(socket: str, writes: list[tuple[int, bytes]]) -> None:
    """Write each (offset, bytes) over one connection, then one flush: all acknowledged."""
    h = nbd.NBD()
    h.connect_unix(socket)
    for offset, data in writes:
        h.pwrite(data, offset)
    h.flush()
    h.shutdown()


def nbd_read(socket: str, offset: int, length: int) -> bytes:
    h = nbd.NBD()
    h.connect_unix(socket)
    data = h.pread(length, offset)
    h.shutdown()
    return data  # type: ignore[no-any-return]
