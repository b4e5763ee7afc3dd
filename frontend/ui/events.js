// The watched session's events (one per tracked object), newest first, with snapshot thumbnails and
// what the vision-language model said of it (its description, its rules' answers), a button that plays
// the event's clip (unless the service says it has none), one that searches for
// events that look like it, and one that shows the same object on every camera (its global_id).
// A search's results (search.js) take the list's place until the person goes back to the live list.
// Snapshots need the key header, so each is fetched and shown through a blob: URL; one URL per
// listed event at most, revoked when the event leaves the list or the session is left.

import { api } from "./api.js";
import { answersElement, descriptionElement } from "./answers.js";

const POLL_MS = 3000;
const FAILED_POLL_MS = 15000; // after a failed refresh (events off, service away): ask less often
const SOON_MS = 400; // an alert asks for a refresh this soon, several alerts in a row ask once
const LIMIT = 24; // each new event costs a snapshot download

/** A Date from epoch seconds or an ISO string; null when there is none. */
function toDate(value) {
  if (typeof value === "number" && Number.isFinite(value)) return new Date(value * 1000);
  if (typeof value === "string" && value) {
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? null : date;
  }
  return null;
}

function clock(date) {
  return date ? date.toLocaleTimeString([], { hour12: false }) : "?";
}

function percent(confidence) {
  return typeof confidence === "number" ? `${Math.round(confidence * 100)}%` : "?";
}

function title(event) {
  const track = event.track_id !== null && event.track_id !== undefined ? ` #${event.track_id}` : "";
  return `${event.label || "object"}${track}`;
}

function when(event) {
  const start = toDate(event.start_time);
  const end = toDate(event.end_time);
  if (!end) {
    const seen = toDate(event.last_seen);
    return `since ${clock(start)}${seen ? `, last seen ${clock(seen)}` : ""}`;
  }
  const seconds = start ? Math.max(0, Math.round((end - start) / 1000)) : null;
  return `${clock(start)} – ${clock(end)}${seconds !== null ? ` (${seconds} s)` : ""}`;
}

export class EventsPanel {
  /** el: {list, label, status, open, dialog, dialogImage, dialogTitle, dialogCaption}; onPlay(event, title)
   * plays an event's clip; onIdentity(globalId) shows the object's appearances; onSimilar(event, title)
   * (set by the search box) searches for events that look like it. */
  constructor(el, { getKey, describe, onPlay, onIdentity }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.onPlay = onPlay;
    this.onIdentity = onIdentity;
    this.onSimilar = null;
    this.results = null; // the heading of the search results shown; null: the live list
    this.sessionId = null;
    this.generation = 0; // list requests: bumped when the filter changes or the session is left
    this.epoch = 0; // snapshot fetches: bumped only when the session is left
    this.timer = 0;
    this.soonTimer = 0;
    this.controller = null;
    this.loading = false;
    this.again = false;
    this.failed = false;
    this.labels = new Set();
    this.snapshots = new Map(); // event id -> {version, url}
    this.images = new Map(); // event id -> <img> in the current list, waiting for its snapshot
    this.shown = null; // the blob: URL in the dialog; revoked when the dialog closes if no longer listed

    el.label.addEventListener("change", () => {
      this.generation += 1; // answers for the previous filter are stale
      this.cancelRequest();
      this.loading = false;
      this.refresh();
    });
    el.dialog.addEventListener("close", () => this.dialogClosed());
    this.renderEmpty("The events of the watched session appear here.");
  }

  /** Follow a session's events from now on (polling every few seconds). */
  start(sessionId) {
    this.stop();
    this.sessionId = sessionId;
    this.el.label.disabled = false;
    if (this.results !== null) return; // search results stay until the person goes back to the list
    this.renderEmpty("Loading events…");
    this.refresh();
  }

  /** Stop following: no timer, no request, no blob URL is left behind (idempotent). */
  stop() {
    this.generation += 1;
    this.epoch += 1;
    this.sessionId = null;
    clearTimeout(this.timer);
    clearTimeout(this.soonTimer);
    this.timer = 0;
    this.soonTimer = 0;
    this.cancelRequest();
    this.loading = false;
    this.again = false;
    this.failed = false;
    if (this.el.dialog.open) this.el.dialog.close();
    for (const { url } of this.snapshots.values()) URL.revokeObjectURL(url);
    this.snapshots.clear();
    this.images.clear();
    this.labels.clear();
    this.renderLabels();
    this.el.label.disabled = true;
    this.el.open.textContent = "0 open";
    this.el.status.textContent = this.results ?? "";
    if (this.results === null) this.renderEmpty("The events of the watched session appear here.");
  }

  /** Show a search's results in place of the live list (events null: still searching). */
  showResults(events, heading) {
    this.results = heading;
    this.generation += 1; // a live list on its way is stale
    clearTimeout(this.timer);
    this.timer = 0;
    this.cancelRequest();
    this.loading = false;
    this.el.status.textContent = heading;
    if (events === null) this.renderEmpty("Searching…");
    else this.show(events, "Nothing found.");
  }

  /** Back to the watched session's live list. */
  showLive() {
    this.results = null;
    this.generation += 1;
    this.el.status.textContent = "";
    if (this.sessionId) {
      this.renderEmpty("Loading events…");
      this.refresh();
    } else {
      this.renderEmpty("The events of the watched session appear here.");
    }
  }

  /** Open events in the service's status message. */
  setOpen(count) {
    if (typeof count === "number") this.el.open.textContent = `${count} open`;
  }

  /** Something happened (an alert): refresh shortly. */
  refreshSoon() {
    if (!this.sessionId || this.soonTimer) return;
    this.soonTimer = setTimeout(() => {
      this.soonTimer = 0;
      this.refresh();
    }, SOON_MS);
  }

  cancelRequest() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async refresh() {
    if (!this.sessionId || this.results !== null) return;
    if (this.loading) {
      this.again = true; // one request at a time; the newest wish runs right after
      return;
    }
    clearTimeout(this.timer);
    this.timer = 0;
    const generation = this.generation;
    const controller = new AbortController();
    this.controller = controller;
    this.loading = true;
    this.again = false;
    try {
      const answer = await api.events(
        this.getKey(),
        { session_id: this.sessionId, label: this.el.label.value, limit: LIMIT },
        controller.signal,
      );
      if (generation !== this.generation) return;
      this.failed = false;
      this.el.status.textContent = answer && answer.next_cursor ? `Newest ${LIMIT} shown.` : "";
      this.show(Array.isArray(answer && answer.events) ? answer.events : []);
    } catch (err) {
      if (generation !== this.generation || (err && err.name === "AbortError")) return;
      this.failed = true;
      this.el.status.textContent = `Could not load the events: ${this.describe(err)}`;
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.controller = null;
        if (this.again) this.refresh();
        else if (this.sessionId) this.timer = setTimeout(() => this.refresh(), this.failed ? FAILED_POLL_MS : POLL_MS);
      }
    }
  }

  show(events, emptyText = null) {
    for (const event of events) if (event.label) this.labels.add(event.label);
    this.renderLabels();
    const listed = new Set(events.map((e) => String(e.id)));
    for (const [id, snapshot] of this.snapshots) {
      if (!listed.has(id)) this.forget(id, snapshot);
    }
    this.images.clear();
    if (!events.length) {
      this.renderEmpty(emptyText ?? (this.el.label.value ? `No ${this.el.label.value} events yet.` : "No events yet."));
      return;
    }
    // The list is rebuilt every few seconds: a thumbnail that had the keyboard focus gets it back.
    const focused = document.activeElement && document.activeElement.closest("#events-list li[data-event-id]");
    const focusedId = focused ? focused.dataset.eventId : null;
    this.el.list.replaceChildren(...events.map((event) => this.item(event)));
    if (focusedId !== null) {
      const again = [...this.el.list.children].find((li) => li.dataset.eventId === focusedId);
      const button = again && again.querySelector("button");
      if (button) button.focus({ preventScroll: true });
    }
  }

  renderLabels() {
    const select = this.el.label;
    const chosen = select.value;
    const labels = [...this.labels].sort();
    if (chosen && !labels.includes(chosen)) labels.push(chosen);
    const all = document.createElement("option");
    all.value = "";
    all.textContent = "All labels";
    select.replaceChildren(all, ...labels.map((label) => {
      const option = document.createElement("option");
      option.value = label;
      option.textContent = label;
      return option;
    }));
    select.value = chosen;
  }

  renderEmpty(message) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = message;
    this.el.list.replaceChildren(li);
  }

  item(event) {
    const id = String(event.id);
    const li = document.createElement("li");
    li.dataset.eventId = id;
    li.dataset.label = event.label || "";
    li.classList.toggle("active", Boolean(event.active));

    if (event.has_snapshot && event.snapshot_url) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb-btn";
      button.setAttribute("aria-label", `Enlarge the snapshot of ${title(event)}`);
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = `${title(event)} snapshot`;
      button.append(img);
      button.addEventListener("click", () => this.enlarge(event));
      li.append(button);
      this.thumbnail(event, img);
    } else {
      const none = document.createElement("span");
      none.className = "thumb none";
      none.textContent = "no image";
      li.append(none);
    }

    const text = document.createElement("div");
    text.className = "event-text";
    const head = document.createElement("div");
    const what = document.createElement("strong");
    what.textContent = title(event);
    const state = document.createElement("span");
    state.className = `chip ${event.active ? "chip-active" : "chip-ended"}`;
    state.textContent = event.active ? "active" : "ended";
    head.append(what, " ", state);
    const time = document.createElement("time");
    time.textContent = when(event);
    const start = toDate(event.start_time);
    if (start) time.dateTime = start.toISOString();
    const details = document.createElement("small");
    const parts = [`best ${percent(event.best_confidence)}`];
    if (event.zones && event.zones.length) parts.push(`zones: ${event.zones.join(", ")}`);
    if (event.rules && event.rules.length) parts.push(`rules: ${event.rules.join(", ")}`);
    if (event.camera) parts.push(event.camera);
    if (typeof event.score === "number") parts.push(`score ${event.score.toFixed(2)}`);
    details.textContent = parts.join(" · ");
    text.append(head, time, details);
    // What the vision-language model said of it: its description, its rules' answers (words, as text).
    const description = descriptionElement(event);
    if (description) text.append(description);
    const answers = answersElement(event.answers);
    if (answers) text.append(answers);
    if (this.onSimilar) {
      const similar = document.createElement("button");
      similar.type = "button";
      similar.className = "action-btn";
      similar.textContent = "Similar";
      similar.setAttribute("aria-label", `Find events that look like ${title(event)}`);
      similar.addEventListener("click", () => this.onSimilar(event, title(event)));
      text.append(similar);
    }
    if (event.global_id && this.onIdentity) {
      const same = document.createElement("button");
      same.type = "button";
      same.className = "action-btn";
      same.textContent = "Same object";
      same.setAttribute("aria-label", `Show ${title(event)} on every camera`);
      same.addEventListener("click", () => this.onIdentity(event.global_id));
      text.append(same);
    }
    // Until the service says has_clip, every event offers its clip; a missing one says so in the player.
    if (event.has_clip !== false) {
      const play = document.createElement("button");
      play.type = "button";
      play.className = "play-btn";
      play.textContent = "Play clip";
      play.setAttribute("aria-label", `Play the clip of ${title(event)}`);
      play.addEventListener("click", () => this.onPlay(event, title(event)));
      text.append(play);
    }
    li.append(text);
    return li;
  }

  /** Show the event's snapshot in img: the cached one if it is still current, else fetch it. */
  thumbnail(event, img) {
    const id = String(event.id);
    // An active event's snapshot is replaced when a better view comes; its best confidence says when.
    const version = `${event.best_confidence}|${event.snapshot_url}`;
    const cached = this.snapshots.get(id);
    if (cached) img.src = cached.url;
    if (cached && cached.version === version) return;
    this.images.set(id, img);
    if (cached && cached.pending === version) return;
    if (cached) cached.pending = version;
    else this.snapshots.set(id, { version: null, url: null, pending: version });
    this.fetchSnapshot(id, event.snapshot_url, version);
  }

  async fetchSnapshot(id, snapshotUrl, version) {
    const epoch = this.epoch;
    let blob;
    try {
      blob = await api.snapshot(this.getKey(), snapshotUrl);
    } catch {
      blob = null; // the row says "no image" below; the next refresh tries again
    }
    const entry = this.snapshots.get(id);
    if (epoch !== this.epoch || !entry || entry.pending !== version) return;
    entry.pending = null;
    const img = this.images.get(id);
    if (!blob) {
      if (!entry.url) this.snapshots.delete(id);
      if (img && !entry.url) img.replaceWith(Object.assign(document.createElement("span"), {
        className: "thumb none", textContent: "no image",
      }));
      return;
    }
    const previous = entry.url;
    entry.url = URL.createObjectURL(blob);
    entry.version = version;
    if (previous && previous !== this.shown) URL.revokeObjectURL(previous);
    if (img) img.src = entry.url;
  }

  forget(id, snapshot) {
    this.snapshots.delete(id);
    if (snapshot.url && snapshot.url !== this.shown) URL.revokeObjectURL(snapshot.url);
  }

  enlarge(event) {
    const snapshot = this.snapshots.get(String(event.id));
    if (!snapshot || !snapshot.url) return;
    const { dialog, dialogImage, dialogTitle, dialogCaption } = this.el;
    this.shown = snapshot.url;
    dialogImage.src = snapshot.url;
    dialogImage.alt = `${title(event)} snapshot`;
    dialogTitle.textContent = title(event);
    const parts = [event.active ? "Active" : "Ended", when(event), `best ${percent(event.best_confidence)}`];
    if (event.zones && event.zones.length) parts.push(`zones: ${event.zones.join(", ")}`);
    dialogCaption.textContent = parts.join(" · ");
    if (!dialog.open) dialog.showModal();
  }

  dialogClosed() {
    const url = this.shown;
    this.shown = null;
    this.el.dialogImage.removeAttribute("src");
    const stillListed = [...this.snapshots.values()].some((s) => s.url === url);
    if (url && !stillListed) URL.revokeObjectURL(url);
  }
}
