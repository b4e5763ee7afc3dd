// The "Ask" box: a yes/no question over every camera's stored events (POST /api/v1/ask). The service
// recalls events by the question's words and the vision-language model checks each one's snapshot;
// the results come ranked with the model's answer, score and reason, a snapshot and a clip button.
// Whatever the model says is untrusted text: every word is set with textContent, and every URL the
// page fetches is built here from the event's id, never taken from an answer. What the service says
// of the model (off, loading, failed, random weights) shows beside the box.

import { api, watchReady } from "./api.js";

const STATUS_RETRY_MS = 5000; // while the model or the detector loads, ask /ready again this often
const TOP_K = 8;

const eventPath = (id) => `/api/v1/events/${encodeURIComponent(id)}`;

function clock(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString([], { hour12: false }) : "?";
}

function scoreText(score) {
  return typeof score === "number" ? `score ${score.toFixed(2)}` : "no score";
}

export class AskBox {
  /** el: {form, text, submit, notice, status, list}; onPlay(event, title) plays an event's clip. */
  constructor(el, { getKey, describe, onPlay }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.onPlay = onPlay;
    this.controller = null;
    this.urls = []; // blob: URLs of the shown snapshots, revoked when the results are replaced
    this.generation = 0;
    el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const question = el.text.value.trim();
      if (question) this.ask(question);
    });
    this.checkStatus = watchReady("vlm", (status) => this.showStatus(status), STATUS_RETRY_MS);
  }

  /** What /ready says of the model, beside the box (off: the box is disabled). */
  showStatus(status) {
    const off = status.state === "off";
    this.el.text.disabled = off;
    this.el.submit.disabled = off;
    const quiet = status.state === "ready" && status.trained !== false;
    this.say(quiet ? "" : status.detail, status.state === "ready" || status.state === "failed" ? "warn" : "info");
  }

  say(words, kind = "info") {
    this.el.notice.textContent = words || "";
    this.el.notice.dataset.kind = kind;
    this.el.notice.hidden = !words;
  }

  async ask(question) {
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.clear();
    const generation = this.generation;
    this.el.status.textContent = "Asking… (each candidate is shown to the model)";
    try {
      const answer = await api.ask(this.getKey(), { question, top_k: TOP_K }, controller.signal);
      if (generation !== this.generation) return;
      const results = Array.isArray(answer?.results) ? answer.results : [];
      const checked = typeof answer?.checked === "number" ? answer.checked : results.length;
      const failed = typeof answer?.failed === "number" && answer.failed ? `, ${answer.failed} could not be checked` : "";
      this.el.status.textContent = `${checked} event${checked === 1 ? "" : "s"} checked${failed}; best first.`;
      const notices = Array.isArray(answer?.notices) ? answer.notices.filter((n) => typeof n === "string") : [];
      if (notices.length) this.say(notices.join(" "), "warn");
      if (!results.length) {
        const none = document.createElement("li");
        none.className = "muted";
        none.textContent = "Nothing found.";
        this.el.list.replaceChildren(none);
        return;
      }
      this.el.list.replaceChildren(...results.map((result) => this.item(result, generation)));
    } catch (err) {
      if (generation !== this.generation || err?.name === "AbortError") return;
      this.el.status.textContent = `Could not ask: ${this.describe(err)}`;
      this.checkStatus();
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  item(result, generation) {
    const id = String(result.event_id ?? "");
    const li = document.createElement("li");
    li.dataset.eventId = id;
    const label = `${result.label || "object"}${result.camera ? ` on ${result.camera}` : ""}`;
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = `${label} snapshot`;
    li.append(img);
    this.snapshot(id, img, generation);

    const text = document.createElement("div");
    text.className = "ask-text";
    const head = document.createElement("div");
    const what = document.createElement("strong");
    what.textContent = label;
    const verdict = document.createElement("span");
    const answer = result.answer === "yes" || result.answer === "no" ? result.answer : null;
    verdict.className = `chip chip-${answer ?? "unsure"}`;
    verdict.textContent = answer ?? "no verdict";
    const score = document.createElement("span");
    score.className = "ask-score";
    score.textContent = scoreText(result.score);
    head.append(what, " ", verdict, " ", score);
    const time = document.createElement("time");
    time.textContent = clock(result.start);
    if (typeof result.start === "number") time.dateTime = new Date(result.start * 1000).toISOString();
    const reason = document.createElement("p");
    reason.className = "ask-reason";
    reason.textContent = typeof result.reason === "string" ? result.reason : "";
    text.append(head, time, reason);
    if (result.clip_url) {
      const play = document.createElement("button");
      play.type = "button";
      play.className = "play-btn";
      play.textContent = "Play clip";
      play.setAttribute("aria-label", `Play the clip of ${label}`);
      // The clip's URL is the page's own, from the id: an answer names which event, never where to go.
      const event = { id, clip_url: `${eventPath(id)}/clip.mp4` };
      play.addEventListener("click", () => this.onPlay(event, label));
      text.append(play);
    }
    li.append(text);
    return li;
  }

  async snapshot(id, img, generation) {
    try {
      const blob = await api.snapshot(this.getKey(), `${eventPath(id)}/snapshot.jpg`);
      if (generation !== this.generation) return;
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      img.src = url;
    } catch {
      if (generation !== this.generation) return;
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
