// The search box over the events panel: events of every camera that look like the words typed, or
// like one event ("Similar" on a row), shown in the panel in place of the live list until "Back to
// live events". What the service says of search (off, loading, random weights) shows beside the box.

import { api, watchReady } from "./api.js";

const STATUS_RETRY_MS = 5000; // while the encoder loads, ask /ready again this often

export class SearchBox {
  /** el: {form, text, submit, clear, notice}; events: the EventsPanel the results show in. */
  constructor(el, { getKey, describe, events }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.events = events;
    this.controller = null;
    el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = el.text.value.trim();
      if (text) this.run({ q: text }, `Closest to “${text}”`);
    });
    el.clear.addEventListener("click", () => this.back());
    events.onSimilar = (event, title) => this.run({ similar_to: event.id }, `Looks like ${title}`);
    this.checkStatus = watchReady("search", (status) => this.showStatus(status), STATUS_RETRY_MS);
  }

  /** What /ready says of search, beside the box (off: the box is disabled). */
  showStatus(status) {
    const off = status.state === "off";
    this.el.text.disabled = off;
    this.el.submit.disabled = off;
    const quiet = status.state === "ready" && status.trained !== false;
    this.say(quiet ? "" : status.detail, status.state === "ready" ? "warn" : "info");
  }

  say(words, kind = "info") {
    this.el.notice.textContent = words || "";
    this.el.notice.dataset.kind = kind;
    this.el.notice.hidden = !words;
  }

  async run(params, heading) {
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.el.clear.hidden = false;
    this.events.showResults(null, `${heading}: searching…`);
    try {
      const answer = await api.search(this.getKey(), { ...params, limit: 24 }, controller.signal);
      if (controller !== this.controller) return;
      const found = Array.isArray(answer?.events) ? answer.events : [];
      this.events.showResults(found, `${heading}: ${found.length} event${found.length === 1 ? "" : "s"}`);
      if (answer?.notice) this.say(answer.notice, "warn");
    } catch (err) {
      if (controller !== this.controller || err?.name === "AbortError") return;
      this.events.showResults([], `${heading}: ${this.describe(err)}`);
      this.checkStatus();
    }
  }

  /** Leave the results: the live list of the watched session again. */
  back() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.el.clear.hidden = true;
    this.el.text.value = "";
    this.events.showLive();
  }
}
