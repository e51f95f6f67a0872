// Herald console: sign-in, the router, and the live feed that tells the open view to
// refresh. Each view lives in views/ and renders into #view.

import { api, setSession, whenSignedOut } from "/admin/api.js";
import { h, loading, failure } from "/admin/ui.js";
import { connectFeed } from "/admin/feed.js";
import * as overview from "/admin/views/overview.js";
import * as deliveries from "/admin/views/deliveries.js";
import * as delivery from "/admin/views/delivery.js";
import * as endpoints from "/admin/views/endpoints.js";
import * as endpoint from "/admin/views/endpoint.js";

const $ = (id) => document.getElementById(id);

const routes = [
  { pattern: /^\/admin\/?$/, view: overview, nav: "overview" },
  { pattern: /^\/admin\/deliveries\/?$/, view: deliveries, nav: "deliveries" },
  { pattern: /^\/admin\/deliveries\/([0-9a-f-]+)$/, view: delivery, nav: "deliveries" },
  { pattern: /^\/admin\/endpoints\/?$/, view: endpoints, nav: "endpoints" },
  { pattern: /^\/admin\/endpoints\/([0-9a-f-]+)$/, view: endpoint, nav: "endpoints" },
];

let current = null; // { refresh, dispose } of the view on screen
let feed = null;
let renderCount = 0;

function showSignIn() {
  renderCount++;
  closeFeed();
  disposeCurrent();
  setSession(null);
  $("loading").hidden = true;
  $("view").hidden = true;
  $("nav").hidden = true;
  $("session").hidden = true;
  $("stale").hidden = true;
  $("sign-in-view").hidden = false;
  document.title = "Sign in · Herald console";
  $("key").focus();
}

function disposeCurrent() {
  if (current && current.dispose) current.dispose();
  current = null;
}

/** Renders the view for the current URL. Each view builds into its own element, which
 * replaces the page only if no later navigation happened meanwhile. */
async function render({ focus = true } = {}) {
  const path = location.pathname;
  const route = routes.find((r) => r.pattern.test(path));
  const root = $("view");
  disposeCurrent();
  $("stale").hidden = true;
  const token = ++renderCount;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (route && link.dataset.nav === route.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!route) {
    root.replaceChildren(h("h1", { text: "Page not found" }), failure(new Error(`there is no console page at ${path}`)));
  } else {
    root.replaceChildren(loading());
    const host = h("div");
    const params = path.match(route.pattern).slice(1);
    const context = { navigate, params, query: new URLSearchParams(location.search) };
    try {
      const mounted = await route.view.render(host, context);
      if (token !== renderCount) {
        if (mounted && mounted.dispose) mounted.dispose();
        return;
      }
      root.replaceChildren(host);
      current = mounted || null;
    } catch (error) {
      if (token !== renderCount) return;
      root.replaceChildren(h("h1", { text: "Could not load this page" }), failure(error, () => render()));
    }
  }
  const heading = root.querySelector("h1");
  if (heading) {
    document.title = `${heading.textContent} · Herald console`;
    if (focus) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }
}

/** Re-reads what the page shows; says so if that fails (the data on screen may be old). */
async function refreshView() {
  const view = current;
  if (!view || !view.refresh) return;
  const stale = $("stale");
  try {
    await view.refresh();
    if (view === current) stale.hidden = true;
  } catch (error) {
    if (view !== current) return;
    stale.textContent = `This page could not be refreshed (${error.message}); what it shows may be out of date.`;
    stale.hidden = false;
  }
}

/** Goes to a console URL without reloading. */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

/** Joins the browser's one live feed (feed.js): a change re-reads the page. */
function openFeed() {
  closeFeed();
  const live = $("live");
  live.textContent = "Connecting…";
  live.className = "live";
  feed = connectFeed((message) => {
    if (message.type === "live") {
      live.textContent = "Live";
      live.className = "live live-on";
      // Whatever changed while the feed was down.
      if (message.dropped) refreshView();
    } else if (message.type === "changed") {
      refreshView();
    } else if (message.type === "down") {
      live.textContent = "Reconnecting…";
      live.className = "live live-off";
      // Refused (an expired session, a proxy's 502): sign in again if that is why.
      if (message.closed) {
        api("GET", "/v1/sessions/current").catch((e) => e.status === 401 && showSignIn());
      }
    } else if (message.type === "signed-out") {
      showSignIn();
    }
  });
}

function closeFeed() {
  if (feed) feed.leave();
  feed = null;
}

async function start({ focus = false } = {}) {
  let session;
  try {
    session = await api("GET", "/v1/sessions/current");
  } catch {
    showSignIn();
    return;
  }
  setSession(session);
  $("key-prefix").textContent = session.key_prefix;
  $("sign-in-view").hidden = true;
  $("loading").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  $("view").hidden = false;
  openFeed();
  await render({ focus });
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("sign-in-error");
  const button = event.target.querySelector("button");
  error.hidden = true;
  button.disabled = true;
  try {
    await api("POST", "/v1/sessions", { key: $("key").value });
    $("key").value = "";
    $("key").removeAttribute("aria-invalid");
    await start({ focus: true });
  } catch (e) {
    error.textContent =
      e.status === 429
        ? "Too many failed attempts. Wait a few minutes, then try again."
        : e.status === 401
          ? "That key is not valid. Check it and try again."
          : e.status === 403
            ? "That key is not an admin key. The console needs an admin key."
            : e.message;
    error.hidden = false;
    $("key").setAttribute("aria-invalid", "true");
    $("key").focus();
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", async () => {
  // Every console tab of this browser shares the cookie: all of them are signed out.
  if (feed) feed.signedOut();
  feed = null;
  try {
    await api("DELETE", "/v1/sessions/current");
  } catch {
    // Signed out either way: the session is gone or unusable.
  }
  showSignIn();
});

// Same-origin console links navigate without a reload.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/admin")) return;
  // In-page links (skip to content) and anything while signed out behave natively.
  if (url.hash && url.pathname === location.pathname && url.search === location.search) return;
  if ($("nav").hidden) return;
  if (link.hasAttribute("download") || link.target) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => render());
// A page that is left gives up its share of the feed; one restored from the back/forward
// cache takes it up again.
window.addEventListener("pagehide", closeFeed);
window.addEventListener("pageshow", (event) => {
  if (event.persisted && !$("nav").hidden) openFeed();
});
whenSignedOut(showSignIn);
start();
