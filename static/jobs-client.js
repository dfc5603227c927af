// jobs-client.js: submit aijobs jobs and watch them live, from any page. No dependencies.
//
//   import { createJob, watchJob, cancel } from "/static/jobs-client.js";
//   const job = await createJob("titles", { text: "…" });
//   const result = await watchJob(job.job_id, { onEvent, onProgress, onDelta });
//
// Transport: Server-Sent Events first, then WebSocket, then polling (with backoff), switching when one
// fails or is blocked. Every event carries the job's `seq`; the client remembers the last one and resumes
// after it on any reconnect (Last-Event-ID / `after`), and drops anything it has already seen, so each
// event reaches the page once and in order. `position` events (a queued job's place and wait, pushed as the
// queue moves) carry no seq and are handed on as they come: onPosition({queue, estimated_time_remaining}).
// Stop watching with an AbortSignal (`signal`): the connection closes at once and no callback runs after it.
// Types: jobs-client.d.ts beside this file (and api-types.d.ts for the API's own shapes).

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const KINDS = ["snapshot", "status", "progress", "delta", "position"];
// Errors no reconnect can mend: the job is gone, or the caller's session or token no longer holds.
const FATAL = new Set(["job_not_found", "unauthenticated"]);

export class JobError extends Error {
  constructor(code, message, job) {
    super(message);
    this.code = code;
    this.job = job;
  }
}

async function api(path, options = {}, base = "", signal = undefined) {
  const response = await fetch(base + path, {
    signal,
    ...options,
    headers: { "content-type": "application/json", ...(options.headers || {}) },
  });
  const body = response.status === 204 || response.status === 304 ? null : await response.json();
  if (!response.ok && response.status !== 304) {
    const err = body?.error || {};
    throw new JobError(err.code || `http_${response.status}`, err.message || response.statusText, null);
  }
  return { response, body };
}

/** Submit a job; resolves to the accepted job (with `job_id`). */
export async function createJob(type, input, { priority, base = "" } = {}) {
  const payload = { type, input };
  if (priority !== undefined) payload.priority = priority;
  const { body } = await api("/api/jobs", { method: "POST", body: JSON.stringify(payload) }, base);
  return body;
}

/** Ask the server to cancel a job. */
export async function cancel(jobId, { base = "" } = {}) {
  const { body } = await api(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }, base);
  return body;
}

/**
 * Watch a job until it ends. Resolves to its result (completed) or rejects with a JobError
 * (failed/cancelled/expired). Callbacks: onEvent(event) for every event, onProgress({percentage,
 * current_step}), onDelta(text), onTransport(name) when a transport is tried, onConnection(state, name) with
 * state "live" once it is connected and "reconnecting" when it dropped and the next try is due (`options.transports`
 * limits the order tried). `options.signal` (an AbortSignal) stops the watch: it rejects with the signal's reason
 * (an AbortError), its connection is closed, and no callback runs after the abort.
 */
export function watchJob(jobId, options = {}) {
  const w = new Watch(jobId, options);
  const promise = w.run();
  promise.watch = w;
  return promise;
}

class Watch {
  constructor(jobId, options) {
    this.jobId = jobId;
    this.o = options;
    this.base = options.base || "";
    this.last = options.after ?? null; // seq of the last event handed to the page
    this.job = null;
    this.done = false;
    this.transports = options.transports || ["sse", "ws", "poll"];
    this.failures = 0;
    this.worked = new Set(); // transports that delivered something: a failure there is a cut, not a block
    this.signal = options.signal;
  }

  get aborted() {
    return this.signal?.aborted === true;
  }

  // Run `stop` when the watch is aborted; returns the function that forgets it (call it when `stop` is moot).
  onAbort(stop) {
    if (!this.signal) return () => {};
    if (this.signal.aborted) {
      stop();
      return () => {};
    }
    this.signal.addEventListener("abort", stop, { once: true });
    return () => this.signal.removeEventListener("abort", stop);
  }

  // A pause that an abort cuts short.
  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        off();
        resolve();
      }, ms);
      const off = this.onAbort(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // Every event goes through here: duplicates and stale events are dropped by seq.
  apply(event) {
    if (this.aborted) return; // stopped: nothing more reaches the page
    if (event.kind === "position") {
      // A queued job's place and wait, pushed as the queue moves: no seq (not logged, never replayed).
      if (this.job && this.job.status === "queued") {
        this.job.queue = event.queue;
        this.job.progress = { ...this.job.progress, estimated_time_remaining: event.estimated_time_remaining };
      }
      this.o.onEvent?.(event);
      this.o.onPosition?.(event);
      return;
    }
    if (this.last !== null && event.seq <= this.last) return;
    this.last = event.seq;
    if (event.kind === "snapshot") {
      this.job = event.job;
    } else if (this.job) {
      if (event.kind === "progress") {
        this.job.progress = { ...this.job.progress, percentage: event.percentage, current_step: event.current_step };
      } else if (event.kind === "delta") {
        this.job.partial_output = (this.job.partial_output || "") + event.text;
      } else if (event.kind === "status") {
        Object.assign(this.job, event);
      }
    }
    this.o.onEvent?.(event);
    if (event.kind === "progress") this.o.onProgress?.(event);
    if (event.kind === "delta") this.o.onDelta?.(event.text, event);
    const status = event.kind === "snapshot" ? event.job.status : event.kind === "status" ? event.status : null;
    if (status && TERMINAL.has(status)) {
      this.done = true;
      this.final = event.kind === "snapshot" ? event.job : event;
    }
  }

  async run() {
    let i = 0;
    while (!this.done) {
      if (this.aborted) throw this.signal.reason;
      const name = this.transports[Math.min(i, this.transports.length - 1)];
      this.o.onTransport?.(name);
      const before = this.last;
      let ok = false;
      try {
        ok = await this[name]();
      } catch (e) {
        if (this.aborted) throw this.signal.reason;
        if (e instanceof JobError && FATAL.has(e.code)) throw e;
        ok = false;
      }
      if (this.aborted) throw this.signal.reason;
      if (this.fatal) throw this.fatal; // signed out (or the token revoked) while watching: no transport will do
      if (this.last !== before) this.worked.add(name);
      if (this.done) break;
      // A transport that never delivered is blocked here: try the next. One that did was cut: resume on it.
      if (!ok && !this.worked.has(name)) i = Math.min(i + 1, this.transports.length - 1);
      this.failures = this.last === before ? this.failures + 1 : 0;
      this.o.onConnection?.("reconnecting", name);
      await this.sleep(Math.min(250 * 2 ** Math.min(this.failures, 5), 8000));
    }
    const f = this.final;
    if (f.status === "completed") return f.result;
    throw new JobError(f.error?.code || f.status, f.error?.message || `job ${f.status}`, f);
  }

  // SSE: resolves when the stream ends or fails; EventSource's own retry is not used (we resume ourselves).
  sse() {
    return new Promise((resolve) => {
      const q = this.last !== null ? `?after=${this.last}` : "";
      const source = new EventSource(`${this.base}/api/jobs/${encodeURIComponent(this.jobId)}/events${q}`);
      let got = false;
      let off = null;
      const end = (ok) => {
        off?.();
        source.close();
        resolve(ok);
      };
      off = this.onAbort(() => end(false));
      for (const kind of KINDS) {
        source.addEventListener(kind, (e) => {
          got = true;
          this.apply(JSON.parse(e.data));
          if (this.done) end(true);
        });
      }
      source.onopen = () => this.aborted || this.o.onConnection?.("live", "sse");
      // A connection failure, or the server's last word (`event: error`, with data) when it ends the stream
      // because the session was signed out or the token revoked.
      source.onerror = (e) => {
        if (e.data) {
          const err = JSON.parse(e.data).error || {};
          this.fatal = new JobError(err.code || "stream_ended", err.message || "The stream was ended.", null);
        }
        end(got);
      };
    });
  }

  ws() {
    return new Promise((resolve) => {
      const url = new URL(`${this.base}/api/ws`, location.href);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      let socket;
      try {
        socket = new WebSocket(url);
      } catch {
        resolve(false);
        return;
      }
      let got = false;
      let off = null;
      const end = (ok) => {
        off?.();
        try {
          socket.close();
        } catch {}
        resolve(ok);
      };
      off = this.onAbort(() => end(false));
      socket.onopen = () => {
        const msg = { type: "subscribe", job_id: this.jobId };
        if (this.last !== null) msg.after = this.last;
        socket.send(JSON.stringify(msg));
      };
      socket.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "error") {
          if (msg.code === "job_not_found") this.notFound = true;
          if (msg.code === "unauthenticated") this.fatal = new JobError(msg.code, msg.message, null);
          end(false);
          return;
        }
        if (msg.type === "subscribed" && !this.aborted) this.o.onConnection?.("live", "ws");
        if (msg.type) return; // subscribed / ping / pong
        if (msg.job_id !== this.jobId) return;
        got = true;
        this.apply(msg);
        if (this.done) end(true);
      };
      socket.onerror = () => end(got);
      socket.onclose = () => {
        off?.();
        resolve(got);
      };
    });
  }

  // Polling: GET the job with If-None-Match; the server suggests the interval. A snapshot-like event is
  // made from the job when its seq moved, so callbacks see progress the same way.
  async poll() {
    let etag = null;
    let errors = 0;
    while (!this.done && !this.aborted) {
      let r;
      try {
        r = await api(
          `/api/jobs/${encodeURIComponent(this.jobId)}`,
          { headers: etag ? { "if-none-match": etag } : {} },
          this.base,
          this.signal,
        );
        if (this.aborted) return false;
        if (errors || etag === null) this.o.onConnection?.("live", "poll");
        errors = 0;
      } catch (e) {
        if (this.aborted) return false;
        if (e instanceof JobError && FATAL.has(e.code)) throw e;
        errors += 1;
        this.o.onConnection?.("reconnecting", "poll");
        await this.sleep(Math.min(500 * 2 ** errors, 10000));
        continue;
      }
      etag = r.response.headers.get("etag") || etag;
      const job = r.body;
      if (job && (this.last === null || job.last_seq > this.last)) {
        const prevJob = this.job;
        this.apply({ kind: "snapshot", job_id: this.jobId, seq: job.last_seq, reason: "poll", job });
        if (prevJob && job.progress) this.o.onProgress?.({ ...job.progress, seq: job.last_seq });
      }
      if (this.done) return true;
      const suggested = Number(r.response.headers.get("x-poll-interval")) || job?.poll_interval || 2;
      await this.sleep(Math.min(suggested, this.o.maxPollSeconds ?? 10) * 1000);
    }
    return !this.aborted;
  }
}
