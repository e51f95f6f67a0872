// Herald console: signs in with an admin key (exchanged for an HttpOnly session cookie)
// and keeps the session's CSRF token in memory for state-changing requests.

const $ = (id) => document.getElementById(id);
let csrfToken = null;

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (csrfToken && method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((data && (data.detail || data.title)) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(view) {
  $("loading").hidden = true;
  $("sign-in-view").hidden = view !== "sign-in";
  $("console-view").hidden = view !== "console";
  $("sign-out").hidden = view !== "console";
}

async function start() {
  try {
    const session = await api("GET", "/v1/sessions/current");
    csrfToken = session.csrf_token;
    $("key-prefix").textContent = session.key_prefix;
    show("console");
  } catch {
    show("sign-in");
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("sign-in-error");
  error.hidden = true;
  try {
    await api("POST", "/v1/sessions", { key: $("key").value });
    $("key").value = "";
    await start();
  } catch (e) {
    error.textContent = e.status === 429 ? "Too many failed attempts; wait a few minutes." : e.message;
    error.hidden = false;
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api("DELETE", "/v1/sessions/current");
  } finally {
    csrfToken = null;
    show("sign-in");
  }
});

start();
