// The operator page (/admin): polls /api/admin/overview every 3 s and /api/admin/charts every 15 s while the tab
// is visible, and acts on jobs (retry, cancel, purge; purging asks for a second press). The job in the detail
// panel is followed until it ends: a retried job is shown there at once, so its run can be watched.
import { api, me } from "./ui/api.js";
import {
  actionRows,
  backoffRows,
  endedRows,
  jobDetail,
  queueRows,
  runningRows,
  stuckRows,
  swap,
  table,
  workerRows,
} from "./ui/admin-views.js";
import { finishedChart, timesChart } from "./ui/charts.js";
import { h, seconds } from "./ui/dom.js";

const $ = (id) => document.getElementById(id);
const EVERY = 3000;
const CHARTS_EVERY = 15000;
const ARM_MS = 5000; // how long a first press of Purge waits for the second
const admin = (path, options) => api(`/api/admin${path}`, options);
const jobPath = (id) => `/jobs/${encodeURIComponent(id)}`;

let armedAt = null; // {key, until}: a Purge pressed once
let detailId = null; // the job in the detail panel
let lastDetail = null;
let lastOverview = null;

function notice(text, { bad = false } = {}) {
  const el = $("notice");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

function problem(err) {
  if (err.status === 404 && err.code === "not_found") {
    return "The server answered 404: you are signed out, no longer an operator, or it cannot check right now.";
  }
  return err.message || String(err);
}

const armed = (kind, id) => kind === "purge" && armedAt?.key === `purge:${id}` && armedAt.until > Date.now();
const handlers = { open: (id) => showJob(id, { focus: true }), act, armed };

async function act(kind, job) {
  const id = job.job_id;
  const label = `${job.type} job ${id.slice(0, 8)}`;
  if (kind === "purge" && !armed("purge", id)) {
    armedAt = { key: `purge:${id}`, until: Date.now() + ARM_MS };
    notice(`Press Purge again within ${ARM_MS / 1000} s to delete ${label} and its events for good.`);
    render();
    setTimeout(render, ARM_MS + 50);
    return;
  }
  armedAt = null;
  try {
    const answer = await admin(`${jobPath(id)}/${kind}`, { method: "POST" });
    if (kind === "retry") {
      notice(`Retried ${label} as job ${answer.job.job_id.slice(0, 8)}; it is shown under Job below.`);
      await showJob(answer.job.job_id, { job: answer.job });
    } else if (kind === "cancel") {
      notice(`Cancel of ${label}: ${answer.job.status === "cancelled" ? "cancelled" : "stopping"}.`);
      if (detailId === id) await showJob(id, { job: answer.job });
    } else {
      notice(`Purged ${label}.`);
      if (detailId === id) closeJob();
    }
  } catch (err) {
    notice(`Could not ${kind} ${label}: ${problem(err)}`, { bad: true });
  }
  refresh();
  refreshCharts();
}

function closeJob() {
  detailId = lastDetail = null;
  $("job-detail").replaceChildren();
}

async function showJob(id, { job, focus = false } = {}) {
  detailId = id;
  try {
    lastDetail = job || (await admin(jobPath(id)));
  } catch (err) {
    lastDetail = null;
    swap($("job-detail"), h("p", { class: "form-error", text: `Job ${id}: ${problem(err)}` }));
    return;
  }
  swap($("job-detail"), jobDetail(lastDetail, handlers));
  if (focus) $("job-title").focus();
}

async function followJob() {
  if (!detailId || !lastDetail) return;
  const before = lastDetail.status;
  if (!["queued", "processing"].includes(before)) return;
  await showJob(detailId);
  if (lastDetail && lastDetail.status !== before && !["queued", "processing"].includes(lastDetail.status)) {
    refreshCharts(); // it ended: the charts count it now
  }
}

function tile(label, value, note) {
  const extra = note ? h("span", { class: "muted", text: ` ${note}` }) : null;
  return h("div", {}, h("dt", { text: label }), h("dd", {}, h("span", { class: "big", text: value }), extra));
}

function render() {
  const o = lastOverview;
  if (!o) return;
  const slots = o.workers.reduce((n, w) => n + w.slots, 0);
  swap(
    $("tiles"),
    tile("Queued", String(o.queue.total)),
    tile("Running", String(o.running.total), slots ? `of ${slots} slots` : null),
    tile("Workers", String(o.workers.length), o.workers.length ? null : "none alive"),
    tile("Stuck", String(o.stuck.length)),
    tile("Failed", String(o.counts.failed), "kept"),
    tile("Paused providers", o.backoff === null ? "?" : String(o.backoff.length)),
  );
  swap(
    $("queue"),
    table("Queue by priority", ["Priority", "Queued", "Backing off", "Oldest waits"], queueRows(o.queue.by_priority), "Nothing is queued."),
  );
  swap(
    $("workers"),
    table("Workers", ["Worker", "Busy slots", "Last heartbeat", "Alive until"], workerRows(o.workers, o.now), "No worker is alive: start one with `aijobs worker`."),
  );
  swap(
    $("backoff"),
    o.backoff === null
      ? h("p", { class: "form-error", text: "Redis did not answer: back-off and workers are unknown." })
      : table("Provider back-off", ["Provider", "Model", "Paused for"], backoffRows(o.backoff), "No provider is paused."),
  );
  const more = o.running.total > o.running.jobs.length ? ` (the ${o.running.jobs.length} longest of ${o.running.total})` : "";
  swap(
    $("running"),
    table(`Running jobs${more}`, ["Job", "User", "Attempt", "Progress", "Worker", "On", "Started", "Actions"], runningRows(o.running.jobs, o.now, handlers), "No job is running."),
  );
  swap($("stuck"), table("Stuck jobs", ["Job", "User", "Status", "Why", "Actions"], stuckRows(o.stuck, handlers), "Nothing is stuck."));
  const ended = ["Job", "User", "Error", "Attempts", "Ended", "Actions"];
  swap($("failed"), table("Failed jobs", ended, endedRows(o.failed, handlers), "No failed job is kept."));
  swap($("expired"), table("Expired jobs", ended, endedRows(o.expired, handlers), "No expired job is kept."));
  swap($("actions"), table("Operator actions", ["When", "Operator", "Action", "Job", "What"], actionRows(o.actions), "No operator has acted yet."));
  if (lastDetail) swap($("job-detail"), jobDetail(lastDetail, handlers));
  $("updated").textContent = `Updated ${new Date(o.now).toLocaleTimeString()}; every ${seconds(EVERY / 1000)} while this tab is visible.`;
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    lastOverview = await admin("/overview");
    render();
    await followJob();
  } catch (err) {
    $("updated").textContent = `Not current: ${problem(err)}`;
  } finally {
    busy = false;
  }
}

async function refreshCharts() {
  try {
    const charts = await admin("/charts");
    swap($("chart-finished"), finishedChart(charts.minutes));
    swap($("chart-times"), timesChart(charts.minutes));
  } catch (err) {
    $("chart-finished").replaceChildren(h("p", { class: "form-error", text: `Charts: ${problem(err)}` }));
  }
}

function every(ms, fn) {
  setInterval(() => {
    if (!document.hidden) fn();
  }, ms);
}

$("lookup").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("lookup-id").value.trim();
  if (id) showJob(id, { focus: false });
});

$("purge").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = $("purge-status").value;
  const user = $("purge-user").value.trim();
  const minutes = Number($("purge-age").value);
  const what = `every ${status || "finished"} job${user ? ` of ${user}` : ""} that ended over ${minutes} min ago`;
  const button = $("purge").querySelector("button");
  if (armedAt?.key !== "purge:filter" || armedAt.until < Date.now()) {
    armedAt = { key: "purge:filter", until: Date.now() + ARM_MS };
    notice(`Press Purge again within ${ARM_MS / 1000} s to delete ${what}, with their events.`);
    button.textContent = "Press again to purge";
    setTimeout(() => (button.textContent = "Purge"), ARM_MS);
    return;
  }
  armedAt = null;
  button.textContent = "Purge";
  const body = { finished_before: Date.now() / 1000 - minutes * 60 };
  if (status) body.statuses = [status];
  if (user) body.user = user;
  try {
    const answer = await admin("/purge", { method: "POST", body });
    notice(`Purged ${answer.purged} job(s): ${what}.`);
  } catch (err) {
    notice(`Could not purge: ${problem(err)}`, { bad: true });
  }
  refresh();
  refreshCharts();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) {
    refresh();
    refreshCharts();
  }
});

async function boot() {
  try {
    const who = await me();
    $("who").textContent = `Signed in as ${who.user.name}, an operator.`;
  } catch (err) {
    $("who").textContent = `Not signed in: ${err.message}`;
  }
  await Promise.all([refresh(), refreshCharts()]);
  every(EVERY, refresh);
  every(CHARTS_EVERY, refreshCharts);
}

boot();
