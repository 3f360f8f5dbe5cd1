"""The console from the keyboard alone, and named for a screen reader (issue #22): sign in, reach
"Create disk" with Tab and fill its dialog (focus moves into it; Escape closes it and focus
returns), open the new disk, change its caching and delete it, every step with Tab/Enter;
the focused control always shows a focus ring; and every control on every view (sign-in, the
list, a disk's details with its graphs, a dialog) has an accessible name as Chromium computes
it. Also: `blockstore serve` logs the console's address, and the console's files are served with
their security headers and the vendored uPlot."""

from __future__ import annotations

import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import controls_named, focus_ring, tab_to, unnamed_controls
from tests.support.servehost import TOKEN, ServeHost

pytestmark = pytest.mark.browser

DISK = "kbd1"


def by_text(text: str) -> object:
    return lambda f: f["text"] == text or f["label"] == text


def test_main_flows_work_from_the_keyboard_with_visible_focus(
    page: Page, console_host: ServeHost
) -> None:
    page.goto("/console/")
    expect(page.locator("#signin-token")).to_be_focused()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#app-view")).to_be_visible()

    # Create disk: Tab to it, Enter; focus is in the dialog's first field.
    tab_to(page, by_text("Create disk"))
    assert focus_ring(page) != "none"
    page.keyboard.press("Enter")
    dialog = page.locator("dialog[open]")
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    page.keyboard.press("Escape")  # Escape closes it, focus goes back to the button
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(page.get_by_role("button", name="Create disk")).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    page.keyboard.type(DISK)
    page.keyboard.press("Tab")
    assert focus_ring(page) != "none"
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Enter")  # submits the form
    expect(page.locator(f'#disk-rows tr[data-disk="{DISK}"]')).to_be_visible()
    assert console_host.ok("GET", f"/v1/disks/{DISK}")["size_bytes"] == 2 << 30

    # Open the disk from the list; change its caching.
    page.locator("#detail-close").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_hidden()
    page.locator("#disk-filter").focus()
    page.keyboard.type(DISK)
    tab_to(page, by_text(f"Open disk {DISK}"))
    page.keyboard.press("Enter")
    expect(page.locator("#detail-heading")).to_be_focused()
    tab_to(page, by_text("Change caching"))
    page.keyboard.press("Enter")
    expect(page.locator("dialog[open] select")).to_be_focused()
    page.keyboard.press("ArrowDown")  # none -> readonly
    tab_to(page, by_text("Change"))
    page.keyboard.press("Enter")
    expect(page.locator(f'#disk-rows tr[data-disk="{DISK}"] td[data-col="caching"]')).to_have_text(
        "readonly"
    )

    # Delete it (detached: it goes), confirmed with the keyboard.
    page.locator("#detail-heading").focus()
    tab_to(page, by_text("Delete"))
    page.keyboard.press("Enter")
    expect(page.locator("dialog[open]")).to_contain_text(f"Delete disk {DISK}")
    tab_to(page, by_text(f"Delete {DISK}"))
    page.keyboard.press("Enter")
    expect(page.locator(f'#disk-rows tr[data-disk="{DISK}"]')).to_have_count(0)
    expect(page.locator(".op-message", has_text=f"Delete disk {DISK}")).to_be_visible()


def test_every_control_has_an_accessible_name(page: Page, console_host: ServeHost) -> None:
    console_host.ok("POST", "/v1/disks", {"name": "named1", "size_gib": 1, "kind": "os"})
    console_host.ok("POST", "/v1/disks/named1/attach", {"vm": "vm-named"})
    console_host.ok("POST", "/v1/disks/named1/snapshots", {"name": "s1"})
    page.goto("/console/")
    expect(page.locator("#signin-view")).to_be_visible()
    assert controls_named(page) >= 2 and unnamed_controls(page) == []

    page.fill("#signin-token", TOKEN)
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Open disk named1").click()
    expect(page.locator("#conn-nbd")).to_be_visible()
    expect(page.locator('#snapshot-list li[data-snapshot="s1"]')).to_be_visible()
    page.get_by_role("button", name="Operations history").click()
    expect(page.locator("#ops-history")).to_be_visible()
    assert controls_named(page) >= 30
    assert unnamed_controls(page) == []

    for action in ("Resize", "Snapshot", "Detach", "Delete"):
        page.locator("#detail-actions").get_by_role("button", name=action).click()
        expect(page.locator("dialog[open]")).to_be_visible()
        assert unnamed_controls(page) == [], action
        page.keyboard.press("Escape")
    page.get_by_role("button", name="Clone a new disk from snapshot s1").click()
    assert unnamed_controls(page) == []
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Create disk").click()
    assert unnamed_controls(page) == []
    page.keyboard.press("Escape")
    console_host.ok("POST", "/v1/disks/named1/detach", {"force": True})


def test_console_files_are_served_with_security_headers(console_host: ServeHost) -> None:
    base = f"http://127.0.0.1:{console_host.port}"
    assert f"console: {base}/console/" in console_host.log_tail(100_000)  # serve says where
    with urllib.request.urlopen(f"{base}/", timeout=10) as r:  # / redirects to the console
        assert r.url == f"{base}/console/"
        csp = r.headers["Content-Security-Policy"]
        body = r.read().decode()
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "vendor/uplot/uPlot.iife.min.js" in body
    for path in ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css", "app.js"):
        with urllib.request.urlopen(f"{base}/console/{path}", timeout=10) as r:
            assert r.status == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(f"{base}/console/vendor/uplot/VERSION", timeout=10) as r:
        assert "uPlot 1.6.32" in r.read().decode()
