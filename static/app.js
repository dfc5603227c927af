// Minimal page: submit a titles job and follow it with jobs-client.js. AI output is always inserted as text.
import { createJob, watchJob } from "/static/jobs-client.js";

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

async function follow(el, jobId) {
  const $ = (sel) => el.querySelector(sel);
  const step = (p) => {
    $(".step").textContent = p.current_step ?? "";
    $("progress").value = p.percentage ?? 0;
  };
  try {
    const result = await watchJob(jobId, {
      onEvent: (e) => {
        if (e.kind === "snapshot") {
          $(".status").textContent = e.job.status;
          step(e.job.progress);
          $(".output").textContent = e.job.partial_output ?? "";
        }
        if (e.kind === "status") $(".status").textContent = e.status;
      },
      onProgress: step,
      onDelta: (text) => {
        $(".output").textContent += text;
      },
    });
    $(".status").textContent = "completed";
    $("progress").value = 100;
    $(".output").textContent = "";
    const titles = result?.titles ?? [];
    $(".result").replaceChildren(...titles.map((t) => Object.assign(document.createElement("li"), { textContent: t })));
  } catch (err) {
    $(".status").textContent = err.job?.status ?? "error";
    $(".error").textContent = err.message;
  }
}

document.getElementById("titles-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = new FormData(event.target).get("text");
  try {
    const job = await createJob("titles", { text });
    follow(card(job.job_id), job.job_id);
  } catch (err) {
    jobs.prepend(Object.assign(document.createElement("p"), { className: "error", textContent: err.message }));
  }
});
