"""`blockstore serve`: the embedded object store (when none is configured) plus the API.

Start order: settings -> the home, claimed (one service per home) -> the embedded SeaweedFS if
no endpoint is configured (its data under `<home>/seaweedfs`, so a restart finds every disk
again), else a check of the configured store -> the bucket -> the API on 127.0.0.1, its URL
recorded in `<home>/service.json` for the CLI. A configuration error on the way raises a
`BlockstoreError` whose message the CLI prints as one line.
SIGINT and SIGTERM stop uvicorn, then everything this process started, in reverse order. The
embedded store also gets PR_SET_PDEATHSIG, so even a `kill -9` of this process leaves no orphan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from contextlib import ExitStack
from dataclasses import replace
from types import FrameType

import uvicorn

from blockstore.control.sampling import HistorySampler
from blockstore.control.service import ControlService, host_id_of
from blockstore.crypto.disk import set_provider
from blockstore.crypto.keyring import provider_from
from blockstore.errors import InvalidArgument, Unavailable
from blockstore.geo.config import ReplicationConfig
from blockstore.host import contract, servicefile
from blockstore.host.config import DEFAULT_BUCKET, Settings, api_token
from blockstore.host.embedded import Credentials, EmbeddedSeaweed
from blockstore.host.supervisor import ExportSupervisor, SupervisorConfig
from blockstore.store import check as storecheck
from blockstore.store.base import ObjectStore
from blockstore.store.chunkprobe import probe_in_background
from blockstore.store.health import StoreProbe
from blockstore.store.s3 import S3Config, S3Store
from blockstore.store.stack import build_store

log = logging.getLogger("blockstore")


def start_store(settings: Settings, stack: ExitStack) -> Settings:
    """Make sure an object store is reachable; start the embedded one when none is configured.

    Returns settings whose `s3` is filled in."""
    if settings.s3 is None:
        creds = Credentials.load_or_create(settings.home / "s3-credentials")
        weed = EmbeddedSeaweed(settings.home / "seaweedfs", creds)
        log.info("starting embedded SeaweedFS, data in %s", weed.data_dir)
        weed.start()
        stack.callback(weed.stop)
        log.info("embedded SeaweedFS S3 endpoint %s (pid %d)", weed.endpoint, weed.pid)
        settings = replace(
            settings,
            s3=S3Config(weed.endpoint, DEFAULT_BUCKET, creds.access_key, creds.secret_key),
            embedded=True,
        )
        assert settings.s3 is not None
        raw = S3Store(settings.s3)
        raw.ensure_bucket()
        raw.close()
    return settings


def check_configured_store(settings: Settings) -> None:
    """Before anything else uses it, check that a configured (external) store answers,
    takes the credentials and has the bucket (created when allowed): a configuration error
    ends the start with one line (blockstore/store/check.py), not a traceback."""
    if settings.s3 is None or settings.embedded:
        return
    log.info("checking the object store at %s, bucket %r", settings.s3.endpoint, settings.s3.bucket)
    try:
        note = storecheck.check_store(settings.s3, settings.retry.deadline_seconds)
    except Unavailable as exc:
        if settings.secondary is None:
            raise
        # With a second region the service must come up while the primary is down: that is
        # when its grs disks are failed over (README, "Geo-redundant disks").
        log.warning("%s; starting anyway, grs disks can fail over to the secondary region", exc)
        return
    if note:
        log.info("%s", note)


def check_port_free(settings: Settings) -> None:
    """Say at once, before starting anything, when the API's port is taken (uvicorn would
    only find out after the store and the exports are up)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            s.bind(("127.0.0.1", settings.port))
        except OSError as exc:
            raise InvalidArgument(
                f"cannot listen on 127.0.0.1:{settings.port} ({exc.strerror}): choose another "
                "port with --port or BLOCKSTORE_PORT"
            ) from None


def claim_home(settings: Settings, stack: ExitStack) -> None:
    """One service per home (blockstore/host/servicefile.py): refuse to start beside another."""
    fd = servicefile.claim(settings.home)
    stack.callback(os.close, fd)


def record_service(settings: Settings, stack: ExitStack) -> None:
    """Write `<home>/service.json` (the URL, this pid) for the CLI, removed at a clean stop."""
    servicefile.write(settings.home, f"http://127.0.0.1:{settings.port}")
    stack.callback(servicefile.remove, settings.home)


def open_stores(settings: Settings, stack: ExitStack) -> tuple[ObjectStore, ObjectStore | None]:
    """The store stack over the primary region's bucket, and over the secondary's if one is
    configured (backup targets: `backup_stores`)."""
    assert settings.s3 is not None
    store = build_store(settings.s3, settings.retry)
    stack.callback(store.close)
    if not settings.embedded:  # the embedded store is set right (1 MiB filer chunks)
        probe_in_background(settings.s3)  # logs one line; a slow store gets a warning
    secondary = None
    if settings.secondary is not None:
        secondary = build_store(settings.secondary, settings.retry)
        stack.callback(secondary.close)
    return store, secondary


def backup_stores(settings: Settings, stack: ExitStack) -> dict[str, ObjectStore]:
    """A store stack over each configured backup target (blockstore/control/backups.py)."""
    out = {}
    for name, s3 in settings.backups.items():
        out[name] = build_store(s3, settings.retry)
        stack.callback(out[name].close)
    return out


def start_control(
    settings: Settings, store: ObjectStore, secondary: ObjectStore | None, stack: ExitStack
) -> tuple[ControlService, HistorySampler]:
    """The export supervisor and the control plane over it; replication started; the disks
    attached here served again; their performance history loaded from the home and sampled
    (saved again when the stack closes, before the exports stop)."""
    assert settings.s3 is not None
    # The KEK encrypted disks' data keys unwrap with (exports get the same, host/contract.py).
    set_provider(provider_from(os.environ, contract.kek_dir(settings.home)))
    supervisor = ExportSupervisor(
        SupervisorConfig(
            home=settings.home,
            s3=settings.s3,
            retry_seconds=settings.retry.deadline_seconds,
            secondary=settings.secondary,
            socket_group=settings.socket_group,
            upload_after_seconds=settings.upload_after_seconds,
        )
    )
    stack.callback(supervisor.close)
    control = ControlService(
        store,
        host_id_of(settings.home),
        supervisor,
        secondary=secondary,
        replication_config=ReplicationConfig(rpo_target_seconds=settings.rpo_seconds),
        backups=backup_stores(settings, stack),
    )
    stack.callback(control.close)
    if control.replication is not None:
        control.replication.start()
        stack.callback(control.replication.close)
    served = control.resume()
    if served:
        log.info("serving again the disks attached here: %s", ", ".join(served))
    history = HistorySampler(control, settings.home).start()
    stack.callback(history.close)
    return control, history


class Server(uvicorn.Server):
    """uvicorn's server, which also tells the answers that never end by themselves (the event
    stream, api/routes/events.py) that it is stopping: it waits for every open response to
    end before it stops, so without this one open console would hold the stop forever."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; stop everything started here on the way out."""
    from api.app import AppContext, create_app  # the core imports no web framework at load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.umask(0o077)  # the home, the caches, the store's files: the service's alone
    settings.home.mkdir(parents=True, exist_ok=True)
    token = api_token(settings.home)
    with ExitStack() as stack:
        claim_home(settings, stack)
        check_port_free(settings)
        settings = start_store(settings, stack)
        check_configured_store(settings)
        store, secondary = open_stores(settings, stack)
        control, history = start_control(settings, store, secondary, stack)
        health = StoreProbe(store).start()  # /healthz answers from it, never from the store
        stack.callback(health.close)
        context = AppContext(
            settings=settings,
            store=store,
            token=token,
            control=control,
            health=health,
            history=history,
        )
        app = create_app(context)
        log.info(
            "API on http://127.0.0.1:%d (bearer token in %s or $BLOCKSTORE_API_TOKEN)",
            settings.port,
            settings.home / "api-token",
        )
        log.info("console: http://127.0.0.1:%d/console/ (sign in with that token)", settings.port)
        # uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down, to the
        # handlers that were there before it: make those no-ops, so that this function goes
        # on to stop the exports (flushing them) before the store they flush to.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        record_service(settings, stack)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False
        )
        server = Server(config, context.stopping)
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started:
            raise Unavailable(f"the API did not start on 127.0.0.1:{settings.port}: see above")
        log.info("stopping")
