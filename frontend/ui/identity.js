// One object's journey: the events that carry its global_id (Re-ID linked them across cameras), oldest
// first, each with its camera, time, snapshot and clip. Snapshots need the key header, so each is
// fetched and shown through a blob: URL, every one revoked when the dialog closes.

import { api } from "./api.js";

function clock(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString([], { hour12: false }) : "?";
}

function where(event) {
  return event.camera || `session ${String(event.session_id).slice(0, 8)}`;
}

export class IdentityView {
  /** el: {dialog, title, status, list}; onPlay(event, title) plays an event's clip. */
  constructor(el, { getKey, describe, onPlay }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.onPlay = onPlay;
    this.urls = [];
    this.generation = 0;
    el.dialog.addEventListener("close", () => this.clear());
  }

  async open(globalId) {
    this.clear();
    const generation = this.generation;
    this.el.title.textContent = "Same object across cameras";
    this.el.status.textContent = "Loading…";
    if (!this.el.dialog.open) this.el.dialog.showModal();
    try {
      const answer = await api.identity(this.getKey(), globalId);
      if (generation !== this.generation) return;
      const events = Array.isArray(answer?.events) ? answer.events : [];
      const cameras = new Set(events.map(where));
      this.el.status.textContent =
        `${events.length} appearance${events.length === 1 ? "" : "s"} on ${cameras.size} ` +
        `camera${cameras.size === 1 ? "" : "s"}${answer?.next_cursor ? " (the first 100)" : ""}`;
      this.el.list.replaceChildren(...events.map((event) => this.item(event, generation)));
    } catch (err) {
      if (generation === this.generation) this.el.status.textContent = `Could not load it: ${this.describe(err)}`;
    }
  }

  item(event, generation) {
    const li = document.createElement("li");
    li.dataset.eventId = String(event.id);
    const label = `${event.label || "object"} on ${where(event)}`;
    if (event.has_snapshot && event.snapshot_url) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = `${label} snapshot`;
      li.append(img);
      this.snapshot(event.snapshot_url, img, generation);
    }
    const text = document.createElement("div");
    const what = document.createElement("strong");
    what.textContent = label;
    const time = document.createElement("time");
    time.textContent = clock(event.start_time);
    text.append(what, " ", time);
    if (event.has_clip) {
      const play = document.createElement("button");
      play.type = "button";
      play.className = "play-btn";
      play.textContent = "Play clip";
      play.setAttribute("aria-label", `Play the clip of ${label}`);
      play.addEventListener("click", () => this.onPlay(event, label));
      text.append(play);
    }
    li.append(text);
    return li;
  }

  async snapshot(snapshotUrl, img, generation) {
    try {
      const blob = await api.snapshot(this.getKey(), snapshotUrl);
      if (generation !== this.generation) return;
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      img.src = url;
    } catch {
      img.replaceWith(Object.assign(document.createElement("span"), { className: "thumb none", textContent: "no image" }));
    }
  }

  clear() {
    this.generation += 1;
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.el.list.replaceChildren();
  }
}
