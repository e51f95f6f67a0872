// The console is a client of Herald's public JSON API: the same routes, the same admin
// authorization (here a session cookie, plus the CSRF token on state-changing requests).

let csrfToken = null;
let onSignedOut = () => {};

/** Remembers the session's CSRF token (kept in memory only, never in storage). */
export function setSession(session) {
  csrfToken = session ? session.csrf_token : null;
}

/** Called when a request comes back 401: the session ended or expired. */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

/** An error from the API, with its problem+json fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Calls the API; resolves with the parsed JSON body (or null), rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (csrfToken && method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { detail: "Herald did not answer (network error)." });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && !path.startsWith("/v1/sessions")) onSignedOut();
    throw error;
  }
  return data;
}

/** A query string from an object, skipping empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") search.set(k, v);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
