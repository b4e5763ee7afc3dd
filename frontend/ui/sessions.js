// The sessions running on the service, so a person can watch one this tab did not start: one started
// by someone else, or by this page before a reload.

import { api } from "./api.js";
import { describe } from "./banners.js";

export class SessionList {
  /** el: {list, refresh}; onWatch(session) joins a listed session; onList(sessions) hears each listing;
   * getKey() gives the API key. */
  constructor({ list, refresh }, { store, getKey, onWatch, onList = () => {} }) {
    this.list = list;
    this.store = store;
    this.getKey = getKey;
    this.onWatch = onWatch;
    this.onList = onList;
    refresh.addEventListener("click", () => this.refresh());
  }

  async refresh() {
    const key = this.getKey();
    if (!key) {
      this.render(null, "Enter the API key, then Refresh.");
      return;
    }
    try {
      const answer = await api.sessions(key);
      this.render(answer.sessions || []);
      this.onList(answer.sessions || []);
    } catch (err) {
      this.render(null, describe(err));
    }
  }

  render(sessions, message) {
    if (!sessions || !sessions.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = message || "No running sessions.";
      this.list.replaceChildren(li);
      return;
    }
    const watched = this.store.session;
    this.list.replaceChildren(...sessions.map((s) => {
      const li = document.createElement("li");
      const meta = document.createElement("div");
      meta.className = "meta";
      const stats = s.stats || {};
      const url = document.createElement("span");
      url.className = "url";
      url.textContent = s.stream_url || s.session_id;
      url.title = url.textContent;
      meta.append(url);
      const small = document.createElement("small");
      small.textContent = `${s.state} · ${stats.viewers ?? 0} viewer(s) · ${s.session_id.slice(0, 8)}`;
      meta.append(small);
      const button = document.createElement("button");
      button.type = "button";
      const current = watched && watched.id === s.session_id;
      button.textContent = current ? "Watching" : "Watch";
      button.disabled = current || !s.websocket_path;
      button.setAttribute("aria-label", `Watch ${s.stream_url || s.session_id}`);
      button.addEventListener("click", () => {
        this.onWatch(s);
        this.render(sessions);
      });
      li.append(meta, button);
      return li;
    }));
  }
}
