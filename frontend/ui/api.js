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

async function send(method, path, { key, body, signal, accept = "application/json" }) {
  const headers = { accept };
  if (key) headers.apikey = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  try {
    return await fetch(serviceUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err; // the caller gave up on purpose
    throw new ApiError("Cannot reach the service. Is it running, and was this page opened from it?", 0, "network");
  }
}

async function failure(response) {
  let data = null;
  try {
    data = JSON.parse(await response.text());
  } catch {
    data = null;
  }
  return new ApiError(errorMessage(response.status, response.statusText, data), response.status, data && data.error);
}

/** Call a control route; resolve with the parsed JSON or throw an ApiError with readable words. */
export async function request(method, path, { key, body, signal } = {}) {
  const response = await send(method, path, { key, body, signal });
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** GET an image route (it needs the key header, so no <img src>); resolve with its Blob. */
export async function requestImage(path, { key, signal } = {}) {
  const response = await send("GET", path, { key, signal, accept: "image/jpeg" });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

/** GET a video route (it needs the key header, so no <video src>); resolve with the Response once it
 * answered 2xx (its body still to read), or throw an ApiError with the service's words. */
export async function requestVideo(path, { key, signal } = {}) {
  const response = await send("GET", path, { key, signal, accept: "video/mp4" });
  if (!response.ok) throw await failure(response);
  return response;
}

const sessionPath = (sessionId) => `/api/v1/video/sessions/${encodeURIComponent(sessionId)}`;

export const api = {
  start: (key, body) => request("POST", "/api/v1/video/start", { key, body }),
  stop: (key, sessionId) => request("POST", "/api/v1/video/stop", { key, body: { session_id: sessionId } }),
  sessions: (key) => request("GET", "/api/v1/video/sessions", { key }),
  zones: (key, sessionId) => request("GET", `${sessionPath(sessionId)}/zones`, { key }),
  putZones: (key, sessionId, zones) => request("PUT", `${sessionPath(sessionId)}/zones`, { key, body: zones }),
  /** Events, newest first; filters ({session_id, label, ...}) with empty values are left out. */
  events: (key, filters, signal) => {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(filters)) {
      if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
    }
    return request("GET", `/api/v1/events?${query}`, { key, signal });
  },
  /** Events that look like words ({q}) or like an event ({similar_to}), closest first, with scores. */
  search: (key, params, signal) => {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
    }
    return request("GET", `/api/v1/events/search?${query}`, { key, signal });
  },
  /** One object's appearances across cameras (its global_id), oldest first. */
  identity: (key, globalId, signal) =>
    request("GET", `/api/v1/identities/${encodeURIComponent(globalId)}?limit=100`, { key, signal }),
  /** A yes/no question over stored events ({question, top_k, ...}): candidates checked by the VLM, ranked. */
  ask: (key, body, signal) => request("POST", "/api/v1/ask", { key, body, signal }),
  /** /ready (no key): whether search works now, in its `search` field. */
  ready: () => request("GET", "/ready"),
  snapshot: (key, snapshotUrl, signal) => requestImage(snapshotUrl, { key, signal }),
  track: (key, eventId, signal) => request("GET", `/api/v1/events/${encodeURIComponent(eventId)}/track`, { key, signal }),
  /** An event's clip: clip_url as the event names it, else the route every event has. */
  clip: (key, event, signal) =>
    requestVideo(event.clip_url || `/api/v1/events/${encodeURIComponent(event.id)}/clip.mp4`, { key, signal }),
  /** One MP4 of a camera's recordings between after and before (Unix seconds). */
  export: (key, { camera, after, before }, signal) => {
    const query = new URLSearchParams({ camera, after: after.toFixed(3), before: before.toFixed(3) });
    return requestVideo(`/api/v1/recordings/export.mp4?${query}`, { key, signal });
  },
};

/**
 * Read one field of /ready (`search`, `vlm`) and hand it to `show`; again every `retryMs` while it is
 * missing (the detector still loads, or the service is away) or says "loading". Returns the check, to
 * call again at once (after a 503 that says the state changed).
 */
export function watchReady(field, show, retryMs) {
  let timer = 0;
  const check = async () => {
    clearTimeout(timer);
    let status = null;
    try {
      status = (await api.ready())?.[field] ?? null;
    } catch {
      status = null;
    }
    if (!status || status.state === "loading") timer = setTimeout(check, retryMs);
    if (status) show(status);
  };
  check();
  return check;
}
