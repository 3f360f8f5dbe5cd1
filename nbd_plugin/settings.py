"""The plugin's parameters: what nbdkit hands to `config()`, checked once in `config_complete()`.

Every name and default is `blockstore.host.contract.PARAMETERS`, which the service that writes
the command line imports too. Errors are RuntimeError with a message nbdkit prints at start-up,
before it serves anything.
"""

from __future__ import annotations

import os

import nbdkit

from blockstore.cache.hostcache import HostCacheConfig
from blockstore.errors import InvalidArgument
from blockstore.host import contract

values: dict[str, str] = {k: v for k, v in contract.PARAMETERS.items() if v is not None}
_KNOWN = frozenset(contract.PARAMETERS)


def set_value(key: str, value: str) -> None:
    key = key.replace("_", "-")
    if key not in _KNOWN:
        raise RuntimeError(f"unknown parameter {key!r}; known: {', '.join(sorted(_KNOWN))}")
    values[key] = value


def check() -> None:
    for need in contract.REQUIRED:
        if need not in values:
            raise RuntimeError(f"missing parameter {need}=")
    if values["cache"] != "none" and "cache-dir" not in values:
        raise RuntimeError("cache-dir= is needed unless cache=none")
    cache_config()  # validate now, so a bad setting fails before nbdkit starts serving
    try:
        epoch = int(values.get("epoch", "1"))
        fence_check = float(values["fence-check"])
    except ValueError as exc:
        raise RuntimeError(f"epoch= and fence-check= must be numbers: {exc}") from None
    if epoch < 1 or fence_check < 0:
        raise RuntimeError("epoch= must be a positive integer and fence-check= >= 0 seconds")
    if incoming() and contract.ENV_ACTIVATION not in os.environ:
        raise RuntimeError(f"incoming=true needs {contract.ENV_ACTIVATION} in the environment")


def cache_config() -> HostCacheConfig:
    s = values
    try:
        return HostCacheConfig(
            mode=s["cache"],
            block_size=nbdkit.parse_size(s["cache-block"]),
            cache_size=nbdkit.parse_size(s["cache-size"]),
            dirty_limit=nbdkit.parse_size(s["dirty-limit"]),
            readahead=nbdkit.parse_size(s["readahead"]),
            write_wait_seconds=float(s["write-wait"]),
            upload_delay=float(s["upload-after"]),
            upload_batch=nbdkit.parse_size(s["upload-batch"]),
        )
    except InvalidArgument as exc:
        raise RuntimeError(str(exc)) from None
    except ValueError as exc:
        raise RuntimeError(f"a cache parameter is malformed: {exc}") from None


def credentials() -> tuple[str, str]:
    access, secret = contract.credentials(os.environ, values.get("credentials"))
    if not access or not secret:
        raise RuntimeError(
            f"S3 credentials missing: set {contract.ENV_ACCESS_KEY} and "
            f"{contract.ENV_SECRET_KEY} or pass credentials=FILE"
        )
    return access, secret


def readonly() -> bool:
    return values["readonly"].lower() in contract.TRUE_WORDS


def incoming() -> bool:
    return values["incoming"].lower() in contract.TRUE_WORDS
