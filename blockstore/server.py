"""`blockstore serve`: the embedded object store (when none is configured) plus the API.

Start order: settings -> the embedded SeaweedFS if no endpoint is configured (its data under
`<home>/seaweedfs`, so a restart finds every disk again) -> the bucket -> the API on 127.0.0.1.
SIGINT and SIGTERM stop uvicorn, then everything this process started, in reverse order. The
embedded store also gets PR_SET_PDEATHSIG, so even a `kill -9` of this process leaves no orphan.
"""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack
from dataclasses import replace

import uvicorn

from blockstore.attachments import ExportSupervisor, SupervisorConfig
from blockstore.config import DEFAULT_BUCKET, Settings, api_token
from blockstore.control import ControlService, host_id_of
from blockstore.embedded import Credentials, EmbeddedSeaweed
from blockstore.replication import ReplicationConfig
from blockstore.s3store import S3Config, S3Store
from blockstore.stack import build_store
from blockstore.storeprobe import probe_in_background

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


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; stop everything started here on the way out."""
    from api.app import AppContext, create_app  # the core imports no web framework at load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings.home.mkdir(parents=True, exist_ok=True)
    token = api_token(settings.home)
    with ExitStack() as stack:
        settings = start_store(settings, stack)
        assert settings.s3 is not None
        store = build_store(settings.s3, settings.retry)
        stack.callback(store.close)
        if not settings.embedded:  # the embedded store is set right (1 MiB filer chunks)
            probe_in_background(settings.s3)  # logs one line; a slow store gets a warning
        secondary = None
        if settings.secondary is not None:
            secondary = build_store(settings.secondary, settings.retry)
            stack.callback(secondary.close)
        supervisor = ExportSupervisor(
            SupervisorConfig(
                home=settings.home,
                s3=settings.s3,
                retry_seconds=settings.retry.deadline_seconds,
                secondary=settings.secondary,
            )
        )
        stack.callback(supervisor.close)
        control = ControlService(
            store,
            host_id_of(settings.home),
            supervisor,
            secondary=secondary,
            replication_config=ReplicationConfig(rpo_target_seconds=settings.rpo_seconds),
        )
        if control.replication is not None:
            control.replication.start()
            stack.callback(control.replication.close)
        served = control.resume()
        if served:
            log.info("serving again the disks attached here: %s", ", ".join(served))
        context = AppContext(settings=settings, store=store, token=token, control=control)
        app = create_app(context)
        log.info(
            "API on http://127.0.0.1:%d (bearer token in %s or $BLOCKSTORE_API_TOKEN)",
            settings.port,
            settings.home / "api-token",
        )
        # uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down, to the
        # handlers that were there before it: make those no-ops, so that this function goes
        # on to stop the exports (flushing them) before the store they flush to.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        uvicorn.run(
            app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False
        )
        log.info("stopping")
