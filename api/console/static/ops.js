// The operations bar: every long-running operation (delete, snapshot, failback, redundancy
// change...) as a message at the bottom of the screen from the moment it starts, its progress
// live from the service's event stream (GET /v1/events, server-sent events: EventSource sends
// the same-origin session cookie), and how it ended; plus the history of recent operations.
// If the stream is down, the list is polled until it is back.

import { api } from "./api.js";
import { el, time } from "./format.js";

const KEEP_FINISHED_MS = 12000;
const POLL_MS = 5000;
const HISTORY = 30;
const MAX_NOTICES = 3; // the console's own notices shown at once (operations: all)

// Operation kinds (blockstore/control/*: operations.start/run) as a person reads them; an
// unknown kind is shown as it is named, dashes as spaces.
const NAMES = {
  "delete-disk": "Delete disk", snapshot: "Snapshot", failback: "Fail back",
  "seed-secondary": "Seed the secondary copy of", "remove-secondary": "Remove the secondary copy of",
  "copy-snapshot": "Copy to the other region:", backup: "Back up", "restore-backup": "Restore backup to",
  "revert-disk": "Revert disk",
};

function title(op) {
  const kind = NAMES[op.kind] || op.kind.replaceAll("_", " ").replaceAll("-", " ");
  return `${kind} ${op.target}`;
}

function ending(op) {
  if (op.status === "running") return `running, ${Math.round((op.progress || 0) * 100)}%`;
  if (op.status === "succeeded") return "succeeded";
  return `failed: ${op.error || "no reason given"}`;
}

export class OperationsBar {
  constructor({ messages, rows, toggle, history, onChange }) {
    this.messagesBox = messages;
    this.rows = rows;
    this.history = history;
    this.onChange = onChange;
    this.ops = new Map();
    this.shown = new Map(); // op id -> its message element
    this.source = null;
    this.pollTimer = null;
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      history.hidden = !open;
    });
  }

  async start() {
    try {
      const list = await api("GET", "/v1/operations");
      for (const op of list.slice(0, HISTORY).reverse()) this.record(op, { quiet: true });
    } catch {
      // the stream below brings them
    }
    this.connect();
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  connect() {
    this.source = new EventSource("/v1/events");
    this.source.addEventListener("operation", (event) => {
      try {
        this.record(JSON.parse(event.data));
      } catch {
        // a malformed event is skipped
      }
    });
    this.source.addEventListener("open", () => this.setPolling(false));
    this.source.addEventListener("error", () => this.setPolling(true));
  }

  setPolling(on) {
    if (on && !this.pollTimer) this.pollTimer = setInterval(() => this.poll(), POLL_MS);
    if (!on && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = null;
    }
  }

  async poll() {
    try {
      const list = await api("GET", "/v1/operations");
      for (const op of list.slice(0, HISTORY).reverse()) {
        const known = this.ops.get(op.id);
        if (!known || known.status !== op.status || known.progress !== op.progress) this.record(op);
      }
    } catch {
      // signed out or down: the app handles 401
    }
  }

  /** A new or changed operation: its message, the history, and the app told. */
  record(op, { quiet = false } = {}) {
    const before = this.ops.get(op.id);
    this.ops.set(op.id, op);
    if (this.ops.size > HISTORY) this.ops.delete(this.ops.keys().next().value);
    this.renderHistory();
    if (!quiet || op.status === "running") this.showMessage(op);
    if (!quiet && (!before || before.status !== op.status)) this.onChange(op);
  }

  showMessage(op) {
    let box = this.shown.get(op.id);
    if (!box) {
      box = el("div", { class: "op-message", dataset: { opId: op.id } },
        el("span", { class: "op-title" }), el("span", { class: "op-status" }),
        el("progress", { max: "1", "aria-label": `${title(op)} progress` }),
        el("button", { type: "button", class: "link", "aria-label": `Dismiss ${title(op)}`,
          onclick: () => this.dismiss(op.id) }, "×"));
      this.shown.set(op.id, box);
      this.messagesBox.prepend(box);
    }
    box.dataset.status = op.status;
    const seen = new Set((box.dataset.seen || "").split(" ").filter(Boolean)).add(op.status);
    box.dataset.seen = [...seen].join(" "); // the states this message went through
    box.querySelector(".op-title").textContent = title(op);
    box.querySelector(".op-status").textContent = ending(op);
    const bar = box.querySelector("progress");
    bar.value = op.status === "succeeded" ? 1 : op.progress || 0;
    bar.hidden = op.status !== "running";
    if (op.status !== "running") {
      clearTimeout(box.timer);
      box.timer = setTimeout(() => this.dismiss(op.id), KEEP_FINISHED_MS);
    }
  }

  dismiss(id) {
    const box = this.shown.get(id);
    if (box) box.remove();
    this.shown.delete(id);
  }

  /** A message about the console's own action (created, resized...), not an operation. */
  notice(text, kind = "ok") {
    const box = el("div", { class: "op-message notice", dataset: { status: kind } },
      el("span", { class: "op-title" }, text));
    this.messagesBox.prepend(box);
    setTimeout(() => box.remove(), KEEP_FINISHED_MS);
    const notices = this.messagesBox.querySelectorAll(".notice");
    for (const old of [...notices].slice(MAX_NOTICES)) old.remove();
  }

  renderHistory() {
    const ops = [...this.ops.values()].reverse();
    this.rows.replaceChildren(...ops.map((op) => el("tr", { dataset: { opId: op.id } },
      el("td", {}, time(op.created)), el("td", {}, NAMES[op.kind] || op.kind),
      el("td", {}, op.target), el("td", { class: `status-${op.status}` }, op.status),
      el("td", {}, `${Math.round((op.progress || 0) * 100)}%`), el("td", {}, op.error || ""))));
  }
}
