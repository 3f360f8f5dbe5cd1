// The disk list (filter, sort, kept live) and one disk's details: its properties, connection
// strings, snapshots, graphs and every action on it. Every action goes through the /v1 API;
// a refusal is shown as the API's own message.

import { api, disk } from "./api.js";
import { DiskGraphs } from "./charts.js";
import { openDialog } from "./dialogs.js";
import { bytes, el, keepFocus, lagOf, time } from "./format.js";

const NAME_PATTERN = "[a-z0-9][a-z0-9\\-]{0,62}";
const CACHING = [["none", "none"], ["readonly", "readonly"], ["readwrite", "readwrite"]];
const GIB = 1024 ** 3;

// [key, heading, value for sorting, text shown]
const COLUMNS = [
  ["name", "Name", (d) => d.name],
  ["size", "Size", (d) => d.size_bytes, (d) => bytes(d.size_bytes)],
  ["kind", "Kind", (d) => d.kind],
  ["caching", "Caching", (d) => d.caching],
  ["redundancy", "Redundancy", (d) => d.redundancy],
  ["state", "State", (d) => d.state],
  ["vm", "Attached to VM", (d) => (d.attachment ? d.attachment.vm : "")],
  ["host", "Host", (d) => (d.attachment ? d.attachment.host : d.host || "")],
  ["stored", "Stored", (d) => d.bytes_stored ?? -1, (d) => bytes(d.bytes_stored)],
  ["lag", "Replication lag", (d) => d.replication?.lag_seconds ?? -1, (d) => lagOf(d) ?? "—"],
];

export class Disks {
  constructor({ notice }) {
    this.notice = notice;
    this.disks = [];
    this.sortKey = "name";
    this.sortAsc = true;
    this.selected = null;
    this.filter = document.getElementById("disk-filter");
    this.rows = document.getElementById("disk-rows");
    this.detail = document.getElementById("detail");
    this.graphs = new DiskGraphs(document.getElementById("charts"),
      document.getElementById("ranges"), document.getElementById("graphs-state"));
    this.filter.addEventListener("input", () => this.render());
    document.getElementById("create-disk").addEventListener("click", () => this.create());
    document.getElementById("refresh-disks").addEventListener("click", () => this.load());
    document.getElementById("detail-close").addEventListener("click", () => this.select(null));
    this.renderHead();
  }

  async load() {
    const answer = await api("GET", "/v1/disks");
    this.disks = answer.disks;
    this.render();
    if (this.selected) {
      const d = this.disks.find((x) => x.name === this.selected);
      if (d) this.renderDetail(d);
      else this.select(null);
    }
  }

  renderHead() {
    const head = document.getElementById("disk-head");
    keepFocus(head, () => head.replaceChildren(...COLUMNS.map(([key, label]) => {
      const sorted = key === this.sortKey;
      return el("th", { scope: "col", "aria-sort": sorted ? (this.sortAsc ? "ascending" : "descending") : null },
        el("button", { type: "button", class: "sort", dataset: { key, focusKey: `sort-${key}` },
          "aria-label": `Sort by ${label.toLowerCase()}`,
          onclick: () => this.sortBy(key) }, label, sorted ? (this.sortAsc ? " ▲" : " ▼") : ""));
    })));
  }

  sortBy(key) {
    this.sortAsc = key === this.sortKey ? !this.sortAsc : true;
    this.sortKey = key;
    this.renderHead();
    this.render();
  }

  visible() {
    const words = this.filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const [, , sortValue] = COLUMNS.find(([key]) => key === this.sortKey);
    const shown = this.disks.filter((d) => {
      const text = COLUMNS.map(([, , v]) => String(v(d))).join(" ").toLowerCase();
      return words.every((w) => text.includes(w));
    });
    shown.sort((a, b) => {
      const x = sortValue(a);
      const y = sortValue(b);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return this.sortAsc ? c : -c;
    });
    return shown;
  }

  render() {
    const shown = this.visible();
    keepFocus(this.rows, () => this.rows.replaceChildren(...shown.map((d) => el("tr", {
      dataset: { disk: d.name }, class: d.name === this.selected ? "selected" : null,
      "aria-selected": d.name === this.selected ? "true" : null,
    }, ...COLUMNS.map(([key, , value, text]) => (key === "name"
      ? el("th", { scope: "row" }, el("button", { type: "button", class: "disk-link",
        dataset: { focusKey: `open-${d.name}` },
        "aria-label": `Open disk ${d.name}`, onclick: () => this.select(d.name, true) }, d.name))
      : el("td", { dataset: { col: key } }, (text || value)(d))))))));
    document.getElementById("disk-empty").hidden = shown.length > 0;
  }

  select(name, focus = false) {
    this.selected = name;
    this.render();
    if (!name) {
      this.detail.hidden = true;
      this.graphs.hide();
      return;
    }
    const d = this.disks.find((x) => x.name === name);
    this.detail.hidden = false;
    this.renderDetail(d);
    this.graphs.show(name);
    this.loadSnapshots();
    if (focus) document.getElementById("detail-heading").focus();
  }

  renderDetail(d) {
    document.getElementById("detail-name").textContent = d.name;
    const a = d.attachment;
    const props = [["Size", bytes(d.size_bytes)], ["Kind", d.kind], ["Caching", d.caching],
      ["Redundancy", d.redundancy], ["State", d.state], ["Stored", bytes(d.bytes_stored)],
      ["Attached to", a ? `VM ${a.vm} on host ${a.host}` : "not attached"],
      ["Replication lag", lagOf(d) ?? "—"], ["Created", time(d.created)]];
    if (a && a.caching && a.caching !== d.caching) props.push(["Runs with caching", a.caching]);
    document.getElementById("detail-props").replaceChildren(
      ...props.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    this.renderActions(d);
    this.renderConnection(a);
  }

  renderActions(d) {
    const button = (label, handler, cls) => el("button", { type: "button", class: cls,
      dataset: { focusKey: `action-${label}` },
      onclick: () => handler(d) }, label);
    const actions = [button("Resize", (x) => this.resize(x)),
      d.kind === "ephemeral" ? null : button("Change caching", (x) => this.caching(x)),
      button("Snapshot", (x) => this.snapshot(x)),
      d.attachment ? button("Detach", (x) => this.detach(x)) : button("Attach", (x) => this.attach(x))];
    if (d.redundancy === "grs") {
      actions.push(d.primary === "secondary" ? button("Fail back", (x) => this.failback(x))
        : button("Fail over", (x) => this.failover(x)));
    }
    actions.push(button("Delete", (x) => this.remove(x), "danger"));
    const box = document.getElementById("detail-actions");
    keepFocus(box, () => box.replaceChildren(...actions.filter(Boolean)));
  }

  renderConnection(a) {
    const box = document.getElementById("connection");
    box.hidden = !a;
    if (!a) return;
    const block = (key, label, text) => {
      const pre = el("pre", { id: `conn-${key}`, tabindex: "0", "aria-label": label }, text);
      return el("div", { class: "conn" }, el("div", { class: "conn-head" }, el("strong", {}, label),
        el("button", { type: "button", "aria-label": `Copy ${label}`, dataset: { focusKey: `copy-${key}` },
          onclick: (e) => copy(text, e.currentTarget) }, "Copy")), pre);
    };
    const blocks = document.getElementById("connection-blocks");
    keepFocus(blocks, () => blocks.replaceChildren(
      block("nbd", "NBD URI", a.nbd_uri), block("qemu", "QEMU -blockdev", a.qemu_blockdev),
      block("libvirt", "libvirt XML", a.libvirt_xml)));
  }

  async loadSnapshots() {
    const name = this.selected;
    const list = document.getElementById("snapshot-list");
    try {
      const { snapshots } = await api("GET", `${disk(name)}/snapshots`);
      if (name !== this.selected) return;
      keepFocus(list, () => list.replaceChildren(...snapshots.map((s) => el("li", { dataset: { snapshot: s.name } },
        el("span", {}, `${s.name} `, el("span", { class: "muted" }, time(s.created))),
        el("button", { type: "button", "aria-label": `Clone a new disk from snapshot ${s.name}`,
          dataset: { focusKey: `clone-${s.name}` }, onclick: () => this.clone(name, s.name) }, "Clone")))));
      if (!snapshots.length) list.replaceChildren(el("li", { class: "muted" }, "none yet"));
    } catch (err) {
      list.replaceChildren(el("li", { class: "error" }, err.message));
    }
  }

  async act(promise, message) {
    const out = await promise;
    if (message) this.notice(message);
    await this.load();
    return out;
  }

  create() {
    return openDialog({
      title: "Create disk", submit: "Create",
      fields: [
        { name: "name", label: "Name", required: true, pattern: NAME_PATTERN,
          help: "1-63 of a-z, 0-9 and '-'" },
        { name: "size", label: "Size (GiB)", type: "number", min: 1, value: "1", required: true },
        { name: "kind", label: "Kind", type: "select", value: "data",
          options: [["data", "data"], ["os", "os"], ["ephemeral", "ephemeral (host-local)"]] },
        { name: "caching", label: "Caching", type: "select", value: "",
          options: [["", "default for the kind"], ...CACHING] },
        { name: "redundancy", label: "Redundancy", type: "select", value: "lrs",
          options: [["lrs", "lrs (one region)"], ["grs", "grs (copied to a second region)"]] },
      ],
      onSubmit: async (v) => {
        const body = { name: v.name, size_gib: Number(v.size), kind: v.kind, redundancy: v.redundancy };
        if (v.caching) body.caching = v.caching;
        const made = await this.act(api("POST", "/v1/disks", body), `Created disk ${v.name}`);
        this.select(made.name);
        return made;
      },
    });
  }

  resize(d) {
    return openDialog({
      title: `Resize disk ${d.name}`, submit: "Resize",
      text: `Now ${bytes(d.size_bytes)}. A disk grows online; it shrinks only detached.`,
      fields: [{ name: "size", label: "New size (GiB)", type: "number", min: 1, step: "any",
        value: String(d.size_bytes / GIB), required: true },
      { name: "shrink", label: "Allow shrinking", type: "checkbox" }],
      onSubmit: (v) => this.act(api("PATCH", disk(d.name), {
        size_bytes: Math.round((Number(v.size) * GIB) / 512) * 512, allow_shrink: v.shrink,
      }), `Resized disk ${d.name} to ${v.size} GiB`),
    });
  }

  caching(d) {
    return openDialog({
      title: `Caching of disk ${d.name}`, submit: "Change",
      text: "The mode applies when the disk's export next starts (attach, or a restart).",
      fields: [{ name: "caching", label: "Caching", type: "select", value: d.caching, options: CACHING }],
      onSubmit: (v) => this.act(api("PATCH", disk(d.name), { caching: v.caching }),
        `Disk ${d.name}: caching ${v.caching}`),
    });
  }

  snapshot(d) {
    const stamp = new Date().toISOString().slice(0, 19).replace(/[T:]/g, "-").toLowerCase();
    return openDialog({
      title: `Snapshot disk ${d.name}`, submit: "Take snapshot",
      text: "Crash-consistent; an attached disk is flushed first.",
      fields: [{ name: "name", label: "Snapshot name", required: true, pattern: NAME_PATTERN,
        value: `snap-${stamp}` }],
      onSubmit: async (v) => {
        const out = await this.act(api("POST", `${disk(d.name)}/snapshots`, { name: v.name }));
        this.loadSnapshots();
        return out;
      },
    });
  }

  clone(source, snap) {
    const original = this.disks.find((x) => x.name === source);
    return openDialog({
      title: `Clone snapshot ${source}/${snap}`, submit: "Create disk",
      text: "A new disk that starts with the snapshot's contents (instant, no copy).",
      fields: [{ name: "name", label: "New disk name", required: true, pattern: NAME_PATTERN,
        value: `${source}-${snap}`.slice(0, 63) }],
      onSubmit: async (v) => {
        const made = await this.act(api("POST", "/v1/disks", { name: v.name,
          kind: original ? original.kind : "data", source_snapshot: `${source}/${snap}` }),
        `Created disk ${v.name} from ${source}/${snap}`);
        this.select(made.name, true);
        return made;
      },
    });
  }

  attach(d) {
    return openDialog({
      title: `Attach disk ${d.name}`, submit: "Attach",
      text: "Starts its NBD export on this host; the connection strings are shown after.",
      fields: [{ name: "vm", label: "VM name", required: true, pattern: NAME_PATTERN },
        { name: "force", label: "Force (take it from another host, fencing its writer)", type: "checkbox" }],
      onSubmit: (v) => this.act(api("POST", `${disk(d.name)}/attach`, { vm: v.vm, force: v.force }),
        `Attached disk ${d.name} to VM ${v.vm}`),
    });
  }

  detach(d) {
    return openDialog({
      title: `Detach disk ${d.name}`, submit: "Detach",
      text: `Detach ${d.name} from VM ${d.attachment.vm}? Refused while NBD clients are connected, unless forced.`,
      fields: [{ name: "force", label: "Force (the guest's next I/O fails)", type: "checkbox" }],
      onSubmit: (v) => this.act(api("POST", `${disk(d.name)}/detach`, { force: v.force }),
        `Detached disk ${d.name}`),
    });
  }

  failover(d) {
    return openDialog({
      title: `Fail over disk ${d.name}`, submit: "Fail over", danger: true,
      text: `Serve ${d.name} from the secondary region? Writes not yet replicated stay behind.`,
      onSubmit: (v) => this.act(api("POST", `${disk(d.name)}/failover`), `Disk ${d.name} failed over`),
    });
  }

  failback(d) {
    return openDialog({
      title: `Fail back disk ${d.name}`, submit: "Fail back",
      text: `Re-seed the primary region from the secondary and serve ${d.name} from it again?`,
      onSubmit: () => this.act(api("POST", `${disk(d.name)}/failback`)),
    });
  }

  remove(d) {
    return openDialog({
      title: `Delete disk ${d.name}`, submit: `Delete ${d.name}`, danger: true,
      text: `Delete disk ${d.name} and all its data and snapshots? This cannot be undone.`,
      onSubmit: async () => {
        const out = await this.act(api("DELETE", disk(d.name)));
        this.select(null);
        return out;
      },
    });
  }
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}
