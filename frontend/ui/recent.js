// "The last N minutes" of a camera: its continuous recording exported for that range and played in
// the clip player. Cameras are suggested from the running sessions' names; any name can be typed.

const MINUTES_MAX = 60; // RECORD_EXPORT_MAX_S is an hour by default; the whole range is held in memory

export class RecentPanel {
  /** el: {form, camera, cameras (datalist), minutes, error}; player plays what the form asks for. */
  constructor(el, { player }) {
    this.el = el;
    this.player = player;
    el.minutes.max = String(MINUTES_MAX);
    el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.play();
    });
  }

  /** Offer the cameras of these sessions; the first becomes the choice while none is typed. */
  suggest(sessions) {
    const cameras = [...new Set(sessions.map((s) => s.camera).filter(Boolean))].sort();
    this.el.cameras.replaceChildren(...cameras.map((camera) => Object.assign(document.createElement("option"), { value: camera })));
    if (!this.el.camera.value && cameras.length) this.el.camera.value = cameras[0];
  }

  play() {
    const camera = this.el.camera.value.trim();
    const minutes = Number(this.el.minutes.value);
    let problem = "";
    if (!camera) problem = "Name the camera (the camera name its session was started with).";
    else if (!(Number.isFinite(minutes) && minutes > 0 && minutes <= MINUTES_MAX)) {
      problem = `Minutes: more than 0, at most ${MINUTES_MAX}.`;
    }
    this.el.error.textContent = problem;
    this.el.error.hidden = !problem;
    if (!problem) this.player.playRecent(camera, minutes);
  }
}
