"""Settings of a blockstore host, from the environment and an optional config file.

Precedence: environment variables, then `<home>/config.toml`, then defaults. With no S3 endpoint
configured the service runs on the embedded SeaweedFS (host/embedded.py). Secrets (S3 keys, the
API token) are read from the environment or 0600 files, never from the command line, and the
dataclasses hide them in their repr so they never reach a log.
"""

from __future__ import annotations

import grp
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blockstore.crypto.keyring import EnvKey
from blockstore.errors import InvalidArgument
from blockstore.format.keys import DISK_ID_RE
from blockstore.store.retry import RetryConfig
from blockstore.store.s3 import S3Config

DEFAULT_PORT = 8470
DEFAULT_BUCKET = "blockstore"


@dataclass(frozen=True)
class Settings:
    home: Path
    port: int = DEFAULT_PORT
    s3: S3Config | None = None  # None: run the embedded SeaweedFS
    secondary: S3Config | None = None  # for geo-redundant (grs) disks
    backups: dict[str, S3Config] = field(default_factory=dict)  # backup targets by name
    retry: RetryConfig = field(default_factory=RetryConfig)
    embedded: bool = False  # True once `s3` points at the SeaweedFS this host started
    rpo_seconds: float = 300.0  # a grs disk whose replication lag exceeds this is flagged
    # The group (gid) whose members may connect to the NBD sockets: the hypervisor's user, e.g.
    # Debian libvirt's `libvirt-qemu` (group `libvirt-qemu`). None: root alone.
    socket_group: int | None = None
    # readwrite disks: writes no flush asked for go to the store once the oldest is this old
    # (or 4 MiB of them wait); until then a flush sends them in one PUT (cache/settings.py).
    upload_after_seconds: float = 1.0


def default_home() -> Path:
    return Path(os.environ.get("BLOCKSTORE_HOME", ".blockstore")).resolve()


def _s3_from(prefix: str, env: dict[str, str], file: dict[str, Any]) -> S3Config | None:
    def pick(name: str, default: str | None = None) -> str | None:
        value = env.get(f"{prefix}_{name.upper()}")
        return value if value is not None else file.get(name, default)

    endpoint = pick("endpoint")
    if not endpoint:
        return None
    url = urlsplit(str(endpoint))
    if url.scheme not in ("http", "https") or not url.netloc:
        raise InvalidArgument(
            f"{prefix}_ENDPOINT must look like http(s)://host:port, not {endpoint!r}"
        )
    access, secret = pick("access_key"), pick("secret_key")
    if not access or not secret:
        raise InvalidArgument(
            f"{prefix}_ENDPOINT is set but {prefix}_ACCESS_KEY / {prefix}_SECRET_KEY are not"
        )
    return S3Config(
        endpoint=endpoint,
        bucket=pick("bucket", DEFAULT_BUCKET) or DEFAULT_BUCKET,
        access_key=access,
        secret_key=secret,
        region=pick("region", "us-east-1") or "us-east-1",
        prefix=pick("prefix", "") or "",
    )


def _backup_targets(env: dict[str, str], tables: dict[str, Any]) -> dict[str, S3Config]:
    """`[backups.<name>]` tables, and `BLOCKSTORE_BACKUP_*` as the target named `default`."""
    out: dict[str, S3Config] = {}
    for name, table in tables.items():
        if not isinstance(table, dict) or not DISK_ID_RE.match(name):
            raise InvalidArgument(
                f"[backups.{name}] must be a table named with 1-63 of a-z, 0-9, '-'"
            )
        if not table.get("endpoint") or not table.get("access_key") or not table.get("secret_key"):
            raise InvalidArgument(f"[backups.{name}] needs endpoint, access_key and secret_key")
        target = _s3_from(f"[backups.{name}]", {}, table)
        assert target is not None
        out[name] = target
    default = _s3_from("BLOCKSTORE_BACKUP", env, {})
    if default is not None:
        out["default"] = default
    return out


def _group(name: str | None) -> int | None:
    """The gid of a group named in the settings, checked now (a typo fails at start-up)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidArgument(
            f"socket group {name!r} (BLOCKSTORE_SOCKET_GROUP / socket_group) does not exist on "
            "this host: create it, or name the hypervisor's group (e.g. libvirt-qemu)"
        ) from None


def load_settings(home: Path | None = None, port: int | None = None) -> Settings:
    """Settings for `home` (default `$BLOCKSTORE_HOME` or ./.blockstore)."""
    home = (home or default_home()).resolve()
    file: dict[str, Any] = {}
    config_path = home / "config.toml"
    if config_path.exists():
        try:
            file = tomllib.loads(config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{config_path}: {exc}") from exc
    env = dict(os.environ)

    def number(name: str, default: float, kind: type[float] | type[int], low: float) -> Any:
        """`BLOCKSTORE_<NAME>`, else `name` in config.toml, else `default`, as `kind` >= low."""
        var = f"BLOCKSTORE_{name.upper()}"
        raw = env[var] if var in env else file.get(name, default)
        where = var if var in env else f"{name} in {config_path}"
        try:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = kind(raw)
            if kind is int and value != raw and not isinstance(raw, str):
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where} must be a number, not {raw!r}") from None
        if not value >= low:  # also refuses NaN
            raise InvalidArgument(f"{where} must be at least {low:g}, not {raw!r}")
        return value

    def table(name: str) -> dict[str, Any]:
        value = file.get(name, {})
        if not isinstance(value, dict):
            raise InvalidArgument(f"{config_path}: [{name}] must be a table, not {value!r}")
        return value

    if "BLOCKSTORE_KEK" in env:
        EnvKey(env)  # a malformed key-encryption key stops the start, with the variable named
    socket_group = env.get("BLOCKSTORE_SOCKET_GROUP", file.get("socket_group"))
    port = port or number("port", DEFAULT_PORT, int, 1)
    if port > 65535:
        raise InvalidArgument(f"port must be 1-65535, not {port}")
    return Settings(
        home=home,
        port=port,
        s3=_s3_from("BLOCKSTORE_S3", env, table("s3")),
        secondary=_s3_from("BLOCKSTORE_SECONDARY", env, table("secondary")),
        backups=_backup_targets(env, table("backups")),
        retry=RetryConfig(deadline_seconds=number("retry_seconds", 30, float, 0.1)),
        rpo_seconds=number("rpo_seconds", 300, float, 1),
        upload_after_seconds=number("upload_after_seconds", 1.0, float, 0),
        socket_group=_group(socket_group and str(socket_group)),
    )


def api_token(home: Path) -> str:
    """`$BLOCKSTORE_API_TOKEN`, else the token in `<home>/api-token` (made 0600 on first use)."""
    token = os.environ.get("BLOCKSTORE_API_TOKEN")
    if token:
        return token
    path = home / "api-token"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
