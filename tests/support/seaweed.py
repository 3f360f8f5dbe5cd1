"""Real SeaweedFS servers for tests: `weed mini` on free loopback ports, data in a temp dir.

`SeaweedServer` wraps one running server with what tests need of it (endpoint, keys, store
stacks on a key prefix, pause/resume for outages). The session fixtures in `tests/conftest.py`
start them; tests that start their own call `start_seaweed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.store.base import ObjectStore
from blockstore.store.retry import RetryConfig, RetryingStore
from blockstore.store.s3 import S3Config, S3Store

TEST_BUCKET = "blockstore-test"


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

    def secondary_env(self, prefix: str) -> dict[str, str]:
        """The environment that makes this server a `blockstore serve`'s secondary region."""
        return {
            "BLOCKSTORE_SECONDARY_ENDPOINT": self.endpoint,
            "BLOCKSTORE_SECONDARY_BUCKET": self.bucket,
            "BLOCKSTORE_SECONDARY_PREFIX": prefix,
            "BLOCKSTORE_SECONDARY_ACCESS_KEY": self.access_key,
            "BLOCKSTORE_SECONDARY_SECRET_KEY": self.secret_key,
        }

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


def start_seaweed(tmp: Path) -> EmbeddedSeaweed:
    """Start `weed mini` in `tmp` with the test bucket made; the caller stops it."""
    server = EmbeddedSeaweed(tmp, Credentials("testkey", "testsecret-not-a-real-one"))
    server.start()
    store = S3Store(S3Config(server.endpoint, TEST_BUCKET, "testkey", "testsecret-not-a-real-one"))
    store.ensure_bucket()
    store.close()
    return server
