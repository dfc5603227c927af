// Minimal page: submit a titles job and follow it over SSE. AI output is always inserted as text.
const jobs = document.getElementById("jobs");

function card(jobId) {
  const el = document.createElement("article");
  el.className = "job";
  el.innerHTML = `<header><strong class="status">queued</strong> <span class="step"></span></header>
    <progress max="100" value="0"></progress><pre class="output"></pre><ol class="result"></ol><p class="error"></p>`;
  el.dataset.jobId = jobId;
  jobs.prepend(el);
  return el;
}

function render(el, job) {
  el.querySelector(".status").textContent = job.status;
  el.querySelector(".step").textContent = job.progress?.current_step ?? job.current_step ?? "";
  el.querySelector("progress").value = job.progress?.percentage ?? job.percentage ?? 0;
  if (job.result?.titles) {
    const list = el.querySelector(".result");
    list.replaceChildren(...job.result.titles.map((t) => Object.assign(document.createElement("li"), { textContent: t })));
    el.querySelector(".output").textContent = "";
  }
  if (job.error) el.querySelector(".error").textContent = job.error.message;
}

function watch(el, jobId) {
  const source = new EventSource(`/api/jobs/${jobId}/events`);
  const state = {};
  const apply = (patch) => { Object.assign(state, patch); render(el, state); };
  source.addEventListener("snapshot", (e) => apply(JSON.parse(e.data).job));
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    apply({ percentage: d.percentage, current_step: d.current_step ?? state.current_step, progress: undefined });
  });
  source.addEventListener("delta", (e) => { el.querySelector(".output").textContent += JSON.parse(e.data).text; });
  source.addEventListener("status", (e) => {
    const d = JSON.parse(e.data);
    apply({ ...d, progress: undefined });
    if (["completed", "failed", "cancelled", "expired"].includes(d.status)) source.close();
  });
}

document.getElementById("titles-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = new FormData(event.target).get("text");
  const response = await fetch("/api/jobs", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ type: "titles", input: { text } }),
  });
  const body = await response.json();
  if (!response.ok) {
    const p = Object.assign(document.createElement("p"), { className: "error", textContent: body.error.message });
    jobs.prepend(p);
    return;
  }
  watch(card(body.job_id), body.job_id);
});
