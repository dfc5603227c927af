// The page's bootstrap: sign-in check, forms, the open job cards (restored after a reload), history and queue.
import { getJob, me, signIn } from "./ui/api.js";
import { h } from "./ui/dom.js";
import { mountForms } from "./ui/forms.js";
import { HistoryPanel } from "./ui/history.js";
import { JobCard } from "./ui/jobcard.js";
import { QueuePanel } from "./ui/queue.js";
import { forget, openIds, remember } from "./ui/store.js";

const $ = (id) => document.getElementById(id);
const cards = new Map();
const jobsEl = $("jobs");
let historyPanel;
let queuePanel;

function refreshPanels() {
  historyPanel?.load();
  queuePanel?.refresh();
}

function updateEmpty() {
  $("jobs-empty").hidden = cards.size > 0;
}

/** Show a job as a card (at the top, or in place of `replacing`) and follow it live. */
function show(job, { replacing, focus = false } = {}) {
  const existing = cards.get(job.job_id);
  if (existing) {
    existing.el.scrollIntoView({ block: "nearest" });
    if (focus) existing.el.querySelector("h3")?.focus();
    return existing;
  }
  const card = new JobCard(job, {
    onRetry: (old, fresh) => {
      show(fresh, { replacing: old, focus: true });
      refreshPanels();
    },
    onClose: (c) => {
      c.el.remove();
      cards.delete(c.id);
      forget(c.id);
      updateEmpty();
      $("form-area").querySelector("form:not([hidden]) button[type=submit]")?.focus();
    },
    onEnd: refreshPanels,
  });
  cards.set(card.id, card);
  remember(card.id, { replacing: replacing?.id });
  if (replacing) {
    replacing.el.replaceWith(card.el);
    cards.delete(replacing.id);
  } else {
    jobsEl.prepend(card.el);
  }
  updateEmpty();
  if (focus) {
    const heading = card.el.querySelector("h3");
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
  card.follow();
  return card;
}

async function open(jobId, options) {
  if (cards.has(jobId)) return show({ job_id: jobId }, options);
  try {
    return show(await getJob(jobId), options);
  } catch (err) {
    if (err.code === "job_not_found") forget(jobId);
    return null;
  }
}

async function signInForm() {
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true });
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h(
    "form",
    { class: "signin" },
    h("h2", { text: "Sign in" }),
    h("p", { text: "Paste an API token (make one with `aijobs users create NAME`)." }),
    h("label", { for: "token", text: "API token" }),
    input,
    h("button", { type: "submit", class: "primary", text: "Sign in" }),
    error,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await signIn(input.value.trim());
      location.reload();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  $("form-area").replaceChildren(form);
  input.focus();
}

async function boot() {
  try {
    const who = await me();
    $("who").textContent = `Signed in as ${who.user.name}`;
  } catch (err) {
    if (err.status === 401) return signInForm();
    $("who").textContent = `The server is not answering: ${err.message}`;
  }
  mountForms($("form-area"), {
    onCreated: (job) => {
      show(job);
      refreshPanels();
    },
  });
  historyPanel = new HistoryPanel($("history"), { onOpen: (id) => open(id, { focus: true }) });
  historyPanel.load();
  queuePanel = new QueuePanel($("queue"));
  queuePanel.start();
  // Oldest first, so the newest ends up on top, as it was before the reload.
  for (const id of openIds().reverse()) await open(id);
  updateEmpty();
}

window.addEventListener(
  "aijobs:signed-out",
  (e) => {
    $("who").textContent = e.detail || "Signed out.";
    signInForm();
  },
  { once: true },
);

boot();
