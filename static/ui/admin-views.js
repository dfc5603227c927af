// The operator page's tables and job detail, built from /api/admin/* answers. Text only (dom.js `h`), never HTML.
// Buttons carry `data-key` ("retry:<job id>"): a table rebuilt by the next poll gives focus back to the same button.
import { h, seconds } from "./dom.js";

const shortId = (id) => id.slice(0, 8);
const ago = (iso, now) => (iso ? `${seconds((Date.parse(now) - Date.parse(iso)) / 1000)} ago` : "–");
const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");
const owner = (job) => job.user.name ?? `(user ${shortId(job.user.id)})`;

/** Replace `root`'s content, keeping focus on the button with the same data-key if it had it. */
export function swap(root, ...children) {
  const key = root.contains(document.activeElement) ? document.activeElement.dataset.key : undefined;
  root.replaceChildren(...children);
  if (key) root.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

/** Each cell labelled with its column's header (`data-label`): on a phone a row stacks into lines "Header: value". */
export function labelCells(head, rows) {
  for (const row of rows) [...row.children].forEach((cell, i) => cell.setAttribute("data-label", head[i] ?? ""));
  return rows;
}

/** A table in a focusable, labelled box that scrolls sideways if it must (never the page); stacked on a phone. */
export function table(label, head, rows, empty) {
  if (!rows.length) return h("p", { class: "muted", text: empty });
  labelCells(head, rows);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${label}, table` },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows),
    ),
  );
}

/** The button a job row opens the detail with: its type and short id. */
function jobButton(job, open) {
  return h("button", {
    type: "button",
    class: "job-link",
    "data-key": `open:${job.job_id}`,
    title: `Show job ${job.job_id} below`,
    text: `${job.type} ${shortId(job.job_id)}`,
    onclick: () => open(job.job_id),
  });
}

export function actionButton(kind, job, act, armed) {
  const confirm = armed?.(kind, job.job_id);
  const words = { retry: "Retry", cancel: "Cancel", purge: confirm ? "Press again to purge" : "Purge" };
  return h("button", {
    type: "button",
    class: `act act-${kind}${confirm ? " armed" : ""}`,
    "data-key": `${kind}:${job.job_id}`,
    "aria-label": `${words[kind]} job ${shortId(job.job_id)} (${job.type} of ${owner(job)})`,
    text: words[kind],
    onclick: () => act(kind, job),
  });
}

const errorText = (job) => (job.error ? `${job.error.code}: ${job.error.message}` : "–");

function attempts(job) {
  const earlier = job.attempts.filter((a) => a.error).map((a) => a.error);
  return `${job.attempt} of ${job.max_attempts}${earlier.length ? ` (before: ${earlier.join(", ")})` : ""}`;
}

export function runningRows(jobs, now, { open, act, armed }) {
  return jobs.map((job) =>
    h(
      "tr",
      { "data-job-id": job.job_id },
      h("td", {}, jobButton(job, open)),
      h("td", { text: owner(job) }),
      h("td", { text: attempts(job) }),
      h("td", { text: `${job.percentage}%${job.current_step ? ` ${job.current_step}` : ""}` }),
      h("td", { class: "mono", text: job.worker_id ?? "–" }),
      h("td", { text: job.running_on ? `${job.running_on.provider} ${job.running_on.model}` : "–" }),
      h("td", { text: ago(job.started_at, now) }),
      h("td", {}, job.cancel_requested ? "Stopping…" : actionButton("cancel", job, act, armed)),
    ),
  );
}

export function stuckRows(jobs, { open, act, armed }) {
  return jobs.map((job) =>
    h(
      "tr",
      { "data-job-id": job.job_id },
      h("td", {}, jobButton(job, open)),
      h("td", { text: owner(job) }),
      h("td", { text: job.status }),
      h("td", { text: job.reason }),
      h("td", {}, actionButton("cancel", job, act, armed)),
    ),
  );
}

export function endedRows(jobs, { open, act, armed }) {
  return jobs.map((job) =>
    h(
      "tr",
      { "data-job-id": job.job_id, "data-status": job.status },
      h("td", {}, jobButton(job, open)),
      h("td", { text: owner(job) }),
      h("td", { class: "error-cell", text: errorText(job) }),
      h("td", { text: `${job.attempt} of ${job.max_attempts}` }),
      h("td", { text: clock(job.completed_at) }),
      h(
        "td",
        { class: "row-actions" },
        job.own_provider_key ? null : actionButton("retry", job, act, armed),
        actionButton("purge", job, act, armed),
      ),
    ),
  );
}

export function queueRows(byPriority) {
  return byPriority.map((q) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", text: String(q.priority) }),
      h("td", { text: String(q.queued) }),
      h("td", { text: String(q.deferred) }),
      h("td", { text: seconds(q.oldest_wait) }),
    ),
  );
}

export function workerRows(workers, now) {
  return workers.map((w) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", class: "mono", text: w.id }),
      h("td", { text: `${w.busy} of ${w.slots}` }),
      h("td", { text: ago(w.last_heartbeat, now) }),
      h("td", { text: clock(w.alive_until) }),
    ),
  );
}

export function backoffRows(pauses) {
  return pauses.map((p) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", text: p.provider }),
      h("td", { text: p.model }),
      h("td", { text: seconds(p.seconds_left) }),
    ),
  );
}

function detailText(action) {
  const d = action.detail || {};
  if (action.action === "retry") return `new job ${shortId(d.new_job_id || "")}`;
  if (action.action === "cancel") return `now ${d.status}`;
  if (action.job_id) return `${d.type ?? ""} ${d.status ?? ""}`.trim();
  const f = d.filter || {};
  const what = [f.statuses?.join("/") || "finished", f.user ? `of ${f.user}` : null].filter(Boolean).join(" ");
  return `${d.purged} ${what} job(s) ended before ${clock(new Date(f.finished_before * 1000).toISOString())}`;
}

export function actionRows(actions) {
  return actions.map((a) =>
    h(
      "tr",
      {},
      h("td", { text: clock(a.at) }),
      h("td", { text: a.operator.name }),
      h("td", { text: a.action }),
      h("td", { class: "mono", text: a.job_id ? shortId(a.job_id) : "by filter" }),
      h("td", { text: detailText(a) }),
    ),
  );
}

/** One job in full (the detail panel): what it is, whose, where it stands, and what can be done to it. */
export function jobDetail(job, { act, armed }) {
  const row = (label, value) => [h("dt", { text: label }), h("dd", { text: value ?? "–" })];
  const active = job.status === "queued" || job.status === "processing";
  const canRetry = ["failed", "cancelled", "expired"].includes(job.status) && !job.own_provider_key;
  return h(
    "article",
    { class: "detail", "data-job-id": job.job_id, "data-status": job.status },
    h("h3", { text: `${job.type} job of ${owner(job)}` }),
    h("p", { class: `detail-status s-${job.status}`, text: job.status }),
    h(
      "dl",
      { class: "stats" },
      row("Id", job.job_id),
      row("Input", job.input_summary),
      row("Attempt", attempts(job)),
      row("Step", job.current_step),
      row("Error", job.error ? errorText(job) : null),
      row("Worker", job.worker_id),
      row("Retry of", job.retry_of),
      row("Request", job.request_id),
      row("Created", clock(job.created_at)),
      row("Started", clock(job.started_at)),
      row("Ended", clock(job.completed_at)),
    ),
    h(
      "div",
      { class: "actions" },
      canRetry ? actionButton("retry", job, act, armed) : null,
      active && !job.cancel_requested ? actionButton("cancel", job, act, armed) : null,
      active ? null : actionButton("purge", job, act, armed),
    ),
  );
}
