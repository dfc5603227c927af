// Types for use-job.js (hand-written over the generated api-types.d.ts; checked by tests/test_frontend_types.py).

import type { EventJob, Job, JobEvent, JobInputs, JobProgress, JobStatus, JobType, QueuePlace } from "../api-types";
import type { ConnectionState, CreateOptions, JobError, RequestOptions, Transport } from "../jobs-client.js";

export interface UseJobOptions extends RequestOptions {
  /** The transports to try, in order (default SSE, WebSocket, polling). */
  transports?: Transport[];
  /** Every event as it arrives (after the view has taken it in). */
  onEvent?: (event: JobEvent) => void;
}

/** What useJob returns: the job as the events so far have it, and how it is being followed. */
export interface JobView<Result = unknown> {
  /** The job (null until the first snapshot arrives). */
  job: EventJob | null;
  status: JobStatus | null;
  progress: JobProgress | null;
  /** The text streamed so far (chat, summary, titles…): show it as text. */
  output: string;
  /** The job's result once it completed. */
  result: Result | undefined;
  /** Why it ended without a result (code: the job's error code, "cancelled", "expired", "job_not_found"…). */
  error: JobError | null;
  /** The transport in use or being tried. */
  transport: Transport | null;
  /** "idle" with no id; "closed" once the job ended (or could not be watched). */
  connection: "idle" | "connecting" | ConnectionState | "closed";
  /** While queued: jobs ahead and the expected wait, pushed as the queue moves. */
  queue: QueuePlace | null;
  /** Ask the server to cancel the job (the view follows through the events). */
  cancel: () => Promise<Job>;
}

/** Follow a job live; a new id re-subscribes, unmounting closes the connection. */
export function useJob<Result = unknown>(jobId: string | null | undefined, options?: UseJobOptions): JobView<Result>;

export interface CreateJobState {
  /** Submit a job: resolves to the accepted job, or to null when refused (see `error`); never rejects. */
  create<T extends JobType>(type: T, input: JobInputs[T], options?: Pick<CreateOptions, "priority">): Promise<Job | null>;
  /** The last job accepted. */
  job: Job | null;
  pending: boolean;
  error: JobError | null;
  reset(): void;
}

export function useCreateJob(options?: RequestOptions): CreateJobState;

/** The state useJob keeps (without `cancel`). */
export type JobViewState<Result = unknown> = Omit<JobView<Result>, "cancel"> & { jobId: string | null };

/** The view after one more event: pure, for stores outside React fed by watchJob's onEvent. */
export function reduceJobEvent<S extends JobViewState>(state: S, event: JobEvent): S;
