// The state badge, the words over the video and the live numbers under it: when there is no picture
// a person must read why (camera lost, retrying, stalled, paused) instead of staring at a black box.

const MAX_CLASS_CHIPS = 12; // a random-weight model at threshold 0 finds all 80 classes
const MAX_TRACK_IDS = 4; // per class chip; the rest are counted
const STALL_MS = 4000; // a running session that paints nothing this long gets an explanation
const RECENT_ERROR_MS = 30000;
const PRECISION = { float32: "fp32", bfloat16: "bf16", float16: "fp16" };

function seconds(ms) {
  return Math.max(0, Math.ceil(ms / 1000));
}

function fixed(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// "openvino bf16, 2 threads": where the network runs, as the service chose it (the reason on hover).
function backendText(model) {
  if (!model || !model.backend) return ["–", ""];
  const parts = [model.backend, PRECISION[model.dtype] || model.dtype].filter(Boolean).join(" ");
  const threads = typeof model.cpu_threads === "number" ? `, ${model.cpu_threads} thread${model.cpu_threads === 1 ? "" : "s"}` : "";
  const device = model.device && model.device !== "cpu" ? ` on ${model.device}` : "";
  return [`${parts}${device}${threads}`, model.backend_reason || ""];
}

function mutedItem(text) {
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = text;
  return li;
}

export class Hud {
  /**
   * el: {badge, overlay, state, backend, sourceFps, inferenceFps, shownFps, latency, serverLatency, dropped,
   * frames, viewers, reconnects, damaged, failed, lastError, classes}; getKey() gives the API key.
   */
  constructor(el, { store, renderer, getKey }) {
    this.el = el;
    this.store = store;
    this.renderer = renderer;
    this.getKey = getKey;
  }

  stateLabel() {
    const store = this.store;
    switch (store.phase) {
      case "idle":
        return ["idle", "idle"];
      case "starting":
        return ["starting", "starting…"];
      case "stopping":
        return ["stopping", "stopping…"];
      default:
        break;
    }
    if (store.retryReason !== null) return ["reconnecting", "viewer refused — waiting"];
    if (store.retryAt !== null) return ["reconnecting", "connection lost — retrying"];
    if (store.phase === "connecting") return ["connecting", "connecting…"];
    if (store.serverState === "reconnecting") return ["reconnecting", "camera lost — reconnecting"];
    if (store.serverState === "moving") return ["moving", "moving to another replica"];
    if (store.serverState === "failed") return ["failed", "failed"];
    if (store.paused) return ["paused", "paused"];
    return [store.serverState || "running", store.serverState || "running"];
  }

  /** What covers the video, as [text or null, warn]. */
  overlay() {
    const store = this.store;
    const renderer = this.renderer;
    if (store.phase === "idle") {
      if (store.endedReason) return [store.endedReason, false];
      return [this.getKey() ? "Enter a stream URL and press Start, or watch a running session." :
        "Enter a key and a stream URL, then press Start.", false];
    }
    if (store.phase === "starting") return ["Opening the stream…", false];
    if (store.phase === "stopping") return ["Stopping…", false];
    if (store.retryAt !== null) {
      const wait = seconds(store.retryAt - Date.now());
      if (store.retryReason !== null) {
        return [`${store.retryReason}\nAsking again${wait ? ` in ${wait} s` : ""}; press Leave to give up.`, true];
      }
      return [`Connection to the service lost — retrying${wait ? ` in ${wait} s` : ""}…`, true];
    }
    if (store.phase === "connecting") return ["Connecting to the live view…", false];
    if (store.serverState === "reconnecting") {
      return [`Camera lost — reconnecting…${store.lastError ? `\n${store.lastError}` : ""}`, true];
    }
    if (store.serverState === "moving") {
      const why = store.lastError ? `\n${store.lastError}` : "";
      return [`Moving to another replica — the picture comes back by itself…${why}`, true];
    }
    if (store.serverState === "failed") return [store.lastError || "The session failed.", true];
    if (store.paused) return ["Paused", false];
    if (store.drawingOff) return ["Drawing is off for this session: numbers and alerts only.", false];
    if (store.publishErrorRises >= 2) {
      return [`The service keeps failing to publish frames (they are skipped).\n${store.lastError || ""}`.trim(), true];
    }
    const quietMs = Date.now() - Math.max(renderer.lastPaintAt || 0, store.waitingSince || 0);
    if (store.waitingSince !== null && quietMs >= STALL_MS) {
      const lines = [renderer.painted === 0 ? `No picture after ${seconds(quietMs)} s.` :
        `No new picture for ${seconds(quietMs)} s.`];
      if (renderer.decodeErrors) lines.push(`This page could not decode ${renderer.decodeErrors} frame(s).`);
      if (store.lastError) lines.push(`Service: ${store.lastError}`);
      else if (!renderer.decodeErrors) lines.push(store.framesReceived ? "Frames arrive but none could be shown yet." :
        "The service has sent no frames yet.");
      return [lines.join("\n"), true];
    }
    if (renderer.painted === 0) return ["Waiting for the first frame…", false];
    return [null, false];
  }

  /** The badge, the state line and the overlay; they follow every change of the store. */
  renderState() {
    const [state, label] = this.stateLabel();
    this.el.badge.dataset.state = state;
    this.el.badge.textContent = label;
    this.el.state.textContent = label;

    const [text, warn] = this.overlay();
    this.el.overlay.hidden = text === null;
    this.el.overlay.textContent = text || "";
    this.el.overlay.classList.toggle("warn", warn);
  }

  /** The numbers, the last error and the class chips; they move with time, so they are redrawn on a tick. */
  renderNumbers() {
    const store = this.store;
    const renderer = this.renderer;
    const s = store.stats || {};
    const h = this.el;
    const [backend, reason] = store.phase === "idle" ? ["–", ""] : backendText(store.session && store.session.model);
    h.backend.textContent = backend;
    h.backend.title = reason;
    h.sourceFps.textContent = fixed(s.source_fps);
    h.inferenceFps.textContent = fixed(s.inference_fps);
    h.shownFps.textContent = store.phase === "idle" ? "–" : String(renderer.shownFps());
    h.latency.textContent = renderer.latencyMs === null ? "–" : `${Math.round(renderer.latencyMs)} ms`;
    const lat = s.latency_ms || {};
    h.serverLatency.textContent = typeof lat.p50 === "number" ? `${fixed(lat.p50, 0)} / ${fixed(lat.p99, 0)} ms` : "–";
    h.dropped.textContent = `${s.dropped_frames ?? "–"} / ${renderer.dropped}`;
    h.frames.textContent = String(store.framesReceived);
    h.viewers.textContent = s.viewers ?? "–";
    h.reconnects.textContent = s.reconnects ?? "–";
    h.damaged.textContent = s.decode_errors ?? "–";
    h.failed.textContent = `${s.publish_errors ?? "–"} / ${renderer.decodeErrors}`;
    this.renderLastError();
    this.renderClasses();
  }

  renderLastError() {
    const store = this.store;
    const box = this.el.lastError;
    if (store.phase === "idle" || !store.lastError) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    const when = store.lastErrorAt === null ? "before you joined" :
      new Date(store.lastErrorAt).toLocaleTimeString([], { hour12: false });
    box.textContent = `Last error (${when}): ${store.lastError}`;
    box.classList.toggle("recent", store.lastErrorAt !== null && Date.now() - store.lastErrorAt < RECENT_ERROR_MS);
    box.hidden = false;
  }

  renderClasses() {
    const items = [...this.store.classCounts.entries()]
      .sort((a, b) => b[1].count - a[1].count || a[0].localeCompare(b[0]));
    const nodes = items.slice(0, MAX_CLASS_CHIPS).map(([name, { count, tracks }]) => {
      const li = document.createElement("li");
      const b = document.createElement("b");
      b.textContent = String(count);
      li.append(`${name} `, b);
      if (tracks.length) {
        const ids = document.createElement("small");
        ids.className = "tracks";
        const more = tracks.length - MAX_TRACK_IDS;
        const shown = tracks.slice(0, MAX_TRACK_IDS).map((t) => `#${t}`).join(" ");
        ids.textContent = ` ${shown}${more > 0 ? ` +${more}` : ""}`;
        ids.title = "Track ids";
        li.append(ids);
      }
      return li;
    });
    if (items.length > MAX_CLASS_CHIPS) nodes.push(mutedItem(`+${items.length - MAX_CLASS_CHIPS} more classes`));
    if (!nodes.length) nodes.push(mutedItem("none"));
    this.el.classes.replaceChildren(...nodes);
  }
}
