// Canvas renderer that only ever draws the newest frame: one decode in flight, one frame pending.
// A frame replaced before it was decoded or painted is dropped and counted, so the page never
// builds a backlog of its own however slow the device. While the tab is hidden nothing is decoded
// (it could not be painted anyway); the newest frame waits and is decoded when the tab shows again.

const LATENCY_SMOOTHING = 0.2;

async function decodeJpeg(bytes) {
  const blob = new Blob([bytes], { type: "image/jpeg" });
  if (typeof createImageBitmap === "function") {
    return createImageBitmap(blob); // decoded off the main thread where the browser can
  }
  const url = URL.createObjectURL(blob);
  try {
    const image = new Image();
    image.src = url;
    await image.decode();
    return image;
  } finally {
    URL.revokeObjectURL(url);
  }
}

function release(image) {
  if (image && typeof image.close === "function") image.close();
}

export class FrameRenderer {
  /**
   * onResize(width, height) is called when the painted frame size changes;
   * onPaint(meta) right after a frame is drawn, while it is still on the canvas.
   */
  constructor(canvas, { onResize, onPaint } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.onResize = onResize;
    this.onPaint = onPaint;
    this.generation = 0;
    this.reset();
    document.addEventListener("visibilitychange", () => this.wake());
  }

  /** Forget everything in flight (new session or leaving one); counters restart. */
  reset() {
    this.generation += 1;
    this.decoding = false;
    this.pending = null;
    if (this.ready) release(this.ready.image);
    this.ready = null;
    if (this.rafId) cancelAnimationFrame(this.rafId);
    this.rafId = 0;
    this.received = 0;
    this.painted = 0;
    this.dropped = 0;
    this.decodeErrors = 0;
    this.latencyMs = null;
    this.lastPainted = null;
    this.lastPaintAt = null; // Date.now() of the last paint
    this.paintTimes = [];
  }

  /** Blank the canvas (black), e.g. when no session is shown. */
  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Offer a received JPEG frame; meta is its frame_result header. */
  push(jpeg, meta) {
    this.received += 1;
    const item = { jpeg, meta };
    if (this.decoding || document.hidden) {
      if (this.pending) this.dropped += 1;
      this.pending = item;
      return;
    }
    this.decode(item);
  }

  async decode(item) {
    const generation = this.generation;
    this.decoding = true;
    try {
      const image = await decodeJpeg(item.jpeg);
      if (generation !== this.generation) {
        release(image);
        return;
      }
      if (this.ready) {
        this.dropped += 1; // decoded but overtaken before the next paint
        release(this.ready.image);
      }
      this.ready = { image, meta: item.meta };
      if (!this.rafId) this.rafId = requestAnimationFrame(() => this.paint());
    } catch {
      if (generation === this.generation) this.decodeErrors += 1;
    } finally {
      if (generation === this.generation) {
        this.decoding = false;
        this.wake();
      }
    }
  }

  /** Decode the waiting frame, if any, unless a decode is running or the tab is hidden. */
  wake() {
    if (this.decoding || document.hidden || !this.pending) return;
    const next = this.pending;
    this.pending = null;
    this.decode(next);
  }

  paint() {
    this.rafId = 0;
    const frame = this.ready;
    if (!frame) return;
    this.ready = null;
    const { image, meta } = frame;
    const width = image.width;
    const height = image.height;
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.onResize?.(width, height);
    }
    this.ctx.drawImage(image, 0, 0);
    release(image);
    const now = Date.now();
    this.painted += 1;
    this.lastPainted = meta;
    this.lastPaintAt = now;
    this.paintTimes.push(now);
    if (typeof meta.timestamp === "number") {
      // Wall clocks of service and browser: exact on one machine, skewed by their offset otherwise.
      const latency = now - meta.timestamp * 1000;
      this.latencyMs = this.latencyMs === null ? latency : this.latencyMs + LATENCY_SMOOTHING * (latency - this.latencyMs);
    }
    this.onPaint?.(meta);
  }

  /** Frames painted during the last second. */
  shownFps() {
    const horizon = Date.now() - 1000;
    while (this.paintTimes.length && this.paintTimes[0] < horizon) this.paintTimes.shift();
    return this.paintTimes.length;
  }

  /**
   * A small image of bbox (source pixels) cut from the last painted frame, as a data URL;
   * null when nothing is painted yet.
   */
  crop(bbox, sourceWidth, sourceHeight, maxSide = 160) {
    if (!this.lastPainted || !Array.isArray(bbox) || bbox.length !== 4) return null;
    const sx = this.canvas.width / (sourceWidth || this.canvas.width);
    const sy = this.canvas.height / (sourceHeight || this.canvas.height);
    const pad = 0.1;
    let [x1, y1, x2, y2] = bbox;
    const padX = (x2 - x1) * pad;
    const padY = (y2 - y1) * pad;
    x1 = Math.max(0, Math.floor((x1 - padX) * sx));
    y1 = Math.max(0, Math.floor((y1 - padY) * sy));
    x2 = Math.min(this.canvas.width, Math.ceil((x2 + padX) * sx));
    y2 = Math.min(this.canvas.height, Math.ceil((y2 + padY) * sy));
    const w = x2 - x1;
    const h = y2 - y1;
    if (w < 2 || h < 2) return null;
    const scale = Math.min(1, maxSide / Math.max(w, h));
    const thumb = document.createElement("canvas");
    thumb.width = Math.max(1, Math.round(w * scale));
    thumb.height = Math.max(1, Math.round(h * scale));
    thumb.getContext("2d").drawImage(this.canvas, x1, y1, w, h, 0, 0, thumb.width, thumb.height);
    return thumb.toDataURL("image/jpeg", 0.8);
  }
}
