// The watched session: its live connection and what each message from it changes. Every way in
// (start, the list, the back/forward cache) and out (stop, leave, the session ends) passes here, so
// a late callback from an old connection is ignored in one place.

import { websocketUrl } from "./api.js";
import { StreamConnection } from "./stream.js";

/** class name -> {count, tracks: [track ids, ascending]} for one frame's detections. */
function countClasses(detections) {
  const counts = new Map();
  for (const d of detections || []) {
    const entry = counts.get(d.class_name) || { count: 0, tracks: [] };
    entry.count += 1;
    if (d.track_id !== null && d.track_id !== undefined) entry.tracks.push(d.track_id);
    counts.set(d.class_name, entry);
  }
  for (const entry of counts.values()) entry.tracks.sort((a, b) => a - b);
  return counts;
}

export class SessionController {
  /**
   * el: {stage, canvas}; the panels follow the session it watches; getKey() gives the API key;
   * onFinished() redraws what shows the session once it is over.
   */
  constructor({ stage, canvas }, deps) {
    this.stage = stage;
    this.canvas = canvas;
    const { store, renderer, zones, events, alertQueue, banners, sessions, getKey, onFinished } = deps;
    Object.assign(this, { store, renderer, zones, events, alertQueue, banners, sessions, getKey, onFinished });
    this.conn = null;
  }

  /** Shape the stage to the stream; the canvas takes the stream's size until a frame is painted. */
  setAspect(width, height) {
    if (!(width > 0 && height > 0)) return;
    this.stage.style.setProperty("--ar", String(width / height));
    if (this.renderer.painted === 0 && (this.canvas.width !== width || this.canvas.height !== height)) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.renderer.clear();
    }
  }

  attach(session) {
    const { store, renderer } = this;
    this.leave();
    store.attached(session);
    this.banners.showModelWarning(session.model);
    if (session.stream) this.setAspect(session.stream.width, session.stream.height);
    renderer.reset();
    renderer.clear();
    this.zones.setSession(session.session_id, session.zones, session.stream);
    this.events.start(session.session_id);

    const conn = new StreamConnection(websocketUrl(session.websocket_path), {
      onOpen: () => {
        if (this.conn !== conn) return;
        if (store.connected()) this.sessions.refresh(); // the list now counts this viewer
        store.notify();
      },
      onFrame: (header, jpeg) => {
        if (this.conn !== conn) return;
        store.frameArrived(countClasses(header.detections), !jpeg);
        if (jpeg) renderer.push(jpeg, header);
      },
      onMessage: (message) => {
        if (this.conn !== conn) return;
        this.handleMessage(message);
      },
      onRetry: (delay, { refused, reason }) => {
        if (this.conn !== conn) return;
        store.retrying(delay, refused, reason);
        store.notify();
      },
      onEnd: ({ reason, final }) => {
        if (this.conn !== conn) return;
        if (final) this.banners.showError(reason);
        this.finish(final ? null : `Session ended: ${reason}`);
      },
    });
    this.conn = conn;
    conn.open();
    store.notify();
  }

  handleMessage(message) {
    const store = this.store;
    switch (message.type) {
      case "stream_info":
        store.streamInfo(message);
        this.setAspect(message.width, message.height);
        this.banners.showModelWarning(message.model, message.warning);
        this.zones.setStreamSize(store.session.stream);
        if (message.zones) this.zones.setZones(message.zones);
        break;
      case "zones":
        this.zones.setZones(message.zones);
        break;
      case "status":
        store.status(message);
        if (message.counts) this.zones.setCounts(message.counts);
        this.events.setOpen(message.events_open);
        break;
      case "alert":
        this.alertQueue.queue(message);
        this.events.refreshSoon(); // an alert usually opens or updates an event
        break;
      case "answer":
        // A rule's question answered by the VLM (its fields flat, or under `data`): under its alert,
        // and on its event's row once the list is refreshed.
        this.alertQueue.answer(message.data && typeof message.data === "object" ? message.data : message);
        this.events.refreshSoon();
        break;
      case "session_stopped":
        break; // the close that follows ends the view (StreamConnection.onEnd)
      case "error":
        if (message.detail) this.banners.showError(message.detail);
        break;
      default:
        break;
    }
    store.notify();
  }

  /** Send a JSON message to the service; false when there is no open connection. */
  send(message) {
    return Boolean(this.conn && this.conn.send(message));
  }

  /** Stop watching without stopping the session (idempotent). */
  leave() {
    if (this.conn) this.conn.close();
    this.conn = null;
    this.store.disconnected();
    this.alertQueue.flush(true);
  }

  finish(reason) {
    this.leave();
    this.renderer.reset();
    this.renderer.clear(); // the last frame must not stay under the idle overlay
    this.store.finished(reason);
    this.zones.reset();
    this.events.stop();
    this.onFinished();
    if (this.getKey()) this.sessions.refresh();
  }

  /** Back from the back/forward cache: the socket was closed on pagehide, so open it again. */
  reopen() {
    if (!this.store.session || this.conn) return;
    const { id, websocketPath, stream, model } = this.store.session;
    this.attach({ session_id: id, websocket_path: websocketPath, stream, model });
  }
}
