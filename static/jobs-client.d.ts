// Types for jobs-client.js (hand-written; the API's own shapes come from api-types.d.ts, generated from the
// OpenAPI contract). tests/test_frontend_types.py compiles them with tsc and checks they declare every export.
//
//   import { createJob, watchJob } from "/static/jobs-client.js";   // with a bundler: your copy of the file

import type {
  ApiError,
  EventJob,
  Job,
  JobEvent,
  JobInputs,
  JobPositionEvent,
  JobProgressEvent,
  JobStatusEvent,
  JobType,
} from "./api-types";

export type { ApiError, EventJob, Job, JobEvent, JobInputs, JobType } from "./api-types";

/** How a watch reaches the server, in the order tried: Server-Sent Events, WebSocket, polling. */
export type Transport = "sse" | "ws" | "poll";

/** "live" once a transport is connected; "reconnecting" when it dropped and the next try is due. */
export type ConnectionState = "live" | "reconnecting";

/**
 * Why a job call or a watch ended badly. `code`: the API's error code (`job_not_found`, `unauthenticated`,
 * `http_<status>`, …) or, for a job that ended without a result, the job's own error code or its status
 * (`cancelled`, `expired`). `job`: the job's last state when it ended (null for a refused request).
 */
export class JobError extends Error {
  constructor(code: string, message: string, job: EventJob | JobStatusEvent | null);
  code: string;
  job: EventJob | JobStatusEvent | null;
}

export interface RequestOptions {
  /** Prefix of the API's URLs when it is on another origin (it must allow yours; the default is this page's). */
  base?: string;
}

export interface CreateOptions extends RequestOptions {
  /** 1 to 10: a higher priority runs first (the server's default is 5). */
  priority?: number;
}

/** Submit a job; resolves to the accepted job (status "queued"), or rejects with a JobError. */
export function createJob<T extends JobType>(type: T, input: JobInputs[T], options?: CreateOptions): Promise<Job>;

/** Ask the server to cancel a job; resolves to the job (cancelled, or still stopping). */
export function cancel(jobId: string, options?: RequestOptions): Promise<Job>;

/** The `percentage` and `current_step` of a progress event (from polling: the job's progress, with its seq). */
export type ProgressUpdate =
  | JobProgressEvent
  | { percentage: number; current_step: string | null; estimated_time_remaining: number | null; seq: number };

export interface WatchOptions extends RequestOptions {
  /** Every event once, in order (a snapshot first; from polling, a snapshot each time the job moved). */
  onEvent?: (event: JobEvent) => void;
  onProgress?: (progress: ProgressUpdate) => void;
  /** Each piece of streamed text (chat, summary…) as it arrives. */
  onDelta?: (text: string, event: JobEvent) => void;
  /** A queued job's place and expected wait, pushed as the queue moves (SSE and WebSocket only). */
  onPosition?: (event: JobPositionEvent) => void;
  /** A transport is being tried. */
  onTransport?: (transport: Transport) => void;
  onConnection?: (state: ConnectionState, transport: Transport) => void;
  /** The transports to try, in order (default all three). */
  transports?: Transport[];
  /** Resume after this seq (events up to it are not handed on again). */
  after?: number | null;
  /** Longest pause between two polls, in seconds (default 10; the server suggests shorter ones). */
  maxPollSeconds?: number;
  /** Stops the watch: the promise rejects with the signal's reason, the connection closes, no callback runs. */
  signal?: AbortSignal;
}

/** The watch behind a `watchJob` promise: the job as last seen, and the seq it resumes after. */
export interface Watch {
  readonly jobId: string;
  /** The job as the events so far have it (null before the first snapshot). */
  readonly job: EventJob | null;
  /** The seq of the last event handed on. */
  readonly last: number | null;
  readonly done: boolean;
}

/**
 * Follow a job until it ends: resolves to its result when it completes; rejects with a JobError when it failed,
 * was cancelled or expired, or can no longer be watched (`job_not_found`, `unauthenticated`), and with the
 * signal's reason when aborted.
 */
export function watchJob<Result = unknown>(jobId: string, options?: WatchOptions): Promise<Result> & { watch: Watch };
