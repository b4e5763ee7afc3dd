// Alerts are sent before their frame: each waits here until that frame is painted, so its thumbnail is
// cropped from the picture it happened in, and gives up after a while so none is held back for good.

import { AlertView } from "./alerts.js";

const ALERT_FRAME_WAIT_MS = 2000;
const MAX_PENDING_ALERTS = 50;

export class AlertQueue {
  /** el: {toasts, log, count, clear}; the store gives the stream size, the renderer the painted frame. */
  constructor({ toasts, log, count, clear }, { store, renderer }) {
    this.view = new AlertView({ toasts, log, count });
    this.store = store;
    this.renderer = renderer;
    this.pending = []; // oldest first: {message, frameIndex, deadline}
    clear.addEventListener("click", () => this.view.clear());
  }

  queue(message) {
    const frameIndex = message.data ? message.data.frame_index : undefined;
    this.pending.push({ message, frameIndex, deadline: Date.now() + ALERT_FRAME_WAIT_MS });
    if (this.pending.length > MAX_PENDING_ALERTS) this.show(this.pending.shift().message, null);
    this.flush();
  }

  /** A rule's answer: shown under its alert, once every alert before it is shown (so it finds it). */
  answer(data) {
    this.flush(true);
    this.view.addAnswer(data);
  }

  /**
   * Show, in order, the alerts whose frame (or a later one) is on the canvas, cropped from it.
   * An alert whose frame never comes (dropped, drawing off) gives up after ALERT_FRAME_WAIT_MS and
   * takes the frame on the canvas, or no image in a hidden tab, where that frame is likely stale;
   * `all` flushes everything the same way (leaving the session).
   */
  flush(all = false) {
    const painted = this.renderer.lastPainted ? this.renderer.lastPainted.frame_index : undefined;
    const now = Date.now();
    while (this.pending.length) {
      const { message, frameIndex, deadline } = this.pending[0];
      const framePainted = typeof frameIndex !== "number" || (typeof painted === "number" && painted >= frameIndex);
      const giveUp = all || this.store.drawingOff || now >= deadline;
      if (!framePainted && !giveUp) break;
      this.pending.shift();
      this.show(message, framePainted || !document.hidden ? this.cropFor(message) : null);
    }
  }

  cropFor(message) {
    const session = this.store.session;
    const stream = (session && session.stream) || {};
    const bbox = message.data && message.data.bbox;
    return this.renderer.crop(bbox, stream.width, stream.height);
  }

  show(message, thumbnail) {
    this.view.add(message, thumbnail);
  }
}
