// HTTP control calls. The key travels only in the `apikey` header, never in a URL.

/** An HTTP failure carrying words a person can act on (the service's `detail`). */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Resolve a service path against the page, so the page also works under a gateway prefix. */
export function serviceUrl(path) {
  return new URL(path.replace(/^\//, ""), new URL(".", document.baseURI));
}

/** WebSocket URL for a websocket_path: same host, ws:// or wss:// matching the page, binary frames. */
export function websocketUrl(websocketPath) {
  const url = serviceUrl(websocketPath);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("format", "binary");
  return url.href;
}

function errorMessage(status, statusText, body) {
  const detail = body && (body.detail ?? body.message);
  if (typeof detail === "string" && detail) return detail;
  // FastAPI's own validation errors are a list of {loc, msg}.
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => (d.loc ? `${d.loc.slice(1).join(".")}: ${d.msg}` : d.msg)).join("; ");
  }
  if (status === 401 || status === 403) return "The API key was not accepted.";
  return `The service answered ${status} ${statusText}`.trim();
}

/** Call a control route; resolve with the parsed JSON or throw an ApiError with readable words. */
export async function request(method, path, { key, body } = {}) {
  const headers = { accept: "application/json" };
  if (key) headers.apikey = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(serviceUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError("Cannot reach the service. Is it running, and was this page opened from it?", 0, "network");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(errorMessage(response.status, response.statusText, data), response.status, data && data.error);
  }
  return data;
}

export const api = {
  start: (key, body) => request("POST", "/api/v1/video/start", { key, body }),
  stop: (key, sessionId) => request("POST", "/api/v1/video/stop", { key, body: { session_id: sessionId } }),
  sessions: (key) => request("GET", "/api/v1/video/sessions", { key }),
};
