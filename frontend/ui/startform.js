// The start form and the Stop, Pause and Leave buttons. The key and URL live in this tab's
// sessionStorage so a reload keeps them; the key goes only into the `apikey` header, never a URL.

import { api, ApiError } from "./api.js";
import { describe } from "./banners.js";

const KEY_STORAGE = "rtdetr-viewer.apiKey";
const URL_STORAGE = "rtdetr-viewer.streamUrl";

function list(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

function numberOr(input, fallback) {
  const value = input.valueAsNumber;
  return Number.isFinite(value) ? value : fallback;
}

export class StartForm {
  /**
   * el: {form, key, url, confidence, classes, camera, alertEnabled, alertClasses, alertMin, alertCooldown,
   * start, stop, pause, detach}; the controller joins and leaves sessions, the list is refreshed after a start.
   */
  constructor(el, { store, controller, banners, sessions }) {
    this.el = el;
    Object.assign(this, { store, controller, banners, sessions });
    el.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
    el.url.value = sessionStorage.getItem(URL_STORAGE) || el.url.value;
    el.key.addEventListener("change", () => sessionStorage.setItem(KEY_STORAGE, el.key.value));
    el.form.addEventListener("submit", (event) => this.start(event));
    el.stop.addEventListener("click", () => this.stop());
    el.pause.addEventListener("click", () => this.togglePause());
    el.detach.addEventListener("click", () => this.detach());
  }

  body() {
    const el = this.el;
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

  async start(event) {
    event.preventDefault();
    const { store, banners } = this;
    if (store.phase !== "idle") return;
    banners.clearError();
    banners.showNotice(null);
    const key = this.el.key.value;
    sessionStorage.setItem(KEY_STORAGE, key);
    sessionStorage.setItem(URL_STORAGE, this.el.url.value.trim());
    store.starting();
    store.notify();
    try {
      const started = await api.start(key, this.body());
      banners.showNotice(started.message || null);
      this.controller.attach({ ...started, state: started.status });
      this.sessions.refresh();
    } catch (err) {
      store.setPhase("idle");
      banners.showError(describe(err));
      store.notify();
    }
  }

  async stop() {
    const { store, banners } = this;
    const session = store.session;
    if (!session) return;
    banners.clearError();
    const previous = store.phase;
    store.setPhase("stopping");
    store.notify();
    // While the request runs the session may end by itself or the person may watch another one:
    // only the session still shown is finished or restored here.
    const current = () => store.session === session;
    try {
      const answer = await api.stop(this.el.key.value, session.id);
      banners.showNotice(answer && answer.message ? answer.message : "Session stopped.");
      if (current()) this.controller.finish(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        if (current()) this.controller.finish(null); // already gone: nothing left to stop
        return;
      }
      banners.showError(describe(err));
      if (current()) store.setPhase(previous);
      store.notify();
    }
  }

  togglePause() {
    const store = this.store;
    const action = store.paused ? "resume" : "pause";
    if (this.controller.send({ type: "control", action })) {
      store.setPaused(!store.paused); // the next status message confirms it
      store.notify();
    }
  }

  detach() {
    this.banners.showNotice("Left the session; it keeps running on the service.");
    this.controller.finish(null);
  }

  /** Which buttons can be pressed now; follows every change of the store. */
  renderButtons() {
    const { store, el } = this;
    const attached = store.phase === "live" || store.phase === "connecting";
    el.start.disabled = store.phase !== "idle";
    el.stop.disabled = !attached;
    el.detach.disabled = !attached;
    el.pause.disabled = store.phase !== "live" || store.retryAt !== null;
    el.pause.textContent = store.paused ? "Resume" : "Pause";
    el.pause.setAttribute("aria-pressed", String(store.paused));
  }
}
