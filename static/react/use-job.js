// use-job.js: React hooks over jobs-client.js — follow a job live (SSE, then WebSocket, then polling, resuming
// after the last event on any reconnect) and submit new ones. Types: use-job.d.ts beside this file.
//
//   import { useJob, useCreateJob } from "/static/react/use-job.js";
//   const { status, progress, output, result, error, transport, cancel } = useJob(jobId);
//   const { create, pending, error } = useCreateJob();   // await create("titles", { text }) -> the job, or null
//
// Written against React's public API (`import … from "react"`): with a bundler (Vite, Next…) copy this file and
// jobs-client.js into the app and it uses the app's React; without one, an import map points "react" at
// /static/vendor/react.js (see /static/examples/react.html). React 18 or newer.
//
// useJob(id) opens one watch per mounted id: a new id closes the old watch and opens a new one, unmounting
// closes it (an AbortSignal: the EventSource or WebSocket closes at once, polling stops), and nothing updates
// state after that. AI output goes into `output` and `result` as data; render it as text (React does, unless
// told otherwise by dangerouslySetInnerHTML, never to be used on a model's words).

import { useCallback, useEffect, useRef, useState } from "react";
import { JobError, cancel as cancelJob, createJob, watchJob } from "../jobs-client.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);

function initial(jobId) {
  return {
    jobId: jobId ?? null,
    job: null,
    status: null,
    progress: null,
    output: "",
    result: undefined,
    error: null,
    transport: null,
    connection: jobId ? "connecting" : "idle",
    queue: null,
  };
}

/**
 * The view of a job after one more event (pure: a new object, the old one untouched). Exported so that a store
 * outside React (Redux, Zustand…) can keep the same view from watchJob's onEvent.
 */
export function reduceJobEvent(state, event) {
  const job = state.job;
  switch (event.kind) {
    case "snapshot": {
      const next = structuredClone(event.job);
      return {
        ...state,
        job: next,
        status: next.status,
        progress: next.progress,
        output: next.partial_output ?? "",
        result: next.status === "completed" ? next.result : state.result,
        queue: next.queue ?? null,
      };
    }
    case "progress": {
      const progress = {
        percentage: event.percentage,
        current_step: event.current_step,
        estimated_time_remaining: event.estimated_time_remaining ?? null,
      };
      return { ...state, progress, job: job && { ...job, progress } };
    }
    case "delta": {
      const output = state.output + event.text;
      return { ...state, output, job: job && { ...job, partial_output: output } };
    }
    case "position": {
      if (state.status !== "queued") return state;
      const progress = { ...state.progress, estimated_time_remaining: event.estimated_time_remaining };
      return { ...state, queue: event.queue, progress, job: job && { ...job, queue: event.queue, progress } };
    }
    case "status": {
      const progress = {
        ...(state.progress ?? { estimated_time_remaining: null }),
        percentage: event.percentage,
        current_step: event.current_step,
      };
      const changed = { status: event.status, attempt: event.attempt, max_attempts: event.max_attempts, progress };
      for (const field of ["result", "error", "model", "provider", "usage", "partial_output", "next_attempt_at"]) {
        if (field in event) changed[field] = event[field];
      }
      if (event.status !== "queued") changed.queue = null;
      const output = typeof event.partial_output === "string" ? event.partial_output : state.output;
      return {
        ...state,
        status: event.status,
        progress,
        output,
        result: event.status === "completed" ? event.result : state.result,
        queue: changed.queue === null ? null : state.queue,
        job: job && { ...job, ...changed },
      };
    }
    default:
      return state;
  }
}

/**
 * Follow a job live: {job, status, progress, output, result, error, transport, connection, queue, cancel}.
 * `jobId` null or undefined: nothing is watched (connection "idle"). `options`: {base, transports, onEvent}.
 */
export function useJob(jobId, options = {}) {
  const [state, setState] = useState(() => initial(jobId));
  const onEvent = useRef(options.onEvent);
  onEvent.current = options.onEvent;
  const base = options.base ?? "";
  const transports = options.transports ? options.transports.join(",") : "";

  useEffect(() => {
    if (!jobId) return undefined;
    const controller = new AbortController();
    // Every update names its job: one left over from a previous id is dropped, never mixed in.
    const update = (change) =>
      setState((s) => {
        const current = s.jobId === jobId ? s : initial(jobId);
        return { ...current, ...change(current) };
      });
    watchJob(jobId, {
      base,
      transports: transports ? transports.split(",") : undefined,
      signal: controller.signal,
      onEvent: (event) => {
        update((s) => reduceJobEvent(s, event));
        onEvent.current?.(event);
      },
      onTransport: (transport) => update(() => ({ transport })),
      onConnection: (connection, transport) => update(() => ({ connection, transport })),
    }).then(
      (result) => update(() => ({ result, error: null, connection: "closed" })),
      (error) => {
        if (controller.signal.aborted) return; // unmounted or a new id: this watch's outcome no longer matters
        const err = error instanceof JobError ? error : new JobError("watch_failed", String(error), null);
        update((s) => ({
          error: err,
          connection: "closed",
          // the job is gone (expired and deleted) or the session ended: say so rather than keep the last status
          status: TERMINAL.has(s.status) ? s.status : err.code === "job_not_found" ? "expired" : s.status,
        }));
      },
    );
    return () => controller.abort();
  }, [jobId, base, transports]);

  const cancel = useCallback(() => {
    if (!jobId) return Promise.reject(new JobError("no_job", "No job to cancel.", null));
    return cancelJob(jobId, { base });
  }, [jobId, base]);

  const view = state.jobId === (jobId ?? null) ? state : initial(jobId);
  return {
    job: view.job,
    status: view.status,
    progress: view.progress,
    output: view.output,
    result: view.result,
    error: view.error,
    transport: view.transport,
    connection: view.connection,
    queue: view.queue,
    cancel,
  };
}

/**
 * Submit jobs: {create, job, pending, error, reset}. `create(type, input, {priority})` resolves to the accepted
 * job, or to null when it was refused (the reason is in `error`, a JobError with the API's code): it never
 * rejects, so a form's submit handler can simply await it.
 */
export function useCreateJob(options = {}) {
  const [state, setState] = useState({ job: null, pending: false, error: null });
  const mounted = useRef(true);
  const base = options.base ?? "";
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);

  const set = (value) => mounted.current && setState(value);
  const create = useCallback(
    async (type, input, { priority } = {}) => {
      set((s) => ({ ...s, pending: true, error: null }));
      try {
        const job = await createJob(type, input, { priority, base });
        set({ job, pending: false, error: null });
        return job;
      } catch (error) {
        // A refusal (JobError with the API's code) or no answer at all (fetch's TypeError: offline, blocked).
        const err = error instanceof JobError ? error : new JobError("network_error", String(error.message), null);
        set((s) => ({ ...s, pending: false, error: err }));
        return null;
      }
    },
    [base],
  );
  const reset = useCallback(() => set({ job: null, pending: false, error: null }), []);
  return { create, job: state.job, pending: state.pending, error: state.error, reset };
}
