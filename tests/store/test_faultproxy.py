"""The fault proxy itself: what passes through unarmed must be what the store said."""

from __future__ import annotations

from blockstore.store.s3 import S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import SeaweedServer


def test_an_unarmed_proxy_passes_objects_and_their_sizes_through(seaweed: SeaweedServer) -> None:
    proxy = FaultProxy(seaweed.endpoint)
    cfg = seaweed.s3_config("faultproxy/")
    store = S3Store(cfg.__class__(**{**cfg.__dict__, "endpoint": proxy.endpoint}))
    try:
        store.put("k", b"x" * 1000)
        assert store.head("k").size == 1000  # HEAD: the object's size, not the empty body's
        assert store.get("k", 10, 20) == b"x" * 20
        assert [o.size for o in store.list("k")] == [1000]
    finally:
        store.close()
        proxy.close()
