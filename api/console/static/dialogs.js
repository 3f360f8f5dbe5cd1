// Dialogs: native modal <dialog>s built from a list of fields. showModal() traps focus and
// closes on Escape; focus moves to the first field and goes back to the control that opened
// the dialog. A refusal from the API is shown inside the dialog, which stays open.

import { el } from "./format.js";

let counter = 0;

function field(spec, id) {
  const common = { id, name: spec.name, "aria-describedby": spec.help ? `${id}-help` : null };
  let input;
  if (spec.type === "select") {
    input = el("select", common,
      ...spec.options.map(([value, label]) =>
        el("option", { value, selected: value === spec.value }, label)));
  } else if (spec.type === "checkbox") {
    input = el("input", { ...common, type: "checkbox", checked: Boolean(spec.value) });
  } else {
    input = el("input", {
      ...common, type: spec.type || "text", value: spec.value ?? "", required: spec.required,
      min: spec.min, max: spec.max, step: spec.step, pattern: spec.pattern,
      autocomplete: "off", spellcheck: "false",
    });
  }
  const label = el("label", { for: id }, spec.label);
  const help = spec.help ? el("small", { id: `${id}-help`, class: "muted" }, spec.help) : null;
  const cls = spec.type === "checkbox" ? "field check" : "field";
  return spec.type === "checkbox" ? el("div", { class: cls }, input, label, help)
    : el("div", { class: cls }, label, input, help);
}

function values(form, fields) {
  const out = {};
  for (const spec of fields) {
    const input = form.elements.namedItem(spec.name);
    out[spec.name] = spec.type === "checkbox" ? input.checked : input.value.trim();
  }
  return out;
}

/**
 * Open a dialog: {title, text, fields, submit, danger, onSubmit(values)}. Resolves with what
 * onSubmit returned once it succeeded, or null if the dialog was cancelled.
 */
export function openDialog({ title, text, fields = [], submit = "OK", danger = false, onSubmit }) {
  const opener = document.activeElement;
  const id = `dlg-${++counter}`;
  const error = el("p", { class: "error", role: "alert", id: `${id}-error` });
  const submitButton = el("button", { type: "submit", class: danger ? "danger" : "primary" }, submit);
  const cancel = el("button", { type: "button", value: "cancel" }, "Cancel");
  const form = el("form", { method: "dialog" },
    el("h2", { id: `${id}-title` }, title),
    text ? el("p", { id: `${id}-text` }, text) : null,
    ...fields.map((spec, i) => field(spec, `${id}-f${i}`)),
    error,
    el("div", { class: "dialog-buttons" }, cancel, submitButton));
  const dialog = el("dialog", {
    "aria-labelledby": `${id}-title`, "aria-describedby": text ? `${id}-text` : null,
  }, form);
  document.body.append(dialog);

  return new Promise((resolve) => {
    let result = null;
    const finish = () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    };
    dialog.addEventListener("close", finish, { once: true });
    cancel.addEventListener("click", () => dialog.close());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      submitButton.disabled = true;
      submitButton.setAttribute("aria-busy", "true");
      try {
        result = await onSubmit(values(form, fields));
        dialog.close();
      } catch (err) {
        error.textContent = err.message;
      } finally {
        submitButton.disabled = false;
        submitButton.removeAttribute("aria-busy");
      }
    });
    dialog.showModal();
    const first = form.querySelector("input, select") || submitButton;
    first.focus();
  });
}
