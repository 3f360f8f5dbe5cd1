"""Shared fixtures: real SeaweedFS servers on loopback, started once per test session.

`seaweed` is the primary store, `seaweed2` an independent second one (a second region for
geo-replication tests). Each runs `weed mini` on free 127.0.0.1 ports with its data in a
temporary directory and is stopped when the session ends. `s3_store_factory()` hands out stores
on a fresh key prefix, so tests never see each other's objects. Helpers live in `tests/support/`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from blockstore.store.base import ObjectStore
from tests.support.seaweed import SeaweedServer, start_seaweed

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield SeaweedServer(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweed2"))
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
