// The console's entry: sign-in and sign-out, and the wiring of the disk list, the graphs and
// the operations bar. The token is typed once, sent in one POST body (/v1/session) and
// forgotten; the session cookie that replaces it is HttpOnly, so no script here can read it.

import { api, ApiError, whenSignedOut } from "./api.js";
import { Disks } from "./disks.js";
import { OperationsBar } from "./ops.js";

const LIST_POLL_MS = 15000;
const $ = (id) => document.getElementById(id);

let disks = null;
let ops = null;
let pollTimer = null;
let refreshSoon = null;

function showSignIn(message = "") {
  stopApp();
  $("app-view").hidden = true;
  $("signin-view").hidden = false;
  $("signin-error").textContent = message;
  $("signin-token").focus();
}

function stopApp() {
  clearInterval(pollTimer);
  pollTimer = null;
  if (ops) ops.stop();
  if (disks) disks.select(null);
}

/** Refresh the list shortly after an operation changes (several events make one reload). */
function scheduleRefresh() {
  clearTimeout(refreshSoon);
  refreshSoon = setTimeout(() => disks.load().catch(() => {}), 300);
}

async function showApp() {
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  disks ||= new Disks({ notice: (text) => ops.notice(text) });
  ops ||= new OperationsBar({
    messages: $("op-messages"), rows: $("ops-rows"), toggle: $("ops-history-toggle"),
    history: $("ops-history"), onChange: scheduleRefresh,
  });
  // For a person at the DevTools console and for the browser tests: the data behind the views.
  window.blockstoreConsole = { disks, graphs: disks.graphs, ops };
  try {
    const info = await api("GET", "/v1/info");
    $("host-info").textContent = `host ${info.host} · store ${info.store.endpoint} · v${info.version}`;
  } catch (err) {
    if (err.status === 401) return;
  }
  await disks.load().catch((err) => ops.notice(`disks: ${err.message}`, "failed"));
  ops.start();
  pollTimer = setInterval(() => disks.load().catch(() => {}), LIST_POLL_MS);
  $("main").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-token");
  const token = input.value.trim();
  $("signin-error").textContent = "";
  try {
    await api("POST", "/v1/session", { token }, { quiet401: true });
  } catch (err) {
    $("signin-error").textContent = err.status === 401
      ? "Wrong token. Use the contents of <home>/api-token." : err.message;
    input.select();
    return;
  }
  input.value = ""; // the token is not kept in the page once it is traded for a session
  await showApp();
}

async function signOut() {
  try {
    await api("DELETE", "/v1/session", undefined, { quiet401: true });
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  }
  showSignIn("Signed out.");
}

async function boot() {
  whenSignedOut(() => showSignIn("Your session ended: sign in again."));
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  try {
    await api("GET", "/v1/session", undefined, { quiet401: true });
    await showApp();
  } catch {
    showSignIn();
  }
}

boot();
