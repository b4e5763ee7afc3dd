// Viewer page: start or attach to a session, show its live annotated video, numbers, alerts,
// zones and lines with their counts, and the session's events.

import { api, ApiError, websocketUrl } from "./api.js";
import { Banners, describe } from "./banners.js";
import { StreamConnection } from "./stream.js";
import { FrameRenderer } from "./renderer.js";
import { AlertQueue } from "./alertqueue.js";
import { Hud } from "./hud.js";
import { SessionList } from "./sessions.js";
import { ZonesPanel } from "./zones.js";
import { EventsPanel } from "./events.js";

const KEY_STORAGE = "rtdetr-viewer.apiKey";
const URL_STORAGE = "rtdetr-viewer.streamUrl";
const HUD_INTERVAL_MS = 250;

const $ = (id) => document.getElementById(id);
const el = {
  form: $("start-form"),
  key: $("api-key"),
  url: $("stream-url"),
  confidence: $("confidence"),
  classes: $("classes"),
  alertEnabled: $("alert-enabled"),
  alertClasses: $("alert-classes"),
  alertMin: $("alert-min-confidence"),
  alertCooldown: $("alert-cooldown"),
  camera: $("camera-name"),
  start: $("start-btn"),
  stop: $("stop-btn"),
  pause: $("pause-btn"),
  detach: $("detach-btn"),
  stage: $("stage"),
  canvas: $("video"),
};

const banners = new Banners({
  warning: $("warning-banner"),
  warningText: $("warning-text"),
  error: $("error-banner"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
  notice: $("notice"),
});
const renderer = new FrameRenderer(el.canvas, { onResize: setAspect, onPaint: () => alertQueue.flush() });
const zones = new ZonesPanel({
  stage: el.stage,
  layer: $("zones-layer"),
  drawZone: $("draw-zone"),
  drawLine: $("draw-line"),
  draft: $("zone-draft"),
  hint: $("zone-hint"),
  name: $("zone-name"),
  alert: $("zone-alert"),
  alertLabel: $("zone-alert-label"),
  finish: $("zone-finish"),
  cancel: $("zone-cancel"),
  error: $("zone-error"),
  list: $("zones-list"),
}, { getKey: () => el.key.value, describe });
const events = new EventsPanel({
  list: $("events-list"),
  label: $("events-label"),
  status: $("events-status"),
  open: $("events-open"),
  dialog: $("snapshot-dialog"),
  dialogImage: $("snapshot-image"),
  dialogTitle: $("snapshot-title"),
  dialogCaption: $("snapshot-caption"),
}, { getKey: () => el.key.value, describe });

// What the page shows. phase: idle | starting | connecting | live | stopping.
const view = {
  phase: "idle",
  session: null, // {id, stream, model}
  conn: null,
  serverState: null,
  paused: false,
  stats: null,
  lastError: null,
  lastErrorAt: null, // when this page saw last_error change; null: it was there before we joined
  publishErrorRises: 0, // status messages in a row in which publish_errors grew
  waitingSince: null, // since when frames are expected (joined, resumed, camera back, tab shown)
  retryAt: null, // set while the WebSocket itself is reconnecting
  retryReason: null, // the service's words when it refused this viewer for now (too many viewers)
  framesReceived: 0,
  drawingOff: false,
  classCounts: new Map(), // class name -> {count, tracks: [track ids]}
  endedReason: null,
};

const alertQueue = new AlertQueue({
  toasts: $("toasts"),
  log: $("alert-log"),
  count: $("alert-count"),
  clear: $("clear-alerts"),
}, { store: view, renderer });
const hud = new Hud({
  badge: $("state-badge"),
  overlay: $("overlay"),
  state: $("hud-state"),
  backend: $("hud-backend"),
  sourceFps: $("hud-source-fps"),
  inferenceFps: $("hud-inference-fps"),
  shownFps: $("hud-shown-fps"),
  latency: $("hud-latency"),
  serverLatency: $("hud-server-latency"),
  dropped: $("hud-dropped"),
  frames: $("hud-frames"),
  viewers: $("hud-viewers"),
  reconnects: $("hud-reconnects"),
  damaged: $("hud-damaged"),
  failed: $("hud-failed"),
  lastError: $("hud-last-error"),
  classes: $("hud-classes"),
}, { store: view, renderer, getKey: () => el.key.value });
const sessions = new SessionList({ list: $("sessions-list"), refresh: $("refresh-sessions") }, {
  store: view,
  getKey: () => el.key.value,
  onWatch(session) {
    banners.clearError();
    banners.showNotice(null);
    attach(session);
  },
});

// ---------- state and rendering ----------

function render() {
  hud.renderState();
  const attached = view.phase === "live" || view.phase === "connecting";
  el.start.disabled = view.phase !== "idle";
  el.stop.disabled = !attached;
  el.detach.disabled = !attached;
  el.pause.disabled = view.phase !== "live" || view.retryAt !== null;
  el.pause.textContent = view.paused ? "Resume" : "Pause";
  el.pause.setAttribute("aria-pressed", String(view.paused));
}

function renderHud() {
  hud.renderNumbers();
  alertQueue.flush(); // an alert whose frame never came gives up on time
  render(); // the retry countdown and shown fps move with time
}

function setAspect(width, height) {
  if (!(width > 0 && height > 0)) return;
  el.stage.style.setProperty("--ar", String(width / height));
  if (renderer.painted === 0 && (el.canvas.width !== width || el.canvas.height !== height)) {
    el.canvas.width = width;
    el.canvas.height = height;
    renderer.clear();
  }
}

// ---------- the live connection ----------

function attach(session) {
  leave();
  view.session = {
    id: session.session_id,
    websocketPath: session.websocket_path,
    stream: session.stream || null,
    model: session.model || null,
  };
  view.phase = "connecting";
  view.serverState = session.state || session.status || null;
  view.paused = Boolean(session.paused);
  view.stats = session.stats || null;
  view.lastError = session.last_error || null;
  view.lastErrorAt = null;
  view.publishErrorRises = 0;
  view.waitingSince = null;
  view.retryReason = null;
  view.endedReason = null;
  banners.showModelWarning(session.model);
  if (session.stream) setAspect(session.stream.width, session.stream.height);
  renderer.reset();
  renderer.clear();
  zones.setSession(session.session_id, session.zones, session.stream);
  events.start(session.session_id);

  const conn = new StreamConnection(websocketUrl(session.websocket_path), {
    onOpen() {
      if (view.conn !== conn) return;
      view.retryAt = null;
      view.retryReason = null;
      expectFrames();
      if (view.phase === "connecting") {
        view.phase = "live";
        sessions.refresh(); // the list now counts this viewer
      }
      render();
    },
    onFrame(header, jpeg) {
      if (view.conn !== conn) return;
      view.framesReceived += 1;
      const counts = new Map();
      for (const d of header.detections || []) {
        const entry = counts.get(d.class_name) || { count: 0, tracks: [] };
        entry.count += 1;
        if (d.track_id !== null && d.track_id !== undefined) entry.tracks.push(d.track_id);
        counts.set(d.class_name, entry);
      }
      for (const entry of counts.values()) entry.tracks.sort((a, b) => a - b);
      view.classCounts = counts;
      view.drawingOff = !jpeg;
      if (jpeg) renderer.push(jpeg, header);
    },
    onMessage(message) {
      if (view.conn !== conn) return;
      handleMessage(message);
    },
    onRetry(delay, { refused, reason }) {
      if (view.conn !== conn) return;
      view.retryAt = Date.now() + delay;
      view.retryReason = refused ? reason : null;
      render();
    },
    onEnd({ reason, final }) {
      if (view.conn !== conn) return;
      if (final) banners.showError(reason);
      finishSession(final ? null : `Session ended: ${reason}`);
    },
  });
  view.conn = conn;
  conn.open();
  render();
}

function handleMessage(message) {
  switch (message.type) {
    case "stream_info":
      view.session.stream = { width: message.width, height: message.height, fps: message.fps, codec: message.codec };
      if (message.model) view.session.model = message.model;
      setAspect(message.width, message.height);
      updateState(message);
      banners.showModelWarning(message.model, message.warning);
      zones.setStreamSize(view.session.stream);
      if (message.zones) zones.setZones(message.zones);
      break;
    case "zones":
      zones.setZones(message.zones);
      break;
    case "status": {
      updateState(message);
      const before = view.stats ? view.stats.publish_errors : undefined;
      const after = message.stats ? message.stats.publish_errors : undefined;
      view.publishErrorRises = typeof before === "number" && after > before ? view.publishErrorRises + 1 : 0;
      view.stats = message.stats || view.stats;
      if (message.counts) zones.setCounts(message.counts);
      events.setOpen(message.events_open);
      const error = message.last_error || null;
      if (error !== view.lastError) {
        view.lastError = error;
        view.lastErrorAt = error ? Date.now() : null;
      }
      break;
    }
    case "alert":
      alertQueue.queue(message);
      events.refreshSoon(); // an alert usually opens or updates an event
      break;
    case "session_stopped":
      break; // the close that follows ends the view (StreamConnection.onEnd)
    case "error":
      if (message.detail) banners.showError(message.detail);
      break;
    default:
      break;
  }
  render();
}

/** State and pause from stream_info or status; frames are expected again once it runs unpaused. */
function updateState(message) {
  const wasWaiting = view.paused || view.serverState !== "running";
  view.serverState = message.state || view.serverState;
  view.paused = Boolean(message.paused);
  if (wasWaiting && !view.paused && view.serverState === "running") expectFrames();
}

function expectFrames() {
  view.waitingSince = Date.now();
}

// ---------- leaving ----------

/** Stop watching without stopping the session (idempotent). */
function leave() {
  if (view.conn) view.conn.close();
  view.conn = null;
  view.retryAt = null;
  view.retryReason = null;
  alertQueue.flush(true);
}

function finishSession(reason) {
  leave();
  renderer.reset();
  renderer.clear(); // the last frame must not stay under the idle overlay
  view.phase = "idle";
  view.session = null;
  view.serverState = null;
  view.paused = false;
  view.stats = null;
  view.lastError = null;
  view.lastErrorAt = null;
  view.publishErrorRises = 0;
  view.waitingSince = null;
  view.framesReceived = 0;
  view.classCounts = new Map();
  view.drawingOff = false;
  view.endedReason = reason;
  zones.reset();
  events.stop();
  renderHud();
  if (el.key.value) sessions.refresh();
}

// ---------- controls ----------

function list(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

function numberOr(input, fallback) {
  const value = input.valueAsNumber;
  return Number.isFinite(value) ? value : fallback;
}

function startBody() {
  const body = { stream_url: el.url.value.trim(), enable_drawing: true };
  const confidence = numberOr(el.confidence, null);
  if (confidence !== null) body.confidence_threshold = confidence;
  const classes = list(el.classes.value);
  if (classes.length) body.classes = classes;
  const camera = el.camera.value.trim();
  if (camera) body.camera = camera;
  body.alert = el.alertEnabled.checked
    ? {
        classes: list(el.alertClasses.value),
        min_confidence: numberOr(el.alertMin, 0.5),
        cooldown_s: numberOr(el.alertCooldown, 10),
      }
    : null;
  return body;
}

async function start(event) {
  event.preventDefault();
  if (view.phase !== "idle") return;
  banners.clearError();
  banners.showNotice(null);
  const key = el.key.value;
  sessionStorage.setItem(KEY_STORAGE, key);
  sessionStorage.setItem(URL_STORAGE, el.url.value.trim());
  view.phase = "starting";
  view.endedReason = null;
  render();
  try {
    const started = await api.start(key, startBody());
    banners.showNotice(started.message || null);
    attach({ ...started, state: started.status });
    sessions.refresh();
  } catch (err) {
    view.phase = "idle";
    banners.showError(describe(err));
    render();
  }
}

async function stop() {
  const session = view.session;
  if (!session) return;
  banners.clearError();
  const previous = view.phase;
  view.phase = "stopping";
  render();
  // While the request runs the session may end by itself or the person may watch another one:
  // only the session still shown is finished or restored here.
  const current = () => view.session === session;
  try {
    const answer = await api.stop(el.key.value, session.id);
    banners.showNotice(answer && answer.message ? answer.message : "Session stopped.");
    if (current()) finishSession(null);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      if (current()) finishSession(null); // already gone: nothing left to stop
      return;
    }
    banners.showError(describe(err));
    if (current()) view.phase = previous;
    render();
  }
}

function togglePause() {
  const action = view.paused ? "resume" : "pause";
  if (view.conn && view.conn.send({ type: "control", action })) {
    view.paused = !view.paused; // the next status message confirms it
    render();
  }
}

function detach() {
  banners.showNotice("Left the session; it keeps running on the service.");
  finishSession(null);
}

// ---------- wiring ----------

el.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
el.url.value = sessionStorage.getItem(URL_STORAGE) || el.url.value;
el.key.addEventListener("change", () => sessionStorage.setItem(KEY_STORAGE, el.key.value));
el.form.addEventListener("submit", start);
el.stop.addEventListener("click", stop);
el.pause.addEventListener("click", togglePause);
el.detach.addEventListener("click", detach);
// Leaving the page must not leave a viewer behind on the service.
window.addEventListener("pagehide", leave);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && view.waitingSince !== null) expectFrames(); // nothing was painted while hidden
});
window.addEventListener("pageshow", (event) => {
  // Back from the back/forward cache: the socket was closed on pagehide, so open it again.
  if (event.persisted && view.session && !view.conn) {
    const { id, websocketPath, stream, model } = view.session;
    attach({ session_id: id, websocket_path: websocketPath, stream, model });
  }
});

renderer.clear();
render();
setInterval(renderHud, HUD_INTERVAL_MS);
if (el.key.value) sessions.refresh();
