// How a TypeScript app uses the client and the hooks: compiled (never run) by tests/test_frontend_types.py, so a
// declaration that stops fitting this use, or an API type that changes under it, fails the tests.

import { useState } from "react";
import type { ChatInput, Job, JobEvent, Operations, Stats, SubmitJobRequest } from "../../static/api-types";
import { JobError, cancel, createJob, watchJob } from "../../static/jobs-client.js";
import { reduceJobEvent, useCreateJob, useJob } from "../../static/react/use-job.js";

interface TitlesResult {
  titles: string[];
}

export async function plain(signal: AbortSignal): Promise<string[]> {
  const job: Job = await createJob("titles", { text: "A post", count: 3, tone: "catchy" }, { priority: 2 });
  // @ts-expect-error: a titles job has no `prompt`
  await createJob("titles", { prompt: "x" });
  // @ts-expect-error: no such job type
  await createJob("poem", { text: "x" });
  const chat: ChatInput = { messages: [{ role: "user", content: "Hi" }], max_tokens: null };
  await createJob("chat", chat);
  const watch = watchJob<TitlesResult>(job.job_id, {
    signal,
    transports: ["sse", "poll"],
    onEvent: (event: JobEvent) => {
      if (event.kind === "delta") console.log(event.text.length, event.seq);
      if (event.kind === "snapshot") console.log(event.job.status, event.job.progress.percentage);
      if (event.kind === "position") console.log(event.queue.position, event.estimated_time_remaining);
      // @ts-expect-error: a position event has no seq (it is never replayed)
      if (event.kind === "position") console.log(event.seq);
    },
    onProgress: (p) => console.log(p.percentage, p.current_step),
    onDelta: (text) => console.log(text),
    onTransport: (t) => console.log(t === "sse" || t === "ws" || t === "poll"),
    onConnection: (state, t) => console.log(state, t),
  });
  console.log(watch.watch.last, watch.watch.job?.status);
  try {
    const result = await watch;
    return result.titles;
  } catch (err) {
    if (err instanceof JobError) console.log(err.code, err.message, err.job?.status);
    const stopped: Job = await cancel(job.job_id);
    return [stopped.status];
  }
}

export function body(): SubmitJobRequest {
  const stats: Operations["stats"]["response"] | null = null as Stats | null;
  console.log(stats?.user.by_status.completed);
  return { type: "summary", input: { text: "Long text", max_sentences: 2 }, priority: 1 };
}

export function Titles({ jobId }: { jobId: string | null }) {
  const { job, status, progress, output, result, error, transport, connection, queue, cancel } = useJob<TitlesResult>(
    jobId,
    { transports: ["ws", "poll"], onEvent: (e) => console.log(e.kind) },
  );
  const done: boolean = connection === "closed" || status === "completed";
  return (
    <section data-status={status ?? ""} data-transport={transport ?? ""}>
      <progress max={100} value={progress?.percentage ?? 0} />
      <p>{progress?.current_step}</p>
      <p>{queue?.position ?? ""}</p>
      <pre>{output}</pre>
      {result && <ol>{result.titles.map((t) => <li key={t}>{t}</li>)}</ol>}
      {error && <p>{error.code}: {error.message}</p>}
      {job && <p>Attempt {job.attempt} of {job.max_attempts}</p>}
      {!done && <button onClick={() => void cancel()}>Cancel</button>}
    </section>
  );
}

export function Form() {
  const { create, pending, error, job, reset } = useCreateJob();
  const [id, setId] = useState<string | null>(null);
  async function submit() {
    const made: Job | null = await create("titles", { text: "A post" }, { priority: 3 });
    if (made) setId(made.job_id);
  }
  const next = reduceJobEvent(
    { jobId: null, job: null, status: null, progress: null, output: "", result: undefined, error: null, transport: null,
      connection: "idle", queue: null },
    { kind: "delta", job_id: "j", seq: 1, ts: 0, text: "Hi" },
  );
  return (
    <form onSubmit={(e) => { e.preventDefault(); void submit(); }}>
      <button disabled={pending}>Go</button>
      {error && <p>{error.message}</p>}
      {job && <button type="button" onClick={reset}>{job.status}</button>}
      <Titles jobId={id} />
      <pre>{next.output}</pre>
    </form>
  );
}
