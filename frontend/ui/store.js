// The watched session's state, in one place that only changes through named steps: the HUD, the
// form and the controller read it, and the page redraws when one of them calls notify().

export class SessionStore {
  constructor() {
    this.listeners = [];
    this.finished(null);
  }

  /** listener(store) runs on every notify(), in the order subscribed. */
  subscribe(listener) {
    this.listeners.push(listener);
  }

  notify() {
    for (const listener of this.listeners) listener(this);
  }

  /** phase: idle | starting | connecting | live | stopping. */
  setPhase(phase) {
    this.phase = phase;
  }

  setPaused(paused) {
    this.paused = paused;
  }

  starting() {
    this.phase = "starting";
    this.endedReason = null;
  }

  /** A session (from start, the list, or the back/forward cache) is being joined. */
  attached(session) {
    this.session = {
      id: session.session_id,
      websocketPath: session.websocket_path,
      stream: session.stream || null,
      model: session.model || null,
    };
    this.phase = "connecting";
    this.serverState = session.state || session.status || null;
    this.paused = Boolean(session.paused);
    this.stats = session.stats || null;
    this.lastError = session.last_error || null;
    this.lastErrorAt = null; // null: the error was there before this page joined
    this.publishErrorRises = 0; // status messages in a row in which publish_errors grew
    this.waitingSince = null; // since when frames are expected (joined, resumed, camera back, tab shown)
    this.retryReason = null;
    this.endedReason = null;
  }

  /** The service accepted this viewer; true when that makes the session live. */
  connected() {
    this.retryAt = null;
    this.retryReason = null;
    this.expectFrames();
    if (this.phase !== "connecting") return false;
    this.phase = "live";
    return true;
  }

  /** The WebSocket itself reconnects; reason: the service's words when it refused this viewer for now. */
  retrying(delayMs, refused, reason) {
    this.retryAt = Date.now() + delayMs;
    this.retryReason = refused ? reason : null;
  }

  disconnected() {
    this.retryAt = null;
    this.retryReason = null;
  }

  /** classCounts: class name -> {count, tracks: [track ids]}; drawingOff: the frame came without a picture. */
  frameArrived(classCounts, drawingOff) {
    this.framesReceived += 1;
    this.classCounts = classCounts;
    this.drawingOff = drawingOff;
  }

  streamInfo(message) {
    this.session.stream = { width: message.width, height: message.height, fps: message.fps, codec: message.codec };
    if (message.model) this.session.model = message.model;
    this.updateState(message);
  }

  status(message) {
    this.updateState(message);
    const before = this.stats ? this.stats.publish_errors : undefined;
    const after = message.stats ? message.stats.publish_errors : undefined;
    this.publishErrorRises = typeof before === "number" && after > before ? this.publishErrorRises + 1 : 0;
    this.stats = message.stats || this.stats;
    const error = message.last_error || null;
    if (error !== this.lastError) {
      this.lastError = error;
      this.lastErrorAt = error ? Date.now() : null;
    }
  }

  /** State and pause from stream_info or status; frames are expected again once it runs unpaused. */
  updateState(message) {
    const wasWaiting = this.paused || this.serverState !== "running";
    this.serverState = message.state || this.serverState;
    this.paused = Boolean(message.paused);
    if (wasWaiting && !this.paused && this.serverState === "running") this.expectFrames();
  }

  expectFrames() {
    this.waitingSince = Date.now();
  }

  /** Back to idle; reason (or null) is what the idle overlay says. */
  finished(reason) {
    this.phase = "idle";
    this.session = null; // {id, websocketPath, stream, model}
    this.serverState = null;
    this.paused = false;
    this.stats = null;
    this.lastError = null;
    this.lastErrorAt = null;
    this.publishErrorRises = 0;
    this.waitingSince = null;
    this.retryAt = null;
    this.retryReason = null;
    this.framesReceived = 0;
    this.classCounts = new Map();
    this.drawingOff = false;
    this.endedReason = reason;
  }
}
