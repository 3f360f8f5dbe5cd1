"""Client CPU and latency per request: boto3, the MinIO SDK and S3Store (libcurl), same SeaweedFS.

Why: on a 2-core host the S3 client's CPU is latency (and it competes with the store and
nbdkit for the same cores). Each client reuses one connection pool; no per-request client or
session is created. For every operation the script reports the median wall time and the mean
process CPU time per request, and each client's CPU against boto3's.

    .venv/bin/python -m bench.s3_clients [--requests 400] [--endpoint URL --bucket B]

Without --endpoint it starts a throw-away embedded SeaweedFS in a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config
from minio import Minio

from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.store.s3 import S3Config, S3Store


def measure(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """(median wall microseconds, mean CPU microseconds) per call."""
    for i in range(20):
        fn(i)
    walls = []
    cpu0 = time.process_time()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        walls.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    return statistics.median(walls) * 1e6, cpu / n * 1e6


def run(endpoint: str, bucket: str, access: str, secret: str, n: int) -> None:
    body = os.urandom(4096)
    b3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
            max_pool_connections=16,
        ),
    )
    host = endpoint.split("://", 1)[1]
    mn = Minio(host, access_key=access, secret_key=secret, secure=False, region="us-east-1")
    ours = S3Store(S3Config(endpoint, bucket, access, secret))
    b3.put_object(Bucket=bucket, Key="bench/obj", Body=body)
    big = os.urandom(4 << 20)
    b3.put_object(Bucket=bucket, Key="bench/big", Body=big)
    unique = iter(range(10**9))
    ops: dict[str, dict[str, Callable[[int], object]]] = {
        "GET 4 KiB object": {
            "boto3": lambda i: b3.get_object(Bucket=bucket, Key="bench/obj")["Body"].read(),
            "minio": lambda i: mn.get_object(bucket, "bench/obj").read(),
            "S3Store": lambda i: ours.get("bench/obj"),
        },
        "ranged GET 4 KiB of 4 MiB": {
            "boto3": lambda i: b3.get_object(
                Bucket=bucket,
                Key="bench/big",
                Range=f"bytes={(i % 1000) * 4096}-{(i % 1000) * 4096 + 4095}",
            )["Body"].read(),
            "minio": lambda i: mn.get_object(
                bucket, "bench/big", offset=(i % 1000) * 4096, length=4096
            ).read(),
            "S3Store": lambda i: ours.get("bench/big", (i % 1000) * 4096, 4096),
        },
        "PUT 4 KiB": {
            "boto3": lambda i: b3.put_object(Bucket=bucket, Key=f"bench/p{i % 50}", Body=body),
            "minio": lambda i: mn.put_object(bucket, f"bench/p{i % 50}", io.BytesIO(body), 4096),
            "S3Store": lambda i: ours.put(f"bench/p{i % 50}", body),
        },
        "PUT 4 KiB If-None-Match: *": {
            "boto3": lambda i: b3.put_object(
                Bucket=bucket, Key=f"bench/c{next(unique)}", Body=body, IfNoneMatch="*"
            ),
            "S3Store": lambda i: ours.put(f"bench/c{next(unique)}", body, if_none_match=True),
        },
    }
    print(f"# S3 client cost per request ({n} sequential requests each, QD1)")
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"{time.strftime('%Y-%m-%d')}; store: SeaweedFS at {endpoint}\n"
    )
    print("| operation | client | median latency (us) | CPU per request (us) | CPU vs boto3 |")
    print("| --- | --- | ---: | ---: | ---: |")
    for op, clients in ops.items():
        base_cpu = None
        for name, fn in clients.items():
            wall, cpu = measure(fn, n)
            base_cpu = base_cpu or cpu
            print(f"| {op} | {name} | {wall:.0f} | {cpu:.0f} | {cpu / base_cpu:.2f}x |")
    ours.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--endpoint")
    ap.add_argument("--bucket", default="bench")
    args = ap.parse_args()
    if args.endpoint:
        run(
            args.endpoint,
            args.bucket,
            os.environ["BLOCKSTORE_S3_ACCESS_KEY"],
            os.environ["BLOCKSTORE_S3_SECRET_KEY"],
            args.requests,
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        creds = Credentials("benchkey", "benchsecret-local-only")
        weed = EmbeddedSeaweed(Path(tmp), creds)
        weed.start()
        try:
            s = S3Store(S3Config(weed.endpoint, args.bucket, creds.access_key, creds.secret_key))
            s.ensure_bucket()
            run(weed.endpoint, args.bucket, creds.access_key, creds.secret_key, args.requests)
        finally:
            weed.stop()


if __name__ == "__main__":
    main()
