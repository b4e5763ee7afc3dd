// An event's box drawn on a transparent canvas over its clip's <video>, for the frame on screen:
// redrawn for each frame shown (requestVideoFrameCallback where the browser has it, timeupdate
// where not), on seek and on resize. Track boxes are in source pixels; the clip is the camera's own
// video, never scaled by the service, so they are the video's pixels, scaled here to its size on screen.

const STROKE = "#ffc800";
const FILL = "rgba(255, 200, 0, 0.2)";
const LEAVE_S = 1.0; // unseen this long after its last point, the object has left: no box

/** The track point to show at wall time `at` (Unix s): the last one at or before it, or null before
 * the first and once the object went unseen for longer than gapS. Points are oldest first. */
export function pointAt(points, at, gapS) {
  let lo = 0;
  let hi = points.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid].t <= at) lo = mid + 1;
    else hi = mid;
  }
  if (lo === 0) return null;
  const point = points[lo - 1];
  return at - point.t <= gapS ? point : null;
}

export class TrackOverlay {
  constructor(canvas, video) {
    this.canvas = canvas;
    this.video = video;
    this.ctx = canvas.getContext("2d");
    this.points = [];
    this.clipStart = null;
    this.gapS = LEAVE_S;
    this.label = "";
    this.frameRequest = 0;
    this.byFrame = typeof video.requestVideoFrameCallback === "function";
    // While playing, frames drive the drawing where they can; timeupdate comes only ~4 times a second.
    video.addEventListener("timeupdate", () => {
      if (!this.byFrame || video.paused) this.draw();
    });
    for (const name of ["seeked", "loadeddata", "pause", "emptied"]) video.addEventListener(name, () => this.draw());
    video.addEventListener("play", () => this.follow());
    new ResizeObserver(() => this.draw()).observe(video);
  }

  /** Draw this track over the clip whose time 0 is clipStart (Unix s); hz is the track's rate. */
  show({ points, hz, clipStart, label }) {
    this.points = Array.isArray(points) ? points.filter((p) => Array.isArray(p.bbox) && Number.isFinite(p.t)) : [];
    this.clipStart = clipStart;
    // A thinned track has sparser points: the object is still there between two of them.
    this.gapS = Math.max(LEAVE_S, hz > 0 ? 3 / hz : 0);
    this.label = label || "";
    this.draw();
    this.follow();
  }

  /** No track: nothing drawn, no frame callback left waiting (idempotent). */
  clear() {
    this.points = [];
    this.clipStart = null;
    if (this.frameRequest) this.video.cancelVideoFrameCallback(this.frameRequest);
    this.frameRequest = 0;
    this.draw();
  }

  follow() {
    if (!this.byFrame || this.frameRequest || !this.points.length) return;
    this.frameRequest = this.video.requestVideoFrameCallback((_now, frame) => {
      this.frameRequest = 0;
      // The presented frame's own time while playing; once paused or seeking, the time asked for.
      const { paused, seeking } = this.video;
      this.draw(paused || seeking ? this.video.currentTime : frame.mediaTime);
      this.follow();
    });
  }

  /** Paint the box of the moment `time` (s on the clip's clock; the video's current time by default). */
  draw(time = this.video.currentTime) {
    const { canvas, ctx, video } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(video.clientWidth * ratio);
    const height = Math.round(video.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    ctx.clearRect(0, 0, width, height);
    if (this.clipStart === null || !video.videoWidth || !video.videoHeight) return;
    const point = pointAt(this.points, this.clipStart + time, this.gapS);
    if (!point) return;
    // The picture inside the element: <video> letterboxes (object-fit: contain) when their shapes differ.
    const scale = Math.min(width / video.videoWidth, height / video.videoHeight);
    const left = (width - video.videoWidth * scale) / 2;
    const top = (height - video.videoHeight * scale) / 2;
    const [x1, y1, x2, y2] = point.bbox.map((v) => v * scale);
    ctx.fillStyle = FILL;
    ctx.fillRect(left + x1, top + y1, x2 - x1, y2 - y1);
    ctx.lineWidth = 2 * ratio;
    ctx.strokeStyle = STROKE;
    ctx.strokeRect(left + x1, top + y1, x2 - x1, y2 - y1);
    const confidence = typeof point.confidence === "number" ? ` ${Math.round(point.confidence * 100)}%` : "";
    const text = `${this.label}${confidence}`.trim();
    if (!text) return;
    ctx.font = `${Math.round(12 * ratio)}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    const textY = Math.max(top + y1, 14 * ratio);
    ctx.fillStyle = STROKE;
    ctx.fillRect(left + x1 - ratio, textY - 14 * ratio, ctx.measureText(text).width + 6 * ratio, 14 * ratio);
    ctx.fillStyle = "#000";
    ctx.fillText(text, left + x1 + 2 * ratio, textY - ratio);
  }
}
