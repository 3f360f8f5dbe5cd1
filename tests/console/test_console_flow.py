"""The web console in a real headless Chromium against a real `blockstore serve` (issue #22):
sign in with the token; create a disk; attach it and read the connection strings; write to it
with fio through NBD and see the write graph's data rise; take a snapshot and see its operation
message appear (from the event stream) and end; be refused deleting the attached disk, with the
API's reason; sign out, after which the old cookie is refused by the API. Then the list's
filter and sort, resize, caching and a clone from a snapshot, each checked against the API.

Assertions read the page's text and the values behind the graphs, never pixels. Screenshots of
the main views go to test-artifacts/console/ (tests/support/browser.py).
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import publish_readme_screenshot, screenshot
from tests.support.servehost import TOKEN, ServeHost, wait_for

pytestmark = pytest.mark.browser

DISK = "web1"
VM = "penguin1"


def sign_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url("/console/")
    expect(page.locator("#signin-token")).to_be_focused()
    page.fill("#signin-token", TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#signin-token")).to_have_value("")  # the token is not kept


def dialog_submit(page: Page, fields: dict[str, str]) -> None:
    dialog = page.locator("dialog[open]")
    expect(dialog).to_be_visible()
    for label, value in fields.items():
        dialog.get_by_label(label, exact=True).fill(value)
    dialog.locator("button[type=submit]").click()


@pytest.fixture
def fio_writer() -> Iterator[list[subprocess.Popen[bytes]]]:
    """fio processes a test starts; killed (and reaped) at its end whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def start_fio(uri: str) -> subprocess.Popen[bytes]:
    """Sequential 256 KiB writes through NBD for up to a minute, capped at 4 MB/s so the
    two-core machine stays responsive; the test stops it once the graph has shown it."""
    cmd = ["fio", "--name=console", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
           "--bs=256k", "--size=64M", "--time_based", "--runtime=60", "--rate=4m"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def last_value(page: Page, series: str) -> float:
    text = page.locator(f'dd[data-series="{series}"]').get_attribute("data-value") or ""
    return float(text) if text else 0.0


def written_points(page: Page) -> int:
    """How many samples of the write_mbps series behind the graph are above 0."""
    series = page.evaluate("() => window.blockstoreConsole.graphs.last?.series.write_mbps || []")
    return sum(1 for v in series if v)


def test_console_sign_in_disk_graphs_snapshot_refusal_sign_out(
    page: Page, console_host: ServeHost, fio_writer: list[subprocess.Popen[bytes]]
) -> None:
    page.goto("/")
    expect(page.locator("#signin-view")).to_be_visible()
    expect(page.locator("#app-view")).to_be_hidden()
    screenshot(page, "sign-in")
    page.fill("#signin-token", "not-the-token")
    page.keyboard.press("Enter")
    expect(page.locator("#signin-error")).to_contain_text("Wrong token")
    sign_in(page)

    # Create: the dialog, then the row, then the disk's details.
    page.get_by_role("button", name="Create disk").click()
    dialog_submit(page, {"Name": DISK, "Size (GiB)": "1"})
    row = page.locator(f'#disk-rows tr[data-disk="{DISK}"]')
    expect(row).to_be_visible()
    expect(row.locator('td[data-col="kind"]')).to_have_text("data")
    expect(row.locator('td[data-col="caching"]')).to_have_text("none")
    expect(page.locator("#detail-name")).to_have_text(DISK)
    screenshot(page, "disk-list")

    # Attach: the connection strings are shown whole, as the API gave them.
    page.locator("#detail-actions").get_by_role("button", name="Attach").click()
    dialog_submit(page, {"VM name": VM})
    expect(page.locator("#conn-nbd")).to_be_visible()
    attachment = console_host.ok("GET", f"/v1/disks/{DISK}")["attachment"]
    assert page.inner_text("#conn-nbd") == attachment["nbd_uri"]
    assert page.inner_text("#conn-qemu") == attachment["qemu_blockdev"]
    assert page.inner_text("#conn-libvirt") == attachment["libvirt_xml"]
    expect(row.locator('td[data-col="vm"]')).to_have_text(VM)
    expect(page.get_by_role("button", name="Copy NBD URI")).to_be_visible()

    # Write through NBD: the write graph's data rises within a few seconds.
    assert last_value(page, "write_mbps") == 0.0
    fio = start_fio(attachment["nbd_uri"])
    fio_writer.append(fio)
    wait_for(
        lambda: last_value(page, "write_mbps") > 0 and last_value(page, "write_iops") > 0,
        timeout=30,
        what="the console's write graph to show fio's writes",
    )
    assert fio.poll() is None, fio.stderr.read() if fio.stderr else ""
    wait_for(lambda: written_points(page) >= 3, timeout=45, what="three points of writes")
    page.set_viewport_size({"width": 1280, "height": 1120})
    page.evaluate("window.scrollTo(0, 0)")
    publish_readme_screenshot(screenshot(page, "disk-graphs"))
    page.set_viewport_size({"width": 1280, "height": 900})
    fio.kill()
    fio.wait(30)

    # Snapshot: its operation message appears while it runs and says how it ended.
    page.locator("#detail-actions").get_by_role("button", name="Snapshot").click()
    dialog_submit(page, {"Snapshot name": "snap1"})
    message = page.locator(".op-message", has_text=f"Snapshot {DISK}/snap1")
    expect(message).to_have_attribute("data-status", "succeeded")
    assert "running" in (message.get_attribute("data-seen") or "")  # seen from its start
    expect(message).to_contain_text("succeeded")
    expect(page.locator('#snapshot-list li[data-snapshot="snap1"]')).to_be_visible()
    screenshot(page, "operation-message")

    # Delete while attached: refused, the API's reason shown, the dialog kept, the disk kept.
    page.locator("#detail-actions").get_by_role("button", name="Delete").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text(f"Delete disk {DISK}")
    dialog.get_by_role("button", name=f"Delete {DISK}").click()
    expect(dialog.get_by_role("alert")).to_contain_text(f"attached to VM '{VM}'")
    page.keyboard.press("Escape")
    expect(page.locator("dialog[open]")).to_have_count(0)
    expect(row).to_be_visible()

    # Sign out: back to the sign-in view, and the old cookie no longer opens the API.
    cookie = next(c for c in page.context.cookies() if c["name"] == "blockstore_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script can read it
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin-view")).to_be_visible()
    req = urllib.request.Request(
        f"http://127.0.0.1:{console_host.port}/v1/disks",
        headers={"Cookie": f"blockstore_session={cookie['value']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401


def test_console_resize_clone_caching_filter_and_sort(page: Page, console_host: ServeHost) -> None:
    """The list's filter and sort, and the actions the first test leaves out: resize (grown
    online; a shrink of an attached disk refused with the API's reason), change caching, and
    clone a new disk from a snapshot, each checked against the API."""
    console_host.ok("POST", "/v1/disks", {"name": "tools-a", "size_bytes": 3 << 30, "kind": "data"})
    console_host.ok("POST", "/v1/disks", {"name": "tools-b", "size_bytes": 1 << 30, "kind": "data"})
    console_host.ok("POST", "/v1/disks/tools-a/snapshots", {"name": "base"})
    console_host.ok("POST", "/v1/disks/tools-a/attach", {"vm": "vm-tools"})
    sign_in(page)

    def shown() -> list[str]:
        return page.locator("#disk-rows tr").evaluate_all("rs => rs.map(r => r.dataset.disk)")

    page.fill("#disk-filter", "tools")
    expect(page.locator("#disk-rows tr")).to_have_count(2)
    assert shown() == ["tools-a", "tools-b"]  # by name
    page.get_by_role("button", name="Sort by size").click()
    assert shown() == ["tools-b", "tools-a"]  # 1 GiB, then 3 GiB
    page.get_by_role("button", name="Sort by size").click()
    assert shown() == ["tools-a", "tools-b"]  # descending
    page.fill("#disk-filter", "vm-tools")  # matches the VM column
    expect(page.locator("#disk-rows tr")).to_have_count(1)

    page.get_by_role("button", name="Open disk tools-a").click()
    actions = page.locator("#detail-actions")
    actions.get_by_role("button", name="Resize").click()
    dialog_submit(page, {"New size (GiB)": "4"})
    wait_for(lambda: console_host.ok("GET", "/v1/disks/tools-a")["size_bytes"] == 4 << 30, 20,
             "the resize to reach the record")  # fmt: skip
    actions.get_by_role("button", name="Resize").click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_label("Allow shrinking", exact=True).check()
    dialog_submit(page, {"New size (GiB)": "2"})
    expect(dialog.get_by_role("alert")).to_contain_text("detach")
    page.keyboard.press("Escape")
    assert console_host.ok("GET", "/v1/disks/tools-a")["size_bytes"] == 4 << 30

    actions.get_by_role("button", name="Change caching").click()
    page.locator("dialog[open]").get_by_label("Caching", exact=True).select_option("readonly")
    page.locator("dialog[open] button[type=submit]").click()
    wait_for(lambda: console_host.ok("GET", "/v1/disks/tools-a")["caching"] == "readonly", 20,
             "the caching change to reach the record")  # fmt: skip

    page.get_by_role("button", name="Clone a new disk from snapshot base").click()
    dialog_submit(page, {"New disk name": "tools-clone"})
    expect(page.locator("#detail-name")).to_have_text("tools-clone")
    clone = console_host.ok("GET", "/v1/disks/tools-clone")
    assert clone["size_bytes"] == 3 << 30  # the snapshot's size, before the resize
    page.fill("#disk-filter", "tools")
    expect(page.locator("#disk-rows tr")).to_have_count(3)
