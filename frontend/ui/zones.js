// Zones and lines of the watched session: drawn over the video, drawn anew by clicking on it,
// listed with their live counts, and replaced on the service as one whole object (PUT).

import { api } from "./api.js";
import { colourFor, ZoneLayer } from "./zonelayer.js";

const ALERT_CLASS = "person";
const MAX_CLASSES = 5; // per count line; the rest are summed up (the title has them all)
const HINTS = {
  zone: "Click the corners on the video; double-click or press Finish to close the zone. Escape cancels.",
  line: "Click the two ends of the line on the video. The arrow shows the side that counts as \u201cin\u201d. " +
    "Escape cancels.",
};
const ALERT_LABELS = { zone: `Alert when a ${ALERT_CLASS} enters`, line: `Alert when a ${ALERT_CLASS} crosses` };

function emptyZones() {
  return { units: "normalized", zones: [], lines: [], rules: [] };
}

function clamp01(value) {
  return Math.min(1, Math.max(0, value));
}

/** Sum of a {class: n} map. */
function total(byClass) {
  return Object.values(byClass || {}).reduce((sum, n) => sum + (Number(n) || 0), 0);
}

/** The classes of a {class: n} map, most first, as ["person 2", "car 1"]. */
function perClass(byClass) {
  return Object.entries(byClass || {})
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([name, n]) => `${name} ${n}`);
}

/** [shown, full] words for a count: "3 (person 2, car 1)", the first few classes only in `shown`. */
function countWords(byClass) {
  const sum = total(byClass);
  if (!sum) return ["0", "0"];
  const items = perClass(byClass);
  const more = items.length - MAX_CLASSES;
  const shown = items.slice(0, MAX_CLASSES).join(", ") + (more > 0 ? `, +${more} more` : "");
  return [`${sum} (${shown})`, `${sum} (${items.join(", ")})`];
}

function ruleWords(rule) {
  const classes = rule.classes && rule.classes.length ? rule.classes.join(", ") : "anything";
  switch (rule.kind) {
    case "enter":
      return `${classes} enters`;
    case "dwell":
      return `${classes} stays ${rule.dwell_s ?? "?"} s`;
    case "cross":
      return `${classes} crosses${rule.direction && rule.direction !== "any" ? ` (${rule.direction})` : ""}`;
    case "occupancy":
      return `${rule.min_count ?? "?"}+ ${classes}`;
    default:
      return rule.kind || "rule";
  }
}

export class ZonesPanel {
  /**
   * el: {stage, layer, drawZone, drawLine, draft, hint, name, alert, alertLabel, finish, cancel, error, list};
   * getKey() gives the API key; describe(err) turns an error into words.
   */
  constructor(el, { getKey, describe }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.layer = new ZoneLayer(el.layer);
    this.sessionId = null;
    this.streamSize = null;
    this.zones = emptyZones();
    this.counts = null;
    this.cells = []; // per listed zone or line: {kind, name, cells: [<dd>], rules: <p>|null}
    this.draft = null; // {kind: "zone"|"line", points: [[x, y]], hover: [x, y]|null}
    this.busy = false;

    el.drawZone.addEventListener("click", () => this.begin("zone"));
    el.drawLine.addEventListener("click", () => this.begin("line"));
    el.cancel.addEventListener("click", () => this.cancel());
    el.draft.addEventListener("submit", (event) => {
      event.preventDefault();
      this.finish();
    });
    el.stage.addEventListener("click", (event) => this.click(event));
    el.stage.addEventListener("dblclick", (event) => {
      if (this.draft && this.draft.kind === "zone") {
        event.preventDefault();
        this.finish();
      }
    });
    el.stage.addEventListener("pointermove", (event) => this.hover(event));
    el.stage.addEventListener("pointerleave", () => this.hover(null));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.draft && !event.defaultPrevented) this.cancel();
    });
    this.render();
  }

  /** Watch a session: its zones (from stream_info, may be absent) and its stream size (for pixel units). */
  setSession(sessionId, zones, streamSize) {
    this.cancel();
    this.sessionId = sessionId;
    this.streamSize = streamSize || null;
    this.counts = null;
    this.clearError();
    this.setZones(zones);
  }

  /** Replace what is shown with the service's zones object (stream_info, a "zones" message, a PUT answer). */
  setZones(zones) {
    this.zones = this.normalised(zones);
    this.render();
  }

  setStreamSize(size) {
    this.streamSize = size || null;
  }

  /** Live counts from a status message. */
  setCounts(counts) {
    this.counts = counts || null;
    this.renderCounts();
  }

  /** Nothing watched any more: forget the session, its shapes and any drawing in progress. */
  reset() {
    this.cancel();
    this.sessionId = null;
    this.streamSize = null;
    this.zones = emptyZones();
    this.counts = null;
    this.clearError();
    this.render();
  }

  normalised(zones) {
    const result = emptyZones();
    if (!zones || typeof zones !== "object") return result;
    // The service answers in normalised units; pixels (allowed on PUT) are converted with the stream size.
    const size = zones.units === "pixels" && this.streamSize ? this.streamSize : { width: 1, height: 1 };
    const point = (p) => [p[0] / size.width, p[1] / size.height];
    result.zones = (zones.zones || []).map((z) => ({ ...z, points: (z.points || []).map(point) }));
    result.lines = (zones.lines || []).map((l) => ({ ...l, a: point(l.a), b: point(l.b) }));
    result.rules = (zones.rules || []).map((r) => ({ ...r }));
    return result;
  }

  // ---------- drawing a new shape ----------

  begin(kind) {
    if (!this.sessionId || this.busy) return;
    this.clearError();
    this.draft = { kind, points: [], hover: null };
    this.el.name.value = this.freeName(kind);
    this.el.alert.checked = false;
    this.el.alertLabel.textContent = ALERT_LABELS[kind];
    this.el.hint.textContent = HINTS[kind];
    this.render();
  }

  cancel() {
    if (!this.draft) return;
    this.draft = null;
    this.render();
  }

  /** A normalised point under the pointer, or null outside the picture. */
  pointAt(event) {
    const rect = this.el.layer.getBoundingClientRect();
    if (!rect.width || !rect.height) return null;
    return [clamp01((event.clientX - rect.left) / rect.width), clamp01((event.clientY - rect.top) / rect.height)];
  }

  click(event) {
    // The second click of a double-click closes the zone (dblclick), it adds no corner.
    if (!this.draft || this.busy || event.detail > 1) return;
    const point = this.pointAt(event);
    if (!point) return;
    this.draft.points.push(point);
    if (this.draft.kind === "line" && this.draft.points.length === 2) {
      this.finish();
      return;
    }
    this.render();
  }

  hover(event) {
    if (!this.draft) return;
    this.draft.hover = event && !this.busy ? this.pointAt(event) : null;
    this.layer.show(this.zones, this.draft);
  }

  freeName(kind) {
    const taken = new Set([...this.zones.zones, ...this.zones.lines].map((s) => s.name));
    for (let i = 1; ; i += 1) {
      const name = `${kind}-${i}`;
      if (!taken.has(name)) return name;
    }
  }

  freeRuleName(base) {
    const taken = new Set(this.zones.rules.map((r) => r.name));
    if (!taken.has(base)) return base;
    for (let i = 2; ; i += 1) if (!taken.has(`${base}-${i}`)) return `${base}-${i}`;
  }

  /**
   * Send the drawn shape with everything already there. The service judges it (too few corners,
   * a name in use, too many zones): its words are shown and the drawing stays, to be mended.
   */
  async finish() {
    const draft = this.draft;
    if (!draft || this.busy) return;
    if (draft.kind === "line" && draft.points.length < 2) return; // Enter in the name field: the ends come first
    const name = this.el.name.value.trim();
    const next = structuredClone(this.zones);
    next.units = "normalized";
    if (draft.kind === "zone") {
      next.zones.push({ name, points: draft.points.map((p) => [...p]) });
      if (this.el.alert.checked) {
        next.rules.push({
          name: this.freeRuleName(`${name}-enter`), kind: "enter", zone: name, classes: [ALERT_CLASS],
        });
      }
    } else {
      next.lines.push({ name, a: [...draft.points[0]], b: [...draft.points[1]] });
      if (this.el.alert.checked) {
        next.rules.push({
          name: this.freeRuleName(`${name}-cross`), kind: "cross", line: name, classes: [ALERT_CLASS], direction: "any",
        });
      }
    }
    draft.hover = null;
    if (await this.put(next)) {
      if (this.draft === draft) this.draft = null;
    } else if (this.draft === draft && draft.kind === "line") {
      draft.points = []; // a refused line is drawn again from its first end
    }
    this.render();
  }

  /** Remove a zone or line and the rules that watch it. */
  remove(kind, name) {
    const next = structuredClone(this.zones);
    if (kind === "zone") {
      next.zones = next.zones.filter((z) => z.name !== name);
      next.rules = next.rules.filter((r) => r.zone !== name);
    } else {
      next.lines = next.lines.filter((l) => l.name !== name);
      next.rules = next.rules.filter((r) => r.line !== name);
    }
    this.clearError();
    this.put(next);
  }

  async put(next) {
    const sessionId = this.sessionId;
    this.busy = true;
    this.clearError();
    this.render();
    try {
      const answer = await api.putZones(this.getKey(), sessionId, next);
      if (this.sessionId !== sessionId) return false;
      this.setZones(answer && answer.zones ? answer.zones : next);
      return true;
    } catch (err) {
      if (this.sessionId === sessionId) this.showError(this.describe(err));
      return false;
    } finally {
      this.busy = false;
      this.render();
    }
  }

  showError(message) {
    this.el.error.textContent = message;
    this.el.error.hidden = false;
  }

  clearError() {
    this.el.error.hidden = true;
    this.el.error.textContent = "";
  }

  // ---------- rendering ----------

  render() {
    const { el } = this;
    const drawing = Boolean(this.draft);
    el.drawZone.disabled = !this.sessionId || drawing || this.busy;
    el.drawLine.disabled = !this.sessionId || drawing || this.busy;
    el.draft.hidden = !drawing;
    el.stage.classList.toggle("drawing", drawing);
    if (drawing) {
      const { kind, points } = this.draft;
      const needed = kind === "zone" ? "" : ` (${points.length} of 2 ends)`;
      const progress = kind === "zone" && points.length ? ` ${points.length} corner(s) so far.` : needed;
      el.hint.textContent = `${HINTS[kind]}${progress}`;
      el.finish.hidden = kind === "line";
      el.finish.disabled = this.busy;
      el.name.disabled = this.busy;
    }
    this.layer.show(this.zones, this.draft);
    this.renderList();
  }

  /** Build the list of zones and lines; their counts are filled in by renderCounts. */
  renderList() {
    const { zones, lines } = this.zones;
    this.cells = [];
    if (!zones.length && !lines.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = this.sessionId ? "No zones or lines yet: use Draw zone or Draw line under the video." :
        "Start or watch a session to draw zones.";
      this.el.list.replaceChildren(li);
      return;
    }
    const items = [
      ...zones.map((zone) => this.item("zone", zone.name, [["Now", "count-current"], ["Entered", "count-entered"]])),
      ...lines.map((line) => this.item("line", line.name, [["In", "count-in"], ["Out", "count-out"]])),
    ];
    this.el.list.replaceChildren(...items);
    this.renderCounts();
  }

  /**
   * Put the latest counts into the list in place: they change every second, and rebuilding the
   * list would take the keyboard focus off a Remove button each time.
   */
  renderCounts() {
    const counts = this.counts || {};
    const fired = counts.rules || {};
    for (const { kind, name, cells, rules } of this.cells) {
      const c = (kind === "zone" ? counts.zones : counts.lines) || {};
      const mine = c[name] || {};
      const values = kind === "zone" ? [mine.current, mine.entered] : [mine.in, mine.out];
      cells.forEach((dd, i) => {
        const [shown, full] = countWords(values[i]);
        dd.textContent = shown;
        if (full !== shown) dd.title = full;
        else dd.removeAttribute("title");
      });
      if (rules) {
        const watching = this.zones.rules.filter((r) => r[kind] === name);
        const words = watching.map((r) => `${ruleWords(r)} (fired ${fired[r.name] ?? 0})`);
        rules.textContent = `Alerts: ${words.join("; ")}`;
      }
    }
  }

  item(kind, name, rows) {
    const li = document.createElement("li");
    li.dataset.kind = kind;
    li.dataset.name = name;
    const head = document.createElement("div");
    head.className = "zone-head";
    const swatch = document.createElement("span");
    swatch.className = `swatch ${kind}`;
    // A CSS custom property set through the CSSOM is allowed by the page's style policy.
    swatch.style.setProperty("--swatch", colourFor(name));
    const title = document.createElement("strong");
    title.textContent = name;
    const what = document.createElement("small");
    what.textContent = kind;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.disabled = this.busy || !this.sessionId;
    remove.setAttribute("aria-label", `Remove ${kind} ${name}`);
    remove.addEventListener("click", () => this.remove(kind, name));
    head.append(swatch, title, what, remove);
    const dl = document.createElement("dl");
    dl.className = "zone-counts";
    const cells = rows.map(([label, className]) => {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.className = className;
      dl.append(dt, dd);
      return dd;
    });
    li.append(head, dl);
    let rules = null;
    if (this.zones.rules.some((r) => r[kind] === name)) {
      rules = document.createElement("p");
      rules.className = "zone-rules";
      li.append(rules);
    }
    this.cells.push({ kind, name, cells, rules });
    return li;
  }
}
