// The React example: submit a titles job and follow it live to its result with useCreateJob and useJob.
// No JSX and no build step (createElement as `h`); in an app with a bundler the same components read as JSX.

import { StrictMode, createElement as h, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { useCreateJob, useJob } from "/static/react/use-job.js";

const STATUS = {
  queued: "Waiting in the queue",
  processing: "Working on it",
  completed: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
  expired: "Expired",
};
const TRANSPORT = { sse: "SSE", ws: "WebSocket", poll: "polling" };

/** Signed in? With AIJOBS_DEMO_LOGIN (scripts/dev), an empty POST /api/session signs this browser in as "demo". */
function useSignedIn() {
  const [who, setWho] = useState({ state: "checking" });
  useEffect(() => {
    const json = { "content-type": "application/json" };
    (async () => {
      let r = await fetch("/api/me");
      if (r.status === 401) r = await fetch("/api/session", { method: "POST", headers: json, body: "{}" });
      if (!r.ok) return setWho({ state: "out" });
      const body = await r.json();
      setWho({ state: "in", name: body.user.name });
    })().catch(() => setWho({ state: "out" }));
  }, []);
  return who;
}

function JobView({ jobId, onClose }) {
  // One live watch for this id; a new id (the next submit) re-subscribes, unmounting (Close) disconnects.
  const { job, status, progress, output, result, error, transport, connection, queue, cancel } = useJob(jobId);
  const percentage = Math.round(progress?.percentage ?? 0);
  const ended = connection === "closed";
  const how = ended
    ? "finished"
    : connection === "live"
      ? `live via ${TRANSPORT[transport]}`
      : connection === "reconnecting"
        ? `reconnecting (${TRANSPORT[transport]})…`
        : "connecting…";
  return h(
    "section",
    {
      className: "job",
      "aria-label": "Your job",
      "data-job-id": jobId,
      "data-status": status ?? "",
      "data-transport": transport ?? "",
    },
    h("h2", null, `Titles job ${jobId.slice(0, 8)}`),
    h("p", { className: "status", "aria-live": "polite" }, status ? STATUS[status] : "Connecting…"),
    h("progress", { max: 100, value: percentage, "aria-label": "Progress" }),
    h(
      "p",
      { className: "meta muted" },
      h("span", { className: "step" }, progress?.current_step ?? ""),
      h("span", { className: "percent" }, `${percentage}%`),
      status === "queued" && queue?.position != null
        ? h("span", { className: "place" }, `${queue.position} ahead`)
        : null,
      job ? h("span", { className: "attempt" }, `Attempt ${job.attempt} of ${job.max_attempts}`) : null,
      h("span", { className: "transport" }, how),
    ),
    // The model's words as text nodes, never as HTML.
    output && !result ? h("pre", { className: "output" }, output) : null,
    result?.titles ? h("ol", { className: "titles" }, result.titles.map((t, i) => h("li", { key: i }, t))) : null,
    error ? h("p", { className: "error", role: "alert" }, error.message) : null,
    h(
      "div",
      { className: "actions" },
      ended
        ? null
        : h("button", { type: "button", className: "cancel", onClick: () => cancel().catch(() => {}) }, "Cancel"),
      h("button", { type: "button", className: "close", onClick: onClose }, "Close"),
    ),
  );
}

function App() {
  const who = useSignedIn();
  const { create, pending, error } = useCreateJob();
  const [text, setText] = useState("How a job queue keeps an AI feature fast, even when the model is slow.");
  const [jobId, setJobId] = useState(null);

  async function submit(event) {
    event.preventDefault();
    const job = await create("titles", { text });
    if (job) setJobId(job.job_id);
  }

  return h(
    "main",
    null,
    h("h1", null, "aijobs from React"),
    h(
      "p",
      { className: "muted" },
      "useCreateJob submits, useJob follows the job live (SSE, WebSocket or polling, resuming after a cut). ",
      who.state === "in" ? `Signed in as ${who.name}.` : null,
    ),
    who.state === "out"
      ? h("p", { className: "error", role: "alert" }, "Not signed in: sign in on the main page (/), then come back.")
      : null,
    h(
      "form",
      { onSubmit: submit },
      h("label", { htmlFor: "text" }, "Your post"),
      h("textarea", { id: "text", rows: 4, value: text, onChange: (e) => setText(e.target.value), required: true }),
      h(
        "div",
        { className: "actions" },
        h(
          "button",
          { type: "submit", className: "primary", disabled: pending || who.state !== "in" },
          pending ? "Sending…" : "Suggest titles",
        ),
      ),
      error ? h("p", { className: "error", role: "alert" }, error.message) : null,
    ),
    jobId ? h(JobView, { jobId, onClose: () => setJobId(null) }) : null,
  );
}

createRoot(document.getElementById("root")).render(h(StrictMode, null, h(App)));
