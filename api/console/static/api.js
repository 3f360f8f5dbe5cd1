// The console's one way to the /v1 API: same-origin fetch with the session cookie (sent by the
// browser, never readable here) and the console header the guard (api/guard.py) demands of
// every request that changes something. Errors become ApiError with the API's own message.

export const CONSOLE_HEADER = "X-Blockstore-Console";

export class ApiError extends Error {
  constructor(status, kind, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.kind = kind || "Error";
  }
}

let onSignedOut = () => {};

/** Called when the API answers 401: the session expired or was signed out elsewhere. */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

function detailText(detail) {
  if (detail === undefined || detail === null) return "";
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { [CONSOLE_HEADER]: "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "NetworkError", `the service does not answer (${err.message})`);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data && data.error,
      detailText(data && data.detail) || response.statusText);
    if (response.status === 401 && !quiet401) onSignedOut();
    throw error;
  }
  return data;
}

export const disk = (name) => `/v1/disks/${encodeURIComponent(name)}`;
