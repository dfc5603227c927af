// The few API calls the page makes besides jobs-client.js (which owns createJob, watchJob and cancel).

export class ApiProblem extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    // Always JSON, even without a body: the server refuses a cookie-signed change that isn't (CSRF, see README).
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const err = data?.error || {};
    throw new ApiProblem(response.status, err.code || `http_${response.status}`, err.message || response.statusText);
  }
  return data;
}

const jobPath = (id) => `/api/jobs/${encodeURIComponent(id)}`;
export const getJob = (id) => api(jobPath(id));
/** `key`: the user's own provider key, for a job that ran on it (the server does not keep it). */
export const retryJob = (id, key) =>
  api(`${jobPath(id)}/retry`, { method: "POST", body: key ? { user_provided_key: key } : undefined });
export const me = () => api("/api/me");
export const signIn = (token) => api("/api/session", { method: "POST", body: token ? { token } : undefined });
export const stats = () => api("/api/stats");
export function history({ cursor, limit = 8 } = {}) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (cursor) q.set("cursor", cursor);
  return api(`/api/jobs?${q}`);
}
