// Alert toasts that dismiss themselves, and a bounded, scrolling alert log.

import { answerElement } from "./answers.js";

const TOAST_MS = 5000;
const MAX_TOASTS = 4;
const MAX_LOG = 200;

function clock(timestampSeconds) {
  const date = typeof timestampSeconds === "number" ? new Date(timestampSeconds * 1000) : new Date();
  return date.toLocaleTimeString([], { hour12: false });
}

function percent(confidence) {
  return typeof confidence === "number" ? `${Math.round(confidence * 100)}%` : "?";
}

/** What happened, in words: "person #12 entered door", or "person #12" for a plain class alert. */
export function alertTitle(data) {
  const track = data.track_id !== null && data.track_id !== undefined ? ` #${data.track_id}` : "";
  const who = `${data.class_name || "object"}${track}`;
  if (!data.rule) return who;
  switch (data.kind) {
    case "enter":
      return `${who} entered ${data.zone || "a zone"}`;
    case "dwell":
      return `${who} stays in ${data.zone || "a zone"}`;
    case "cross": {
      const direction = data.direction && data.direction !== "any" ? ` (${data.direction})` : "";
      return `${who} crossed ${data.line || "a line"}${direction}`;
    }
    case "occupancy":
      return `${data.zone || "zone"} is busy (${data.rule})`;
    default:
      return `${data.rule}: ${who}`;
  }
}

function thumbElement(src, label) {
  if (!src) {
    const none = document.createElement("span");
    none.className = "thumb none";
    none.textContent = "no image";
    return none;
  }
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = src;
  img.alt = label;
  return img;
}

export class AlertView {
  constructor({ toasts, log, count }) {
    this.toasts = toasts;
    this.log = log;
    this.countEl = count;
    this.count = 0;
  }

  /**
   * Show one alert message ({timestamp, data: {class_name, confidence, bbox, track_id, rule, kind, zone,
   * line, direction}}) with an optional crop.
   */
  add(alert, thumbnail) {
    const data = alert.data || {};
    const name = alertTitle(data);
    const conf = percent(data.confidence);
    const time = clock(alert.timestamp);
    this.count += 1;
    this.countEl.textContent = String(this.count);
    this.toast(`${name} ${conf}`, time, thumbnail);

    const item = document.createElement("li");
    // Its rule's answer (type "answer") comes later and is shown under it: found by event and rule.
    if (data.event_id) item.dataset.eventId = String(data.event_id);
    if (data.rule) item.dataset.rule = String(data.rule);
    item.append(thumbElement(thumbnail, `${name} crop`));
    const text = document.createElement("div");
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `${name} · ${conf}`;
    const when = document.createElement("time");
    when.textContent = time;
    if (typeof alert.timestamp === "number") when.dateTime = new Date(alert.timestamp * 1000).toISOString();
    text.append(what, when);
    item.append(text);
    this.log.prepend(item);
    while (this.log.children.length > MAX_LOG) this.log.lastElementChild.remove();
  }

  /**
   * Show a rule's answer ({rule, question, event_id, answer, score, text, error}) under its alert in the
   * log; an answer whose alert is not listed (cleared, or past the log's length) gets a row of its own.
   */
  addAnswer(answer) {
    const eventId = answer.event_id ? String(answer.event_id) : null;
    const rule = answer.rule ? String(answer.rule) : null;
    const alert = [...this.log.children].find(
      (li) => eventId !== null && li.dataset.eventId === eventId && (rule === null || li.dataset.rule === rule),
    );
    let list = alert ? alert.querySelector("ul.vlm-answers") : null;
    if (alert && !list) {
      list = document.createElement("ul");
      list.className = "vlm-answers";
      (alert.querySelector("div") || alert).append(list);
    }
    if (list) {
      list.append(answerElement(answer));
      return;
    }
    const item = document.createElement("li");
    if (eventId !== null) item.dataset.eventId = eventId;
    if (rule !== null) item.dataset.rule = rule;
    const text = document.createElement("div");
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `Answer${rule ? ` for ${rule}` : ""}`;
    list = document.createElement("ul");
    list.className = "vlm-answers";
    list.append(answerElement(answer));
    text.append(what, list);
    item.append(thumbElement(null, ""), text);
    this.log.prepend(item);
    while (this.log.children.length > MAX_LOG) this.log.lastElementChild.remove();
  }

  toast(title, time, thumbnail) {
    // In a burst, the first few alerts get their own toast and the rest are summed up in one,
    // so the screen does not flicker; every alert is in the log regardless.
    const shown = this.toasts.querySelectorAll(".toast:not(.more)").length;
    if (shown >= MAX_TOASTS - 1) {
      this.moreAlerts(title);
      return;
    }
    const toast = document.createElement("div");
    toast.className = "toast";
    toast.setAttribute("role", "status");
    if (thumbnail) toast.append(thumbElement(thumbnail, ""));
    const text = document.createElement("div");
    text.className = "text";
    const strong = document.createElement("strong");
    strong.textContent = `Alert: ${title}`;
    const small = document.createElement("small");
    small.textContent = ` ${time}`;
    text.append(strong, small);
    const close = document.createElement("button");
    close.type = "button";
    close.className = "icon-btn";
    close.setAttribute("aria-label", "Dismiss alert");
    close.textContent = "×";
    close.addEventListener("click", () => toast.remove());
    toast.append(text, close);
    this.toasts.prepend(toast);
    setTimeout(() => toast.remove(), TOAST_MS);
  }

  moreAlerts(title) {
    if (!this.more || !this.more.isConnected) {
      this.more = document.createElement("div");
      this.more.className = "toast more";
      this.more.setAttribute("role", "status");
      this.moreCount = 0;
      this.toasts.append(this.more);
    }
    this.moreCount += 1;
    this.more.textContent = `+${this.moreCount} more alert${this.moreCount === 1 ? "" : "s"}, latest: ${title} (see the log)`;
    clearTimeout(this.moreTimer);
    const more = this.more;
    this.moreTimer = setTimeout(() => more.remove(), TOAST_MS);
  }

  clear() {
    this.log.replaceChildren();
    this.count = 0;
    this.countEl.textContent = "0";
  }
}
