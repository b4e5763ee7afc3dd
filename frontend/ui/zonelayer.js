// Zones and lines painted on a transparent canvas over the video, in normalised coordinates
// (0..1, x right, y down) scaled to the canvas's size on screen, so they follow any resize.

const PALETTE = ["#3fa7ff", "#ffb020", "#35c46a", "#ff5da2", "#b388ff", "#00d1c1", "#ff7a45", "#d4e157"];
const ARROW_PX = 26;

/** A stable colour for a name, so a zone keeps its colour when others are added or removed. */
export function colourFor(name) {
  let hash = 0;
  for (const char of String(name)) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

export class ZoneLayer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.shapes = { zones: [], lines: [] };
    this.draft = null; // {kind, points, hover}
    this.frame = 0;
    new ResizeObserver(() => this.redraw()).observe(canvas);
  }

  /** What to paint: the session's zones object (normalised) and the shape being drawn, if any. */
  show(shapes, draft) {
    this.shapes = shapes;
    this.draft = draft;
    this.redraw();
  }

  /** Paint on the next animation frame; many changes in one frame paint once. */
  redraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.paint();
    });
  }

  paint() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    const pixelWidth = Math.max(1, Math.round(width * ratio));
    const pixelHeight = Math.max(1, Math.round(height * ratio));
    if (this.canvas.width !== pixelWidth || this.canvas.height !== pixelHeight) {
      this.canvas.width = pixelWidth;
      this.canvas.height = pixelHeight;
    }
    const ctx = this.ctx;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (!width || !height) return;
    const at = ([x, y]) => [x * width, y * height];
    ctx.lineJoin = "round";
    ctx.font = "600 13px system-ui, sans-serif";
    for (const zone of this.shapes.zones || []) this.zone(zone.points.map(at), zone.name);
    for (const line of this.shapes.lines || []) this.line(at(line.a), at(line.b), line.name);
    if (this.draft) this.draftShape(this.draft, at);
  }

  zone(points, name) {
    if (points.length < 2) return;
    const ctx = this.ctx;
    const colour = colourFor(name);
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.fillStyle = withAlpha(colour, 0.2);
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = colour;
    ctx.stroke();
    // The name sits at the vertex nearest the top left, inside the picture.
    const [x, y] = points.reduce((best, p) => (p[0] + p[1] < best[0] + best[1] ? p : best));
    this.tag(name, x + 4, y + 4, colour);
  }

  line(a, b, name) {
    const ctx = this.ctx;
    const colour = colourFor(name);
    ctx.lineWidth = 3;
    ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.moveTo(...a);
    ctx.lineTo(...b);
    ctx.stroke();
    const dx = b[0] - a[0];
    const dy = b[1] - a[1];
    const length = Math.hypot(dx, dy);
    if (length < 1) return;
    // "in" is crossing to the side where (b - a) × (p - a) > 0; with y down that side is along (-dy, dx).
    const nx = -dy / length;
    const ny = dx / length;
    const mx = (a[0] + b[0]) / 2;
    const my = (a[1] + b[1]) / 2;
    const tip = [mx + nx * ARROW_PX, my + ny * ARROW_PX];
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    ctx.moveTo(mx, my);
    ctx.lineTo(...tip);
    ctx.stroke();
    const head = 8;
    ctx.beginPath();
    ctx.moveTo(...tip);
    ctx.lineTo(tip[0] - nx * head + ny * head * 0.6, tip[1] - ny * head - nx * head * 0.6);
    ctx.lineTo(tip[0] - nx * head - ny * head * 0.6, tip[1] - ny * head + nx * head * 0.6);
    ctx.closePath();
    ctx.fillStyle = colour;
    ctx.fill();
    this.tag("in", tip[0] + nx * 4 - 8, tip[1] + ny * 4 - 9, colour);
    // The name sits by the first end, on the "out" side, so nothing but the arrow marks the "in" side.
    const ux = dx / length;
    const uy = dy / length;
    this.tag(name, a[0] + ux * 6 - nx * 14 - 4, a[1] + uy * 6 - ny * 14 - 9, colour);
  }

  draftShape({ kind, points, hover }, at) {
    const ctx = this.ctx;
    const pixels = points.map(at);
    const path = hover ? [...pixels, at(hover)] : pixels;
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ffd24d";
    if (path.length >= 2) {
      ctx.beginPath();
      path.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (kind === "zone" && path.length >= 3) {
        ctx.closePath();
        ctx.fillStyle = "rgba(255, 210, 77, 0.15)";
        ctx.fill();
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.fillStyle = "#ffd24d";
    for (const [x, y] of pixels) {
      ctx.beginPath();
      ctx.arc(x, y, 4, 0, Math.PI * 2);
      ctx.fill();
    }
  }

  tag(text, x, y, colour) {
    const ctx = this.ctx;
    const width = ctx.measureText(text).width + 8;
    const left = Math.min(Math.max(0, x), Math.max(0, this.canvas.clientWidth - width));
    const top = Math.min(Math.max(0, y), Math.max(0, this.canvas.clientHeight - 18));
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(left, top, width, 18);
    ctx.fillStyle = colour;
    ctx.textBaseline = "middle";
    ctx.fillText(text, left + 4, top + 9.5);
  }
}
