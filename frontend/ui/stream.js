// One viewer's WebSocket: binary frame_result messages, JSON text for the rest, reconnect with backoff.

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;
// A viewer the service accepted is only trusted once it has stayed this long; a socket that is
// accepted and then closed at once (a refusal) must not reset the backoff.
const STABLE_MS = 3000;
// Close codes after which retrying cannot help: wrong token, unknown session, bad request, policy violation.
const FINAL_CODES = new Map([
  [4400, "The service refused this viewer's request."],
  [4401, "The viewer token was refused; start or attach to the session again."],
  [4404, "The session no longer exists."],
  [1008, "The service refused this viewer."],
]);
// Close codes that say "not now": a place may free up, so ask again, but only now and then.
const SLOW_RETRY_CODES = new Map([[4429, "Too many viewers on this session."]]);
const SLOW_RETRY_MS = 20000;

const utf8 = new TextDecoder();

/** Split a binary frame_result: 4-byte big-endian header length, JSON header, JPEG bytes. */
export function parseBinaryFrame(buffer) {
  const view = new DataView(buffer);
  const headerLength = view.getUint32(0, false);
  const header = JSON.parse(utf8.decode(new Uint8Array(buffer, 4, headerLength)));
  const jpeg = new Uint8Array(buffer, 4 + headerLength);
  return { header, jpeg: jpeg.byteLength ? jpeg : null };
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * A viewer connection that keeps itself open until close() or until the session ends.
 * handlers: onOpen() (the service accepted this viewer: stream_info arrived),
 *           onFrame(header, jpegBytes|null), onMessage(msg),
 *           onRetry(delayMs, {code, refused, reason}), onEnd({reason, final, code}).
 * A refusal that may pass (4429, too many viewers) retries every SLOW_RETRY_MS with refused=true.
 */
export class StreamConnection {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = 0;
    this.stableTimer = 0;
    this.closed = false;
    this.sessionEnded = null;
  }

  open() {
    this.closed = false;
    this.connect();
  }

  connect() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.finish({ reason: `Cannot open the live connection: ${err.message}`, final: true });
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    // No onopen: the service accepts every socket before it decides, so only stream_info says "in".
    ws.onmessage = (event) => {
      if (ws === this.ws) this.receive(event.data);
    };
    ws.onclose = (event) => this.closedByPeer(ws, event);
  }

  receive(data) {
    if (typeof data !== "string") {
      let frame;
      try {
        frame = parseBinaryFrame(data);
      } catch {
        return; // a malformed message must not kill the viewer
      }
      this.handlers.onFrame?.(frame.header, frame.jpeg);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === "frame_result") {
      // The JSON variant, should a server or proxy not honour format=binary.
      const jpeg = message.annotated_frame ? base64Bytes(message.annotated_frame) : null;
      delete message.annotated_frame;
      this.handlers.onFrame?.(message, jpeg);
      return;
    }
    if (message.type === "stream_info") {
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => {
        this.stableTimer = 0;
        this.attempt = 0;
      }, STABLE_MS);
      this.handlers.onOpen?.();
    }
    if (message.type === "session_stopped") {
      this.sessionEnded = message.reason || "The session was stopped.";
    }
    this.handlers.onMessage?.(message);
  }

  closedByPeer(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearTimeout(this.stableTimer);
    this.stableTimer = 0;
    if (this.closed) return;
    if (this.sessionEnded !== null) {
      this.finish({ reason: this.sessionEnded, final: false });
      return;
    }
    if (FINAL_CODES.has(event.code)) {
      this.finish({ reason: event.reason || FINAL_CODES.get(event.code), final: true, code: event.code });
      return;
    }
    const refused = SLOW_RETRY_CODES.has(event.code);
    // Capped exponential backoff with jitter, so many viewers do not return in lockstep.
    const base = refused ? SLOW_RETRY_MS : Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    const reason = refused ? event.reason || SLOW_RETRY_CODES.get(event.code) : event.reason || null;
    this.handlers.onRetry?.(delay, { code: event.code, refused, reason });
    this.timer = setTimeout(() => {
      this.timer = 0;
      if (!this.closed) this.connect();
    }, delay);
  }

  finish(info) {
    this.closed = true;
    this.handlers.onEnd?.(info);
  }

  /** Send a JSON message; false when the socket is not open. */
  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Close for good (idempotent); no reconnect follows. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.stableTimer);
    this.timer = 0;
    this.stableTimer = 0;
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "viewer left");
  }
}
