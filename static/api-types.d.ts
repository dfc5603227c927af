// aijobs API types, generated from the OpenAPI contract (GET /api/openapi.json) by scripts/api-types: do not edit.
// tests/test_frontend_types.py regenerates it from the running server and fails when this file differs.
//
//   import type { Job, JobEvent, SubmitJobRequest } from "/static/api-types";
//
// Job, HistoryJob, History, Stats, ApiError: the contract's components. JobSnapshotEvent … JobPositionEvent: the
// JSON of each Server-Sent Event's `data` (and of each WebSocket event message), by `kind`; JobEvent is their union.
// SubmitJobRequest: POST /api/jobs, one alternative per job type (JobInputs maps a type to its input).
// Operations: every operation by its operationId, with its method, path, parameters, body and answer.

export type JobStatus = "queued" | "processing" | "completed" | "failed" | "cancelled" | "expired";

export interface JobProgress {
  percentage: number;
  current_step: string | null;
  estimated_time_remaining: number | null;
}

export interface JobFailure {
  message: string;
  code: string;
  retryable: boolean;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  estimated?: boolean;
  cached?: boolean;
  [key: string]: unknown;
}

export interface QueuePlace {
  position: number | null;
  estimated_wait: number | null;
  workers_capacity: number;
}

export interface Attempt {
  attempt: number;
  provider: string | null;
  model: string | null;
  error: string | null;
  seconds: number;
  /** date-time */
  at: string;
  [key: string]: unknown;
}

export interface JobLinks {
  self: string;
  events: string;
}

export interface EventJob {
  job_id: string;
  type: string;
  status: JobStatus;
  /** min 1; max 10 */
  priority: number;
  progress: JobProgress;
  attempt: number;
  max_attempts: number;
  result: unknown;
  error: JobFailure | null;
  model: string | null;
  provider: string | null;
  usage: Usage | null;
  last_seq: number;
  created_at: string | null;
  started_at: string | null;
  completed_at: string | null;
  updated_at: string | null;
  /** A cancel was asked for and the worker is stopping */
  cancel_requested: boolean;
  /** While a failed attempt waits for its retry: when the next one may start */
  next_attempt_at: string | null;
  /** One entry per finished attempt, oldest first */
  attempts: Attempt[];
  /** The job this one retries (POST /api/jobs/{id}/retry) */
  retry_of: string | null;
  /** It runs on your own provider key (never returned): a retry must send the key again */
  own_provider_key: boolean;
  /** While queued: jobs ahead, the expected wait (null: no live worker) and the workers' slots */
  queue: QueuePlace | null;
  /** Where the job's ends are announced (submitted with it), or null */
  webhook: {
    url: string;
    events: Array<"completed" | "failed" | "cancelled" | "expired">;
  } | null;
  poll_interval?: number;
  links?: JobLinks;
  input: {
    [key: string]: unknown;
  };
  partial_output: string | null;
}

export interface User {
  id: string;
  name: string;
  created_at: string | null;
}

export interface ApiError {
  error: {
    code: string;
    message: string;
    field?: string;
    [key: string]: unknown;
  };
}

export interface Job {
  job_id: string;
  type: string;
  status: JobStatus;
  /** min 1; max 10 */
  priority: number;
  progress: JobProgress;
  attempt: number;
  max_attempts: number;
  result: unknown;
  error: JobFailure | null;
  model: string | null;
  provider: string | null;
  usage: Usage | null;
  last_seq: number;
  created_at: string | null;
  started_at: string | null;
  completed_at: string | null;
  updated_at: string | null;
  /** A cancel was asked for and the worker is stopping */
  cancel_requested: boolean;
  /** While a failed attempt waits for its retry: when the next one may start */
  next_attempt_at: string | null;
  /** One entry per finished attempt, oldest first */
  attempts: Attempt[];
  /** The job this one retries (POST /api/jobs/{id}/retry) */
  retry_of: string | null;
  /** It runs on your own provider key (never returned): a retry must send the key again */
  own_provider_key: boolean;
  /** While queued: jobs ahead, the expected wait (null: no live worker) and the workers' slots */
  queue: QueuePlace | null;
  /** Where the job's ends are announced (submitted with it), or null */
  webhook: {
    url: string;
    events: Array<"completed" | "failed" | "cancelled" | "expired">;
  } | null;
  poll_interval?: number;
  links: JobLinks;
  input: {
    [key: string]: unknown;
  };
  partial_output: string | null;
}

export interface HistoryJob {
  job_id: string;
  type: string;
  status: JobStatus;
  /** min 1; max 10 */
  priority: number;
  progress: JobProgress;
  attempt: number;
  max_attempts: number;
  result: unknown;
  error: JobFailure | null;
  model: string | null;
  provider: string | null;
  usage: Usage | null;
  last_seq: number;
  created_at: string | null;
  started_at: string | null;
  completed_at: string | null;
  updated_at: string | null;
  /** A cancel was asked for and the worker is stopping */
  cancel_requested: boolean;
  /** While a failed attempt waits for its retry: when the next one may start */
  next_attempt_at: string | null;
  /** One entry per finished attempt, oldest first */
  attempts: Attempt[];
  /** The job this one retries (POST /api/jobs/{id}/retry) */
  retry_of: string | null;
  /** It runs on your own provider key (never returned): a retry must send the key again */
  own_provider_key: boolean;
  /** While queued: jobs ahead, the expected wait (null: no live worker) and the workers' slots */
  queue: QueuePlace | null;
  /** Where the job's ends are announced (submitted with it), or null */
  webhook: {
    url: string;
    events: Array<"completed" | "failed" | "cancelled" | "expired">;
  } | null;
  poll_interval?: number;
  links: JobLinks;
  input_summary: string;
  durations: {
    wait: number | null;
    run: number | null;
  };
  cost: number | null;
}

export interface History {
  jobs: HistoryJob[];
  /** null on the last page */
  next_cursor: string | null;
  totals: {
    jobs: number;
    prompt_tokens: number;
    completion_tokens: number;
    cost: number;
  };
}

export interface Stats {
  total_queued: number;
  total_processing: number;
  total_completed: number;
  total_failed: number;
  total_cancelled: number;
  total_expired: number;
  average_wait_time: number | null;
  average_run_time?: number | null;
  estimated_wait_time: number | null;
  window_seconds?: number;
  by_type: Array<{
    type: string;
    started: number;
    completed: number;
    average_wait_time: number | null;
    average_run_time: number | null;
  }>;
  workers: {
    live: number;
    capacity: number;
  };
  user: {
    by_status: {
      queued: number;
      processing: number;
      completed: number;
      failed: number;
      cancelled: number;
      expired: number;
    };
    active: number;
    jobs: number;
    prompt_tokens: number;
    completion_tokens: number;
    cost: number;
  };
}

/** The post to title. */
export interface TitlesInput {
  /**
   * The post's text
   * min length 1; max length 20000
   */
  text: string;
  /**
   * How many titles
   * min 1; max 10
   * @default 5
   */
  count?: number;
  /** @default "neutral" */
  tone?: "neutral" | "catchy" | "formal" | "playful";
}

/** Suggest titles for a post. */
export interface SubmitTitles {
  type: "titles";
  /** The post to title. */
  input: TitlesInput;
  /**
   * min 1; max 10
   * @default 5
   */
  priority?: number;
  /**
   * Your own provider API key for this job alone; stored only encrypted, deleted when the job ends, never returned. The same key may also come as X-Provider-Key; two different keys are a 400 provider_key_twice
   * pattern ^[!-~]{1,512}$
   */
  user_provided_key?: string;
  /**
   * Announce the job's end: a signed POST (Standard Webhooks) to `url` for each event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks
   */
  webhook?: {
    /**
     * Where to POST the events. Its host must resolve to a public address (else 422 webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery
     * max length 2048; pattern ^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(?:/[!-\"$-~]*)?$
     */
    url: string;
    /**
     * Which ends of the job to announce (each as the event type `job.<status>`); default: all
     * min items 1; unique items True
     */
    events?: Array<"completed" | "failed" | "cancelled" | "expired">;
  };
}

/** The text to summarize. */
export interface SummaryInput {
  /**
   * The text to summarize
   * min length 1; max length 50000
   */
  text: string;
  /**
   * min 1; max 10
   * @default 3
   */
  max_sentences?: number;
}

/** Summarize a text. */
export interface SubmitSummary {
  type: "summary";
  /** The text to summarize. */
  input: SummaryInput;
  /**
   * min 1; max 10
   * @default 5
   */
  priority?: number;
  /**
   * Your own provider API key for this job alone; stored only encrypted, deleted when the job ends, never returned. The same key may also come as X-Provider-Key; two different keys are a 400 provider_key_twice
   * pattern ^[!-~]{1,512}$
   */
  user_provided_key?: string;
  /**
   * Announce the job's end: a signed POST (Standard Webhooks) to `url` for each event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks
   */
  webhook?: {
    /**
     * Where to POST the events. Its host must resolve to a public address (else 422 webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery
     * max length 2048; pattern ^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(?:/[!-\"$-~]*)?$
     */
    url: string;
    /**
     * Which ends of the job to announce (each as the event type `job.<status>`); default: all
     * min items 1; unique items True
     */
    events?: Array<"completed" | "failed" | "cancelled" | "expired">;
  };
}

/** A conversation; the last message is usually the user's. */
export interface ChatInput {
  /** min items 1; max items 50 */
  messages: Array<{
    role: "system" | "user" | "assistant";
    /** min length 1; max length 20000 */
    content: string;
  }>;
  /** @default null */
  max_tokens?: number | null;
}

/** Answer a conversation. */
export interface SubmitChat {
  type: "chat";
  /** A conversation; the last message is usually the user's. */
  input: ChatInput;
  /**
   * min 1; max 10
   * @default 5
   */
  priority?: number;
  /**
   * Your own provider API key for this job alone; stored only encrypted, deleted when the job ends, never returned. The same key may also come as X-Provider-Key; two different keys are a 400 provider_key_twice
   * pattern ^[!-~]{1,512}$
   */
  user_provided_key?: string;
  /**
   * Announce the job's end: a signed POST (Standard Webhooks) to `url` for each event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks
   */
  webhook?: {
    /**
     * Where to POST the events. Its host must resolve to a public address (else 422 webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery
     * max length 2048; pattern ^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(?:/[!-\"$-~]*)?$
     */
    url: string;
    /**
     * Which ends of the job to announce (each as the event type `job.<status>`); default: all
     * min items 1; unique items True
     */
    events?: Array<"completed" | "failed" | "cancelled" | "expired">;
  };
}

/** What to draw. */
export interface ImageInput {
  /** min length 1; max length 4000 */
  prompt: string;
  /**
   * How many images
   * min 1; max 4
   * @default 1
   */
  n?: number;
  /** @default "512x512" */
  size?: "256x256" | "512x512" | "1024x1024";
}

/** Generate images from a prompt. */
export interface SubmitImage {
  type: "image";
  /** What to draw. */
  input: ImageInput;
  /**
   * min 1; max 10
   * @default 5
   */
  priority?: number;
  /**
   * Your own provider API key for this job alone; stored only encrypted, deleted when the job ends, never returned. The same key may also come as X-Provider-Key; two different keys are a 400 provider_key_twice
   * pattern ^[!-~]{1,512}$
   */
  user_provided_key?: string;
  /**
   * Announce the job's end: a signed POST (Standard Webhooks) to `url` for each event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks
   */
  webhook?: {
    /**
     * Where to POST the events. Its host must resolve to a public address (else 422 webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery
     * max length 2048; pattern ^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(?:/[!-\"$-~]*)?$
     */
    url: string;
    /**
     * Which ends of the job to announce (each as the event type `job.<status>`); default: all
     * min items 1; unique items True
     */
    events?: Array<"completed" | "failed" | "cancelled" | "expired">;
  };
}

/**
 * An OpenAI Responses API request as aijobs runs it: the conversation, the instructions put before it as a system message, and what the response echoes (the model named, metadata, whether it ran in the background).
 */
export interface ResponseInput {
  /** min items 1; max items 50 */
  messages: Array<{
    role: "system" | "user" | "assistant";
    /** min length 1; max length 20000 */
    content: string;
  }>;
  /** @default null */
  instructions?: string | null;
  /** @default null */
  max_output_tokens?: number | null;
  /** @default null */
  model?: string | null;
  /** @default null */
  metadata?: {
    [key: string]: string;
  } | null;
  /** @default false */
  background?: boolean;
}

/** Answer a Responses API request. */
export interface SubmitResponse {
  type: "response";
  /**
   * An OpenAI Responses API request as aijobs runs it: the conversation, the instructions put before it as a system message, and what the response echoes (the model named, metadata, whether it ran in the background).
   */
  input: ResponseInput;
  /**
   * min 1; max 10
   * @default 5
   */
  priority?: number;
  /**
   * Your own provider API key for this job alone; stored only encrypted, deleted when the job ends, never returned. The same key may also come as X-Provider-Key; two different keys are a 400 provider_key_twice
   * pattern ^[!-~]{1,512}$
   */
  user_provided_key?: string;
  /**
   * Announce the job's end: a signed POST (Standard Webhooks) to `url` for each event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks
   */
  webhook?: {
    /**
     * Where to POST the events. Its host must resolve to a public address (else 422 webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery
     * max length 2048; pattern ^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(?:/[!-\"$-~]*)?$
     */
    url: string;
    /**
     * Which ends of the job to announce (each as the event type `job.<status>`); default: all
     * min items 1; unique items True
     */
    events?: Array<"completed" | "failed" | "cancelled" | "expired">;
  };
}

export type SubmitJobRequest = SubmitTitles | SubmitSummary | SubmitChat | SubmitImage | SubmitResponse;

export interface JobSnapshotEvent {
  job_id: string;
  seq: number;
  ts: number;
  kind: "snapshot";
  reason: string;
  job: EventJob;
}

export interface JobStatusEvent {
  job_id: string;
  seq: number;
  ts: number;
  kind: "status";
  status: JobStatus;
  attempt: number;
  max_attempts: number;
  percentage: number;
  current_step: string | null;
  result?: unknown;
  error?: JobFailure | null;
  model?: string | null;
  provider?: string | null;
  usage?: Usage | null;
  partial_output?: string | null;
  /** date-time */
  next_attempt_at?: string;
}

export interface JobProgressEvent {
  job_id: string;
  seq: number;
  ts: number;
  kind: "progress";
  percentage: number;
  current_step: string | null;
  estimated_time_remaining?: number;
}

export interface JobDeltaEvent {
  job_id: string;
  seq: number;
  ts: number;
  kind: "delta";
  text: string;
}

export interface JobPositionEvent {
  job_id: string;
  kind: "position";
  ts: number;
  queue: QueuePlace;
  estimated_time_remaining: number | null;
}

export interface RetryJobBody {
  /** pattern ^[!-~]{1,512}$ */
  user_provided_key?: string;
}

export interface JobWebhooksResponse {
  job_id: string;
  webhook: {
    url: string;
    events: Array<"completed" | "failed" | "cancelled" | "expired">;
  } | null;
  deliveries: Array<{
    /** The webhook-id header of every attempt (receivers dedupe on it) */
    id: string;
    event: "job.completed" | "job.failed" | "job.cancelled" | "job.expired";
    url: string;
    status: "pending" | "delivered" | "failed";
    attempts: number;
    occurred_at: string | null;
    /** While pending: when the next attempt is due */
    next_attempt_at: string | null;
    delivered_at: string | null;
    last_status_code: number | null;
    last_error: string | null;
    /** One entry per recorded attempt, oldest first */
    responses: Array<{
      attempt: number;
      /** date-time */
      at: string;
      /** The receiver's answer; null: none */
      status_code: number | null;
      error: string | null;
      seconds: number;
    }>;
  }>;
}

export interface GetWebhookSecretResponse {
  /** pattern ^whsec_[A-Za-z0-9+/]+=*$ */
  secret: string;
  created_at: string | null;
  /** After a rotation: until when deliveries are also signed with the secret it replaced */
  previous_valid_until: string | null;
}

export interface SignInBody {
  /** min length 1 */
  token?: string;
}

export interface SignInResponse {
  user: User;
}

export interface MeResponse {
  user: User;
  limits: {
    max_active_jobs: number;
    submissions_per_minute: number;
    max_streams: number;
    max_input_bytes: {
      [key: string]: number;
    };
    [key: string]: unknown;
  };
}

export interface HealthResponse {
  status: "ok" | "degraded";
  checks: {
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** Every event of a job as it reaches a client, told apart by `kind`. */
export type JobEvent = JobSnapshotEvent | JobStatusEvent | JobProgressEvent | JobDeltaEvent | JobPositionEvent;

/** The job types this server runs. */
export type JobType = "titles" | "summary" | "chat" | "image" | "response";

/** Each job type's input. */
export interface JobInputs {
  titles: TitlesInput;
  summary: SummaryInput;
  chat: ChatInput;
  image: ImageInput;
  response: ResponseInput;
}

/** Every operation of the contract by operationId: what to send and what comes back. */
export interface Operations {
  submitJob: {
    method: "POST";
    path: "/api/jobs";
    body: SubmitJobRequest;
    response: Job;
  };
  listJobs: {
    method: "GET";
    path: "/api/jobs";
    params: {
      /**
       * Comma-separated statuses; empty: all
       * pattern ^((queued|processing|completed|failed|cancelled|expired)(,(queued|processing|completed|failed|cancelled|expired))*)?$
       */
      status?: string;
      /**
       * Comma-separated job types; empty: all
       * pattern ^((chat|image|response|summary|titles)(,(chat|image|response|summary|titles))*)?$
       */
      type?: string;
      /** Jobs created at or after: unix seconds, a date (its midnight UTC) or an RFC 3339 date-time; empty: all */
      since?: string | "";
      /**
       * Jobs per page (20)
       * min 1; max 100
       */
      limit?: number;
      /**
       * next_cursor of the previous page (any value of this shape is a place in the list); empty: the first page
       * pattern ^([0-9]{1,16}(\.[0-9]{1,17})?_[A-Za-z0-9-]{1,64})?$
       */
      cursor?: string;
    };
    response: History;
  };
  getJob: {
    method: "GET";
    path: "/api/jobs/{job_id}";
    params: {
      /** min length 1 */
      job_id: string;
    };
    response: Job;
  };
  jobEvents: {
    method: "GET";
    path: "/api/jobs/{job_id}/events";
    params: {
      /** min length 1 */
      job_id: string;
      /**
       * Resume after this seq (like Last-Event-ID, which wins when both are sent); empty: from a snapshot. A seq beyond the job's last event is a 400 invalid_last_event_id
       * pattern ^[0-9]{0,12}$
       */
      after?: string;
    };
    events:
      | { event: "snapshot"; data: JobSnapshotEvent; id?: string }
      | { event: "status"; data: JobStatusEvent; id?: string }
      | { event: "progress"; data: JobProgressEvent; id?: string }
      | { event: "delta"; data: JobDeltaEvent; id?: string }
      | { event: "position"; data: JobPositionEvent; id?: string }
      | { event: "error"; data: ApiError };
  };
  cancelJob: {
    method: "POST";
    path: "/api/jobs/{job_id}/cancel";
    params: {
      /** min length 1 */
      job_id: string;
    };
    response: Job;
  };
  retryJob: {
    method: "POST";
    path: "/api/jobs/{job_id}/retry";
    params: {
      /** min length 1 */
      job_id: string;
    };
    body?: RetryJobBody;
    response: Job;
  };
  allEvents: {
    method: "GET";
    path: "/api/events";
    params: {
      /**
       * Resume points, `<job_id>:<seq>` joined by commas (an `id:` of this stream); Last-Event-ID wins when both are sent; empty: from snapshots
       * max length 16384; pattern ^([A-Za-z0-9_-]{1,64}:[0-9]{1,12}(,[A-Za-z0-9_-]{1,64}:[0-9]{1,12})*)?$
       */
      cursor?: string;
    };
    events:
      | { event: "snapshot"; data: JobSnapshotEvent; id?: string }
      | { event: "status"; data: JobStatusEvent; id?: string }
      | { event: "progress"; data: JobProgressEvent; id?: string }
      | { event: "delta"; data: JobDeltaEvent; id?: string }
      | { event: "position"; data: JobPositionEvent; id?: string }
      | { event: "error"; data: ApiError };
  };
  jobWebhooks: {
    method: "GET";
    path: "/api/jobs/{job_id}/webhooks";
    params: {
      /** min length 1 */
      job_id: string;
    };
    response: JobWebhooksResponse;
  };
  getWebhookSecret: {
    method: "GET";
    path: "/api/webhooks/secret";
    response: GetWebhookSecretResponse;
  };
  rotateWebhookSecret: {
    method: "POST";
    path: "/api/webhooks/secret";
    response: GetWebhookSecretResponse;
  };
  stats: {
    method: "GET";
    path: "/api/stats";
    response: Stats;
  };
  signIn: {
    method: "POST";
    path: "/api/session";
    body?: SignInBody;
    response: SignInResponse;
  };
  signOut: {
    method: "DELETE";
    path: "/api/session";
    response: void;
  };
  me: {
    method: "GET";
    path: "/api/me";
    response: MeResponse;
  };
  health: {
    method: "GET";
    path: "/healthz";
    response: HealthResponse;
  };
}
