// The queue at a glance (GET /api/stats): waiting, running, the wait a new job would have, live workers.
import { stats } from "./api.js";
import { h, seconds } from "./dom.js";

export class QueuePanel {
  constructor(root, { every = 3000 } = {}) {
    this.values = {};
    const row = (key, label) => {
      this.values[key] = h("dd", { "data-key": key, text: "…" });
      return [h("dt", { text: label }), this.values[key]];
    };
    this.note = h("p", { class: "muted" });
    root.replaceChildren(
      h("h2", { id: "queue-title", text: "Queue" }),
      h(
        "dl",
        { class: "stats" },
        row("waiting", "Waiting"),
        row("running", "Running"),
        row("wait", "Estimated wait"),
        row("workers", "Live workers"),
        row("mine", "Yours active"),
      ),
      this.note,
    );
    root.hidden = false; // hidden in index.html until its heading exists (aria-labelledby points at it)
    this.every = every;
  }

  start() {
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, this.every);
  }

  async refresh() {
    let s;
    try {
      s = await stats();
    } catch (err) {
      this.note.textContent = `Queue figures are not available: ${err.message}`;
      return;
    }
    const v = this.values;
    v.waiting.textContent = String(s.total_queued);
    v.running.textContent = String(s.total_processing);
    v.wait.textContent =
      s.estimated_wait_time === null ? "unknown" : s.estimated_wait_time === 0 ? "none" : `about ${seconds(s.estimated_wait_time)}`;
    v.workers.textContent = `${s.workers.live} (${s.workers.capacity} at a time)`;
    v.mine.textContent = String(s.user.active);
    this.note.textContent = s.workers.live
      ? ""
      : "No worker is running, so jobs wait. Start one with `aijobs worker` (scripts/dev starts one for you).";
  }
}
