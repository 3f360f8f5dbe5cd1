"""Fixtures of the web console's browser tests: one real `blockstore serve` over the test
SeaweedFS for the module, one headless Chromium, and a fresh browser context (no cookies) per
test. Helpers are in tests/support/browser.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.browser import launch
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, wait_for


@pytest.fixture(scope="module")
def console_host(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeHost]:
    home = tmp_path_factory.mktemp("console") / "home"
    host = ServeHost(
        home,
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=f"console-{os.getpid()}-{home.parent.name}/",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    ).start()
    yield host
    for d in host.ok("GET", "/v1/disks")["disks"]:  # leave the shared bucket clean
        if d["attachment"]:
            host.call("POST", f"/v1/disks/{d['name']}/detach", {"force": True})
        host.call("DELETE", f"/v1/disks/{d['name']}")
    wait_for(
        lambda: host.ok("GET", "/v1/operations?status=running") == [],
        timeout=60,
        what="the deletes to finish",
        step=0.5,
    )
    host.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        b = launch(playwright)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, console_host: ServeHost) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=f"http://127.0.0.1:{console_host.port}"
    )
    context.set_default_timeout(20_000)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert errors == [], f"script errors in the console: {errors}"
