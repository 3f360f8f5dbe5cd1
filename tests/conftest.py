"""Shared fixtures: real SeaweedFS servers on loopback, started once per test session.

`seaweed` is the primary store, `seaweed2` an independent second one (a second region for
geo-replication tests). Each runs `weed mini` on free 127.0.0.1 ports with its data in a
temporary directory and is stopped when the session ends. `s3_store_factory()` hands out stores
on a fresh key prefix, so tests never see each other's objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.store.base import ObjectStore
from blockstore.store.retry import RetryConfig, RetryingStore
from blockstore.store.s3 import S3Config, S3Store

TEST_BUCKET = "blockstore-test"
_prefixes = itertools.count()


@dataclass
class SeaweedServer:
    server: EmbeddedSeaweed
    bucket: str = TEST_BUCKET
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def access_key(self) -> str:
        return self.server.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.server.credentials.secret_key

    @property
    def pid(self) -> int:
        return self.server.pid

    def s3_config(self, prefix: str = "") -> S3Config:
        return S3Config(
            endpoint=self.endpoint,
            bucket=self.bucket,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            prefix=prefix,
        )

    def raw_store(self, prefix: str = "") -> S3Store:
        """The bare S3 client layer, no retries (contract tests)."""
        return S3Store(self.s3_config(prefix))

    def make_store(self, prefix: str = "", deadline_seconds: float = 10.0) -> ObjectStore:
        """The store stack the product uses: retries over the S3 client."""
        return RetryingStore(self.raw_store(prefix), RetryConfig(deadline_seconds=deadline_seconds))

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()


def _start(tmp: Path) -> EmbeddedSeaweed:
    server = EmbeddedSeaweed(tmp, Credentials("testkey", "testsecret-not-a-real-one"))
    server.start()
    store = S3Store(S3Config(server.endpoint, TEST_BUCKET, "testkey", "testsecret-not-a-real-one"))
    store.ensure_bucket()
    store.close()
    return server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = _start(tmp_path_factory.mktemp("seaweed"))
    try:
        yield SeaweedServer(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = _start(tmp_path_factory.mktemp("seaweed2"))
    try:
        yield SeaweedServer(server)
    finally:
        server.stop()


@pytest.fixture
def s3_store_factory(seaweed: SeaweedServer) -> Iterator[Callable[..., ObjectStore]]:
    """Call with an optional name; returns a store on a prefix no other test uses."""
    made: list[ObjectStore] = []

    def make(name: str = "t", deadline_seconds: float = 10.0) -> ObjectStore:
        store = seaweed.make_store(f"{name}-{next(_prefixes)}/", deadline_seconds)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
