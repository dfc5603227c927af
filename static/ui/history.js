// History: the user's earlier jobs, newest first, a page at a time (cursor pages from GET /api/jobs).
import { history } from "./api.js";
import { h, when } from "./dom.js";

const STATUS = { queued: "queued", processing: "running", completed: "done", failed: "failed", cancelled: "cancelled", expired: "expired" };
const TYPE = { titles: "Titles", summary: "Summary", chat: "Chat", image: "Image", response: "Response" };

export class HistoryPanel {
  /** `onOpen(jobId)` shows a job as a card. */
  constructor(root, { onOpen, pageSize = 8 }) {
    this.onOpen = onOpen;
    this.pageSize = pageSize;
    this.cursors = [null]; // the cursor of each page seen so far: Newer goes back one
    this.page = 0;
    this.list = h("ol", { class: "history-list" });
    this.note = h("p", { class: "muted", role: "status" });
    this.newer = h("button", { type: "button", text: "← Newer", onclick: () => this.go(this.page - 1) });
    this.older = h("button", { type: "button", text: "Older →", onclick: () => this.go(this.page + 1) });
    this.pageLabel = h("span", { class: "page-label" });
    root.replaceChildren(
      h("h2", { id: "history-title", text: "History" }),
      this.list,
      this.note,
      h("nav", { class: "pager", "aria-label": "History pages" }, this.newer, this.pageLabel, this.older),
    );
    root.hidden = false; // hidden in index.html until its heading exists (aria-labelledby points at it)
  }

  async go(page) {
    if (page < 0 || page >= this.cursors.length) return;
    this.page = page;
    await this.load();
  }

  /** Reload the page shown (after a job ends, say); the first page also picks up new jobs. */
  async load() {
    let data;
    try {
      data = await history({ cursor: this.cursors[this.page], limit: this.pageSize });
    } catch (err) {
      this.note.textContent = `History is not available right now: ${err.message}`;
      return;
    }
    this.cursors.length = this.page + 1;
    if (data.next_cursor) this.cursors.push(data.next_cursor);
    this.list.replaceChildren(...data.jobs.map((job) => this.item(job)));
    const t = data.totals;
    this.note.textContent = data.jobs.length
      ? `${t.jobs} job${t.jobs === 1 ? "" : "s"} in all, ${t.prompt_tokens + t.completion_tokens} tokens`
      : "No jobs yet: generate something and it shows up here.";
    this.newer.disabled = this.page === 0;
    this.older.disabled = !data.next_cursor;
    this.pageLabel.textContent = `Page ${this.page + 1}`;
  }

  item(job) {
    return h(
      "li",
      { "data-job-id": job.job_id, "data-status": job.status },
      h(
        "button",
        { type: "button", class: "history-open", onclick: () => this.onOpen(job.job_id) },
        h("span", { class: "h-type", text: TYPE[job.type] ?? job.type }),
        h("span", { class: `h-status s-${job.status}`, text: STATUS[job.status] ?? job.status }),
        h("span", { class: "h-summary", text: job.input_summary || "(no text)" }),
        h("time", { datetime: job.created_at, text: when(job.created_at) }),
      ),
    );
  }
}
