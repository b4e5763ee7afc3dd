// The banners over the page: an error stays until dismissed (a person must see it), a notice passes,
// and the model warning stays as long as the weights are untrained.

import { ApiError } from "./api.js";

const NOTICE_MS = 8000;

/** An error in words a person can act on. */
export function describe(err) {
  if (err instanceof ApiError) return err.message;
  return `Something went wrong in the page: ${err && err.message ? err.message : err}`;
}

export class Banners {
  constructor({ warning, warningText, error, errorText, errorDismiss, notice }) {
    this.el = { warning, warningText, error, errorText, notice };
    this.noticeTimer = 0;
    errorDismiss.addEventListener("click", () => this.clearError());
  }

  showError(message) {
    this.el.errorText.textContent = message;
    this.el.error.hidden = false;
  }

  clearError() {
    this.el.error.hidden = true;
    this.el.errorText.textContent = "";
  }

  /** A passing remark (session started, stopped, left); it clears itself. */
  showNotice(message) {
    clearTimeout(this.noticeTimer);
    this.el.notice.textContent = message || "";
    this.el.notice.hidden = !message;
    if (message) this.noticeTimer = setTimeout(() => this.showNotice(null), NOTICE_MS);
  }

  showModelWarning(model, warning) {
    const text = warning || (model && model.warning) ||
      (model && model.trained === false ? "Model weights are NOT trained: detections are random." : null);
    if (text) {
      this.el.warningText.textContent = text;
      this.el.warning.hidden = false;
    } else if (model && model.trained === true) {
      this.el.warning.hidden = true;
    }
  }
}
