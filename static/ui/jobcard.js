// One job on the page: status, progress, step, ETA or queue place, attempt, live transport, output, actions.
// Kept up to date from jobs-client.js events; AI output only ever goes in as text.
import { cancel, watchJob } from "/static/jobs-client.js";
import { getJob, retryJob } from "./api.js";
import { append, h, seconds, when } from "./dom.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const LABELS = { titles: "Titles", summary: "Summary", chat: "Chat", image: "Image", response: "Response" };
const STATUS_WORDS = {
  queued: "Waiting in the queue",
  processing: "Working on it",
  completed: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
  expired: "Expired",
};
const TRANSPORT_WORDS = { sse: "SSE", ws: "WebSocket", poll: "polling" };

// Error codes in plain words, with what to do next.
const PROBLEMS = {
  rate_limited: ["The AI service is busy right now.", "Wait a minute, then press Retry."],
  provider_timeout: ["The AI service took too long to answer.", "Press Retry; a shorter text also helps."],
  provider_server_error: ["The AI service had a problem on its side.", "Press Retry in a moment."],
  provider_bad_request: ["The AI service could not handle this request.", "Change the text a little, then Retry."],
  provider_auth: ["The AI service did not accept the service's API key.", "This is on our side: tell the operator."],
  content_refused: ["The AI declined to answer this request.", "Rephrase it and try again."],
  provider_bad_response: [
    "The AI service sent back an answer that cannot be shown (for images: SVG, or not an image at all).",
    "Retrying will not help; ask whoever runs this service to check its image model.",
  ],
  invalid_input: ["The request was not valid.", "Check the form fields and send it again."],
  task_error: ["Something went wrong while preparing the answer.", "Press Retry."],
  cancelled: ["You cancelled this job.", "Press Retry to run it again."],
  expired: ["This job waited too long in the queue and was dropped.", "Press Retry when the queue is shorter."],
};

export function summarize(input) {
  const text = input?.text ?? input?.prompt ?? input?.messages?.at?.(-1)?.content ?? "";
  const line = String(text).replace(/\s+/g, " ").trim();
  return line.length > 90 ? `${line.slice(0, 89)}…` : line;
}

const OWN_KEY_AUTH = ["The AI service did not accept your provider key.", "Check it, then Retry with the key."];

function plainError(job) {
  const code = job.error?.code ?? job.status;
  const known = code === "provider_auth" && job.own_provider_key ? OWN_KEY_AUTH : PROBLEMS[code];
  const [what, next] = known ?? ["The job did not finish.", "Press Retry to try again."];
  return { what, next, detail: job.error?.message ?? null };
}

export class JobCard {
  /** `job` is a public job (from POST, GET or history); callbacks: onRetry(card, newJob), onClose(card), onEnd(card). */
  constructor(job, { onRetry, onClose, onEnd } = {}) {
    this.job = structuredClone(job);
    this.job.progress ??= { percentage: 0, current_step: null, estimated_time_remaining: null };
    this.id = job.job_id;
    this.cb = { onRetry, onClose, onEnd };
    this.transport = null;
    this.reconnecting = false;
    this.build();
    this.render();
  }

  build() {
    const titleId = `job-${this.id}-title`;
    this.statusEl = h("span", { class: "status-word" });
    this.progressEl = h("progress", { max: "100", value: "0", "aria-labelledby": titleId });
    this.pctEl = h("span", { class: "pct" });
    this.stepEl = h("span", { class: "step" });
    this.etaEl = h("span", { class: "eta" });
    this.attemptEl = h("span", { class: "attempt" });
    this.transportEl = h("span", { class: "transport" });
    // A named group the keyboard can reach, so a long output can be scrolled without a mouse (not live: the
    // status line announces changes, not every token).
    this.outputEl = h("div", { class: "output", role: "group", "aria-label": "Output so far", tabindex: "0" });
    this.resultEl = h("div", { class: "result" });
    this.errorEl = h("div", { class: "problem", role: "alert" });
    this.cancelBtn = h("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => this.cancel() });
    this.retryBtn = h("button", { type: "button", class: "retry primary", text: "Retry", onclick: () => this.retry() });
    this.closeBtn = h("button", {
      type: "button",
      class: "close",
      text: "Remove",
      "aria-label": "Remove this job from the page (it stays in History)",
      onclick: () => this.cb.onClose?.(this),
    });
    this.el = h(
      "article",
      { class: "job", "data-job-id": this.id, "aria-labelledby": titleId },
      h(
        "header",
        {},
        h("h3", { id: titleId }, h("span", { class: "type", text: LABELS[this.job.type] ?? this.job.type })),
        h("p", { class: "input-summary", text: summarize(this.job.input) || this.job.input_summary || "" }),
      ),
      // Only the status line is live for screen readers: one announcement per status change, not per token.
      h("p", { class: "status", role: "status", "aria-live": "polite" }, this.statusEl),
      h("div", { class: "bar" }, this.progressEl, this.pctEl),
      h("p", { class: "meta" }, this.stepEl, this.etaEl, this.attemptEl, this.transportEl),
      this.outputEl,
      this.resultEl,
      this.errorEl,
      h("div", { class: "actions" }, this.cancelBtn, this.retryBtn, this.closeBtn),
    );
  }

  get terminal() {
    return TERMINAL.has(this.job.status);
  }

  /** Follow the job live until it ends (no-op for a finished job). Resumes from the server's snapshot. */
  async follow() {
    if (!this.terminal) {
      const queueTimer = setInterval(() => this.refreshQueue(), 3000);
      try {
        await watchJob(this.id, {
          onEvent: (e) => this.apply(e),
          onTransport: (name) => {
            this.transport = name;
            this.renderTransport();
          },
          onConnection: (state) => {
            this.reconnecting = state === "reconnecting";
            this.renderTransport();
          },
        });
      } catch (err) {
        if (err.code === "unauthenticated") {
          // Signed out (here or in another tab) or the token revoked: the page asks to sign in again.
          window.dispatchEvent(new CustomEvent("aijobs:signed-out", { detail: err.message }));
        } else if (err.code === "job_not_found") {
          this.job.status = "expired";
          this.job.error = { code: "job_not_found", message: "This job no longer exists on the server." };
        }
        // failed / cancelled / expired: the final event has already been applied
      } finally {
        clearInterval(queueTimer);
      }
    }
    this.transport = null;
    this.reconnecting = false;
    this.render();
    this.cb.onEnd?.(this);
  }

  // While queued and polling, nothing tells the page the queue moved: ask for the place and wait now and then
  // (SSE and WebSocket push `position` events instead).
  async refreshQueue() {
    if (this.job.status !== "queued" || document.hidden || this.transport === "sse" || this.transport === "ws") return;
    try {
      const fresh = await getJob(this.id);
      if (fresh.status === "queued" && this.job.status === "queued") {
        this.job.queue = fresh.queue;
        this.job.progress.estimated_time_remaining = fresh.progress?.estimated_time_remaining ?? null;
        this.renderMeta();
      }
    } catch {}
  }

  apply(event) {
    const job = this.job;
    const before = job.status;
    if (event.kind === "snapshot") {
      this.job = structuredClone(event.job);
      this.job.progress ??= { percentage: 0, current_step: null, estimated_time_remaining: null };
    } else if (event.kind === "progress") {
      job.progress = {
        percentage: event.percentage ?? job.progress.percentage,
        current_step: event.current_step ?? job.progress.current_step,
        estimated_time_remaining: event.estimated_time_remaining ?? null,
      };
    } else if (event.kind === "delta") {
      job.partial_output = (job.partial_output ?? "") + event.text;
    } else if (event.kind === "position") {
      if (job.status !== "queued") return;
      job.queue = event.queue;
      job.progress.estimated_time_remaining = event.estimated_time_remaining ?? null;
      this.renderMeta();
      return;
    } else if (event.kind === "status") {
      if (event.status === "processing" && event.attempt !== job.attempt) job.partial_output = "";
      for (const key of ["status", "attempt", "max_attempts", "result", "error", "model", "usage", "next_attempt_at"]) {
        if (key in event) job[key] = event[key];
      }
      if ("partial_output" in event) job.partial_output = event.partial_output;
      if (event.status !== "queued") job.queue = null;
      job.progress = {
        percentage: event.percentage ?? job.progress.percentage,
        current_step: event.current_step ?? job.progress.current_step,
        estimated_time_remaining: event.status === "queued" ? job.progress.estimated_time_remaining : null,
      };
    }
    if (event.kind === "delta") this.renderOutput();
    else this.render(before !== this.job.status);
  }

  render() {
    const job = this.job;
    this.el.dataset.status = job.status;
    this.statusEl.textContent = STATUS_WORDS[job.status] ?? job.status;
    this.renderMeta();
    this.renderTransport();
    this.renderOutput();
    this.renderResult();
    this.renderProblem();
    this.cancelBtn.hidden = this.terminal;
    this.retryBtn.hidden = !["failed", "cancelled", "expired"].includes(job.status) || job.error?.code === "job_not_found";
    this.retryBtn.textContent = job.own_provider_key ? "Retry with my key…" : "Retry";
    this.closeBtn.hidden = !this.terminal;
  }

  renderMeta() {
    const job = this.job;
    const pct = job.status === "completed" ? 100 : Math.round(job.progress?.percentage ?? 0);
    this.progressEl.value = pct;
    this.progressEl.setAttribute("aria-valuetext", `${pct}%`);
    this.pctEl.textContent = `${pct}%`;
    let step = job.progress?.current_step ?? "";
    if (job.status === "queued") {
      // Waiting for the provider's rate limit: the server's own words say so (and roughly for how long).
      if (job.error?.code === "rate_limited" && job.progress?.current_step) step = job.progress.current_step;
      else step = job.attempt > 0 ? "Waiting to try again…" : "Waiting for a worker…";
    }
    if (this.terminal) step = "";
    this.stepEl.textContent = step;
    this.etaEl.textContent = this.etaText();
    this.attemptEl.textContent =
      job.max_attempts > 1 ? `Attempt ${Math.max(1, job.attempt ?? 0)} of ${job.max_attempts}` : "";
  }

  etaText() {
    const job = this.job;
    if (job.status === "queued") {
      if (job.next_attempt_at) {
        const wait = (Date.parse(job.next_attempt_at) - Date.now()) / 1000;
        if (wait > 0) return `next try in about ${seconds(wait)}`;
      }
      const q = job.queue;
      const parts = [];
      if (q?.position !== null && q?.position !== undefined) {
        parts.push(q.position === 0 ? "next in line" : `${q.position} ahead in the queue`);
      }
      if (q?.estimated_wait !== null && q?.estimated_wait !== undefined) {
        parts.push(q.estimated_wait < 1 ? "starting now" : `starts in about ${seconds(q.estimated_wait)}`);
      }
      else if (q && q.workers_capacity === 0) parts.push("no worker is running");
      return parts.join(", ");
    }
    if (job.status === "processing") {
      const left = job.progress?.estimated_time_remaining;
      if (left === null || left === undefined) return "";
      return left < 1 ? "almost done" : `about ${seconds(left)} left`;
    }
    if (job.status === "completed" && job.completed_at) return `finished ${when(job.completed_at)}`;
    return "";
  }

  renderTransport() {
    const word = TRANSPORT_WORDS[this.transport] ?? this.transport;
    this.transportEl.textContent =
      !this.transport || this.terminal ? "" : this.reconnecting ? "connection lost, reconnecting…" : `live via ${word}`;
    this.el.dataset.transport = this.transport ?? "";
    this.el.dataset.connection = this.reconnecting ? "reconnecting" : "live";
  }

  renderOutput() {
    const job = this.job;
    // Streamed text while running, and whatever was written before a cancel or failure.
    const text = job.status === "completed" ? "" : (job.partial_output ?? "");
    this.outputEl.textContent = text;
    this.outputEl.hidden = !text;
    if (job.status === "processing" && job.partial_output) this.outputEl.scrollTop = this.outputEl.scrollHeight;
  }

  renderResult() {
    const job = this.job;
    const r = job.status === "completed" ? job.result : null;
    this.resultEl.hidden = !r;
    if (!r) {
      this.resultEl.replaceChildren();
      return;
    }
    if (Array.isArray(r.titles)) {
      const copyAll = h("button", { type: "button", class: "copy", text: "Copy all" });
      copyAll.addEventListener("click", () => copy(r.titles.join("\n"), copyAll));
      this.resultEl.replaceChildren(
        h(
          "ol",
          { class: "titles" },
          ...r.titles.map((t) => {
            const btn = h("button", { type: "button", class: "copy", text: "Copy", "aria-label": `Copy “${t}”` });
            btn.addEventListener("click", () => copy(t, btn));
            return h("li", {}, h("span", { class: "title-text", text: t }), btn);
          }),
        ),
        copyAll,
      );
    } else if (typeof r.summary === "string") {
      this.resultEl.replaceChildren(h("p", { class: "text", text: r.summary }));
    } else if (typeof r.reply === "string") {
      this.resultEl.replaceChildren(h("p", { class: "text reply", text: r.reply }));
    } else if (Array.isArray(r.images)) {
      const alt = `Generated image: ${summarize(job.input)}`;
      const safe = r.images.filter((src) => /^(data:image\/|https:\/\/)/.test(String(src)));
      this.resultEl.replaceChildren(
        h("div", { class: "images" }, ...safe.map((src) => h("img", { src, alt, loading: "lazy", decoding: "async" }))),
      );
    } else {
      this.resultEl.replaceChildren(h("pre", { class: "text", text: JSON.stringify(r, null, 2) }));
    }
  }

  renderProblem() {
    const job = this.job;
    if (!["failed", "cancelled", "expired"].includes(job.status)) {
      this.errorEl.replaceChildren();
      this.errorEl.hidden = true;
      return;
    }
    const { what, next, detail } = plainError(job);
    this.errorEl.hidden = false;
    this.errorEl.replaceChildren();
    append(this.errorEl, [
      h("strong", { text: what }),
      " ",
      h("span", { text: next }),
      detail && job.status === "failed" ? h("small", { class: "detail", text: `Details: ${detail}` }) : null,
      job.partial_output ? h("small", { class: "detail", text: "The text written before it stopped is kept above." }) : null,
    ]);
  }

  async cancel() {
    this.cancelBtn.disabled = true;
    this.cancelBtn.textContent = "Cancelling…";
    try {
      const job = await cancel(this.id);
      if (TERMINAL.has(job.status)) this.apply({ kind: "snapshot", job });
    } catch (err) {
      this.errorEl.hidden = false;
      this.errorEl.replaceChildren(h("strong", { text: "Could not cancel." }), " ", h("span", { text: err.message }));
    } finally {
      this.cancelBtn.disabled = false;
      this.cancelBtn.textContent = "Cancel";
    }
  }

  /** A job that ran on the user's own provider key is retried only with the key sent again (the server does not
   * keep it, and never switches to its own key): ask for it in the card first. */
  async retry(key) {
    if (this.job.own_provider_key && !key) {
      this.askForKey();
      return;
    }
    this.retryBtn.disabled = true;
    this.retryBtn.textContent = "Retrying…";
    try {
      const fresh = await retryJob(this.id, key);
      this.keyForm?.remove();
      this.keyForm = null;
      this.cb.onRetry?.(this, fresh);
    } catch (err) {
      this.retryBtn.disabled = false;
      this.retryBtn.textContent = this.job.own_provider_key ? "Retry with my key…" : "Retry";
      if (err.code === "provider_key_required") {
        this.job.own_provider_key = true;
        this.askForKey();
        return;
      }
      this.errorEl.hidden = false;
      this.errorEl.append(h("small", { class: "detail", text: `Retry did not start: ${err.message}` }));
    }
  }

  askForKey() {
    if (this.keyForm) {
      this.keyForm.querySelector("input").focus();
      return;
    }
    const inputId = `job-${this.id}-key`;
    const input = h("input", { id: inputId, type: "password", autocomplete: "off", required: true, spellcheck: "false" });
    this.keyForm = h(
      "form",
      {
        class: "key-retry",
        onsubmit: (e) => {
          e.preventDefault();
          if (input.value.trim()) this.retry(input.value.trim());
        },
      },
      h("p", { text: "This job ran on your own provider key, which the server does not keep. Enter it to retry." }),
      h("label", { for: inputId, text: "Your provider key" }),
      input,
      h("button", { type: "submit", class: "primary", text: "Retry with this key" }),
    );
    this.el.querySelector(".actions").before(this.keyForm);
    input.focus();
  }
}

async function copy(text, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy";
  }
  setTimeout(() => {
    button.textContent = label;
  }, 1500);
}
