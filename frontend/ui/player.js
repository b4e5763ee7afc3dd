// The player for recorded video, in a dialog: an event's clip with its box drawn over it, or the
// last minutes of a camera. The routes need the key header, which a <video src> cannot send, so a
// clip is fetched and played from a blob: URL once it is in. A Blob, not a MediaSource: a clip is
// bounded (the event and its padding; an export by its minutes), the download button then saves the
// very bytes played without asking the service again, and a MediaSource would need the codec string
// out of the clip's init segment and an H.265 decoder behind MSE that browsers often lack.
// The cost: playback starts when the whole clip has come (the dialog counts the bytes meanwhile).

import { api } from "./api.js";
import { TrackOverlay } from "./trackoverlay.js";

const CLIP_CHUNK_NOTE = 256 * 1024; // say how much has come every this many bytes

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

/** The file name the service gives (Content-Disposition), else `fallback`. */
function fileName(response, fallback) {
  const disposition = response.headers.get("content-disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  return match ? match[1] : fallback;
}

export class ClipPlayer {
  /** el: {dialog, title, stage, video, overlay, status, download}; getKey() gives the API key. */
  constructor(el, { getKey, describe }) {
    this.el = el;
    this.getKey = getKey;
    this.describe = describe;
    this.overlay = new TrackOverlay(el.overlay, el.video);
    this.url = null; // the blob: URL the video plays and the download button saves
    this.controller = null;
    this.generation = 0; // bumped by every load and close: a late answer of an older one is dropped
    el.dialog.addEventListener("close", () => this.unload());
    el.video.addEventListener("loadedmetadata", () => {
      const { videoWidth: width, videoHeight: height } = el.video;
      if (width > 0 && height > 0) el.stage.style.setProperty("--clip-ar", String(width / height));
    });
    el.video.addEventListener("error", () => {
      if (!this.url) return;
      const error = el.video.error;
      el.status.textContent = `This browser cannot play the clip${error && error.message ? `: ${error.message}` : ""}. The download button saves it.`;
    });
  }

  /** Open the player on an event's clip, with the event's track drawn over it. */
  playEvent(event, name) {
    return this.load(`Clip of ${name}`, `event-${event.id}.mp4`, async (key, signal) => {
      const words = { track: null, trackProblem: "" };
      const [response] = await Promise.all([
        api.clip(key, event, signal),
        api.track(key, event.id, signal).then(
          (track) => { words.track = track; },
          (err) => { words.trackProblem = err && err.name === "AbortError" ? "" : this.describe(err); },
        ),
      ]);
      return { response, ...words, label: name };
    });
  }

  /** Open the player on the last `minutes` of a camera's recordings. */
  playRecent(camera, minutes) {
    const before = Date.now() / 1000;
    const after = before - minutes * 60;
    return this.load(`${camera}: the last ${minutes} min`, `${camera}-last-${minutes}-min.mp4`, async (key, signal) => ({
      response: await api.export(key, { camera, after, before }, signal),
    }));
  }

  async load(title, fallbackName, ask) {
    this.unload();
    const generation = this.generation;
    const controller = new AbortController();
    this.controller = controller;
    const { dialog, stage, status, download } = this.el;
    this.el.title.textContent = title;
    stage.hidden = true;
    download.hidden = true;
    status.textContent = "Loading the clip…";
    if (!dialog.open) dialog.showModal();
    try {
      const { response, track, trackProblem, label } = await ask(this.getKey(), controller.signal);
      const clipStart = Number.parseFloat(response.headers.get("x-clip-start"));
      const blob = await this.receive(response, generation);
      if (generation !== this.generation) return;
      this.url = URL.createObjectURL(blob);
      download.href = this.url;
      download.download = fileName(response, fallbackName);
      download.hidden = false;
      stage.hidden = false;
      this.el.video.src = this.url;
      const parts = [Number.isFinite(clipStart) ? `From ${clock(clipStart)}` : "", megabytes(blob.size)];
      if (track && Number.isFinite(clipStart)) {
        this.overlay.show({ points: track.points, hz: track.hz, clipStart, label });
        if (!track.points || !track.points.length) parts.push("no track was kept for its box");
      } else if (trackProblem) {
        parts.push(`the box cannot be drawn: ${trackProblem}`);
      }
      status.textContent = parts.filter(Boolean).join(" · ");
      this.el.video.play().catch(() => {}); // autoplay refused: the controls are there
    } catch (err) {
      if (generation !== this.generation || (err && err.name === "AbortError")) return;
      status.textContent = this.describe(err);
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  /** The response's bytes as one Blob, the dialog counting them as they come. */
  async receive(response, generation) {
    const type = response.headers.get("content-type") || "video/mp4";
    if (!response.body) return response.blob();
    const reader = response.body.getReader();
    const chunks = [];
    let bytes = 0;
    let noted = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      bytes += value.byteLength;
      if (generation === this.generation && bytes - noted >= CLIP_CHUNK_NOTE) {
        noted = bytes;
        this.el.status.textContent = `Loading the clip… ${megabytes(bytes)}`;
      }
    }
    return new Blob(chunks, { type });
  }

  /** Stop whatever plays or loads and free its blob: URL (idempotent). */
  unload() {
    this.generation += 1;
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.overlay.clear();
    const { video, download } = this.el;
    video.pause();
    if (video.hasAttribute("src")) {
      video.removeAttribute("src");
      video.load(); // lets go of the old clip's decoder and buffers
    }
    download.removeAttribute("href");
    download.hidden = true;
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
  }

  close() {
    if (this.el.dialog.open) this.el.dialog.close();
    else this.unload();
  }
}
