// Viewer page: start or attach to a session, show its live annotated video, numbers, alerts,
// zones and lines with their counts, the session's events and their clips, search over every camera's
// events (by words, or "similar" to one), an object's appearances across cameras, questions over the
// stored footage answered by the vision-language model, and the last minutes of a camera's recordings. This file only builds the pieces
// and wires them; each piece is one class in its own module.

import { FrameRenderer } from "./renderer.js";
import { ZonesPanel } from "./zones.js";
import { EventsPanel } from "./events.js";
import { SessionStore } from "./store.js";
import { Banners, describe } from "./banners.js";
import { AlertQueue } from "./alertqueue.js";
import { Hud } from "./hud.js";
import { SessionList } from "./sessions.js";
import { SessionController } from "./session.js";
import { StartForm } from "./startform.js";
import { ClipPlayer } from "./player.js";
import { RecentPanel } from "./recent.js";
import { SearchBox } from "./search.js";
import { IdentityView } from "./identity.js";
import { AskBox } from "./ask.js";

const HUD_INTERVAL_MS = 250;

const $ = (id) => document.getElementById(id);
/** {name: element id} -> {name: element}. */
const byId = (ids) => Object.fromEntries(Object.entries(ids).map(([name, id]) => [name, $(id)]));
const keyInput = $("api-key");
const getKey = () => keyInput.value;

const store = new SessionStore();
const banners = new Banners(byId({
  warning: "warning-banner", warningText: "warning-text", error: "error-banner", errorText: "error-text",
  errorDismiss: "error-dismiss", notice: "notice",
}));
const renderer = new FrameRenderer($("video"), {
  onResize: (width, height) => controller.setAspect(width, height),
  onPaint: () => alertQueue.flush(),
});
const alertQueue = new AlertQueue(byId({
  toasts: "toasts", log: "alert-log", count: "alert-count", clear: "clear-alerts",
}), { store, renderer });
const zones = new ZonesPanel(byId({
  stage: "stage", layer: "zones-layer", drawZone: "draw-zone", drawLine: "draw-line", draft: "zone-draft",
  hint: "zone-hint", name: "zone-name", alert: "zone-alert", alertLabel: "zone-alert-label", finish: "zone-finish",
  cancel: "zone-cancel", error: "zone-error", list: "zones-list",
}), { getKey, describe });
const player = new ClipPlayer(byId({
  dialog: "clip-dialog", title: "clip-title", stage: "clip-stage", video: "clip-video", overlay: "clip-overlay",
  status: "clip-status", download: "clip-download",
}), { getKey, describe });
const recent = new RecentPanel(byId({
  form: "recent-form", camera: "recent-camera", cameras: "recent-cameras", minutes: "recent-minutes",
  error: "recent-error",
}), { player });
const identity = new IdentityView(byId({
  dialog: "identity-dialog", title: "identity-title", status: "identity-status", list: "identity-list",
}), { getKey, describe, onPlay: (event, name) => player.playEvent(event, name) });
const events = new EventsPanel(byId({
  list: "events-list", label: "events-label", status: "events-status", open: "events-open",
  dialog: "snapshot-dialog", dialogImage: "snapshot-image", dialogTitle: "snapshot-title",
  dialogCaption: "snapshot-caption",
}), {
  getKey, describe, onPlay: (event, name) => player.playEvent(event, name), onIdentity: (id) => identity.open(id),
});
new SearchBox(byId({
  form: "search-form", text: "search-text", submit: "search-btn", clear: "search-clear", notice: "search-notice",
}), { getKey, describe, events });
new AskBox(byId({
  form: "ask-form", text: "ask-text", submit: "ask-btn", notice: "ask-notice", status: "ask-status", list: "ask-list",
}), { getKey, describe, onPlay: (event, name) => player.playEvent(event, name) });
const hud = new Hud(byId({
  badge: "state-badge", overlay: "overlay", state: "hud-state", backend: "hud-backend",
  sourceFps: "hud-source-fps", inferenceFps: "hud-inference-fps", shownFps: "hud-shown-fps",
  latency: "hud-latency", serverLatency: "hud-server-latency", dropped: "hud-dropped", frames: "hud-frames",
  viewers: "hud-viewers", reconnects: "hud-reconnects", damaged: "hud-damaged", failed: "hud-failed",
  lastError: "hud-last-error", classes: "hud-classes",
}), { store, renderer, getKey });
const sessions = new SessionList(byId({ list: "sessions-list", refresh: "refresh-sessions" }), {
  store,
  getKey,
  onList: (list) => recent.suggest(list),
  onWatch(session) {
    banners.clearError();
    banners.showNotice(null);
    controller.attach(session);
  },
});
const controller = new SessionController(byId({ stage: "stage", canvas: "video" }), {
  store, renderer, zones, events, alertQueue, banners, sessions, getKey, onFinished: tick,
});
const form = new StartForm(byId({
  form: "start-form", key: "api-key", url: "stream-url", confidence: "confidence", classes: "classes",
  camera: "camera-name", alertEnabled: "alert-enabled", alertClasses: "alert-classes",
  alertMin: "alert-min-confidence", alertCooldown: "alert-cooldown",
  start: "start-btn", stop: "stop-btn", pause: "pause-btn", detach: "detach-btn",
}), { store, controller, banners, sessions });
store.subscribe(() => hud.renderState());
store.subscribe(() => form.renderButtons());

/** What moves with time: the numbers, alerts whose frame never came, the retry countdown. */
function tick() {
  hud.renderNumbers();
  alertQueue.flush(); // an alert whose frame never came gives up on time
  store.notify(); // the retry countdown and shown fps move with time
}

// Leaving the page must not leave a viewer behind on the service.
window.addEventListener("pagehide", () => controller.leave());
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && store.waitingSince !== null) store.expectFrames(); // nothing was painted while hidden
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) controller.reopen();
});

renderer.clear();
store.notify();
setInterval(tick, HUD_INTERVAL_MS);
if (getKey()) sessions.refresh();
