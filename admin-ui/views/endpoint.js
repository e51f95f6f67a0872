// One endpoint: its health, edit, disable/enable, rotate the signing secret (shown once,
// with a copy button), send a test event, recover its events since a time, delete.

import { api, query } from "/admin/api.js";
import { h, replace, badge, time, shortUrl, copyable, confirmDialog, fromLocalInput, toLocalInput, newestWins } from "/admin/ui.js";
import { endpointForm } from "/admin/views/endpoint_form.js";
import { replayProgress } from "/admin/views/replay.js";

export async function render(root, { params, navigate }) {
  const id = params[0];
  let endpoint = await api("GET", `/v1/endpoints/${id}`);
  let progress = null;
  const summary = h("section", { class: "card", "aria-labelledby": "health-title" });
  const result = h("div", { id: "action-result", "aria-live": "polite" });
  const say = (text, kind = "notice") => replace(result, h("p", { class: kind, role: kind === "error" ? "alert" : "status", text }));

  const toggle = h("button", { type: "button", id: "toggle-enabled" });
  toggle.addEventListener("click", async () => {
    const enable = !endpoint.enabled;
    if (!enable && !(await confirmDialog("Disable this endpoint?", "Nothing is sent to it while it is disabled; its pending deliveries are kept as failed, to replay once it is fixed.", "Disable"))) return;
    try {
      endpoint = await api("PATCH", `/v1/endpoints/${id}`, { enabled: enable });
      say(enable ? "Endpoint enabled." : "Endpoint disabled.");
      drawHealth([endpoint, null]);
      loadHealth().catch(() => {});
    } catch (error) {
      say(`Could not change it: ${error.message}`, "error");
    }
  });

  const title = h("h1", { class: "mono break" });
  const subtitle = h("p", { class: "muted subtitle" });
  const testButton = h("button", { type: "button", id: "send-test", text: "Send test event", "aria-describedby": "test-hint" });
  const testHint = h("span", { id: "test-hint", class: "muted" });
  testButton.addEventListener("click", async () => {
    testButton.disabled = true;
    try {
      const sent = await api("POST", `/v1/endpoints/${id}/test`, {});
      replace(result, h("p", { class: "notice", role: "status" }, "Test event sent. ", h("a", { href: `/admin/deliveries/${sent.delivery_id}`, text: "Follow its delivery" })));
    } catch (error) {
      say(`Could not send a test event: ${error.message}`, "error");
    } finally {
      testButton.disabled = false;
    }
  });

  const rotateButton = h("button", { type: "button", id: "rotate-secret", text: "Rotate secret…" });
  rotateButton.addEventListener("click", async () => {
    if (!(await confirmDialog("Rotate the signing secret?", "A new secret signs every webhook from now on. The old one keeps verifying for 24 hours, so the receiver can switch without dropping anything.", "Rotate"))) return;
    try {
      const rotated = await api("POST", `/v1/endpoints/${id}/rotate-secret`, {});
      replace(result, h("section", { class: "card secret", "aria-labelledby": "rotated-title" },
        h("h2", { id: "rotated-title", text: "New signing secret" }),
        h("p", {}, "Shown once. The previous secret also verifies until ", time(rotated.previous_secret_expires_at), "."),
        copyable("New signing secret", rotated.secret)));
      result.querySelector("input").focus();
    } catch (error) {
      say(`Could not rotate: ${error.message}`, "error");
    }
  });

  const deleteButton = h("button", { type: "button", class: "danger", id: "delete-endpoint", text: "Delete…" });
  deleteButton.addEventListener("click", async () => {
    if (!(await confirmDialog("Delete this endpoint?", "It stops receiving webhooks at once. Its deliveries stay in the log, marked failed.", "Delete"))) return;
    try {
      await api("DELETE", `/v1/endpoints/${id}`);
      navigate("/admin/endpoints");
    } catch (error) {
      say(`Could not delete: ${error.message}`, "error");
    }
  });

  const dayAgo = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const recoverForm = h("form", { class: "row wrap", id: "recover-form", "aria-describedby": "recover-help" },
    h("div", { class: "field" }, h("label", { for: "recover-since", text: "Since" }), h("input", { id: "recover-since", name: "since", type: "datetime-local", required: true, value: toLocalInput(dayAgo) })),
    h("div", { class: "field" }, h("label", { for: "recover-until", text: "Until (empty: now)" }), h("input", { id: "recover-until", name: "until", type: "datetime-local" })),
    h("div", { class: "field actions" }, h("button", { type: "submit", text: "Recover…" })));
  const recoverArea = h("div", { id: "recover-area" });
  recoverForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const since = fromLocalInput(recoverForm.elements.since.value);
    const until = fromLocalInput(recoverForm.elements.until.value);
    if (!since) {
      replace(recoverArea, h("p", { class: "error", role: "alert", text: "Choose the time to recover from." }));
      return;
    }
    if (!(await confirmDialog("Recover events?", `Every event since ${new Date(since).toLocaleString()} that this endpoint did not receive (failed, or sent before it subscribed) is sent to it again now.`, "Recover"))) return;
    try {
      const body = until ? { since, until } : { since };
      const recovered = await api("POST", `/v1/endpoints/${id}/recover`, body);
      if (progress) progress.dispose();
      if (recovered.recovered === 0 && !recovered.searching) {
        progress = null;
        replace(recoverArea, h("p", { class: "notice", role: "status", text: "Nothing to recover: the endpoint has every event of that period." }));
        return;
      }
      progress = replayProgress(recovered.replay_id);
      replace(recoverArea, progress.element);
    } catch (error) {
      replace(recoverArea, h("p", { class: "error", role: "alert", text: `Could not recover: ${error.message}` }));
    }
  });

  const form = endpointForm(endpoint, "Save changes", async (body) => {
    endpoint = await api("PATCH", `/v1/endpoints/${id}`, body);
    say("Saved.");
    drawHealth([endpoint, null]);
    loadHealth().catch(() => {});
  });

  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "/admin/endpoints", text: "Endpoints" }), " / ", h("span", { class: "mono", text: id.slice(0, 8) })),
    title,
    subtitle,
    h("div", { class: "row wrap toolbar", role: "group", "aria-label": "Endpoint actions" }, toggle, testButton, testHint, rotateButton,
      h("a", { class: "button", href: `/admin/deliveries${query({ endpoint_id: id })}`, text: "Its deliveries" }), deleteButton),
    result,
    summary,
    h("section", { class: "card", "aria-labelledby": "recover-title" },
      h("h2", { id: "recover-title", text: "Recover" }),
      h("p", { class: "muted", id: "recover-help", text: "Send this endpoint every event of a period that it has not received: its failed deliveries, and events from before it subscribed." }),
      recoverForm, recoverArea),
    h("section", { class: "card", "aria-labelledby": "edit-title" }, h("h2", { id: "edit-title", text: "Settings" }), form),
  );

  // The endpoint itself is re-read too: a worker may have disabled it meanwhile.
  const loadHealth = newestWins(
    () => Promise.all([api("GET", `/v1/endpoints/${id}`), api("GET", "/v1/overview")]),
    drawHealth,
  );
  let lastHealth = {};
  function drawHealth([fresh, overview]) {
    endpoint = fresh;
    if (overview) lastHealth = overview.endpoints.find((e) => e.id === id) || {};
    const hl = lastHealth;
    title.textContent = shortUrl(endpoint.url);
    subtitle.textContent = endpoint.description;
    subtitle.hidden = !endpoint.description;
    toggle.textContent = endpoint.enabled ? "Disable…" : "Enable";
    toggle.className = endpoint.enabled ? "" : "primary";
    testButton.disabled = !endpoint.enabled;
    testHint.textContent = endpoint.enabled ? "" : "Enable the endpoint to send it a test event.";
    const rate = hl.success_rate_24h === null || hl.success_rate_24h === undefined ? "—" : `${(hl.success_rate_24h * 100).toFixed(1)} %`;
    replace(
      summary,
      h("h2", { id: "health-title", text: "Health" }),
      h("dl", { class: "facts" },
        h("dt", { text: "State" }), h("dd", { id: "endpoint-state" }, endpoint.enabled ? badge(endpoint.failing_since ? "failing" : "enabled") : badge("disabled"), !endpoint.enabled && endpoint.disabled_reason ? ` ${endpoint.disabled_reason}` : null),
        h("dt", { text: "Success over 24 h" }), h("dd", { text: `${rate} (${hl.succeeded_24h || 0} succeeded, ${hl.failed_24h || 0} failed)` }),
        h("dt", { text: "Backlog" }), h("dd", { text: String(hl.backlog || 0) }),
        h("dt", { text: "Failing since" }), h("dd", {}, time(endpoint.failing_since)),
        h("dt", { text: "Last success" }), h("dd", {}, time(endpoint.last_success_at)),
        h("dt", { text: "Last error" }), h("dd", { id: "endpoint-last-error", class: "mono break" }, hl.last_error ? [hl.last_error, " · ", time(hl.last_error_at)] : "—"),
        h("dt", { text: "URL" }), h("dd", { class: "mono break", text: endpoint.url }),
        h("dt", { text: "Created" }), h("dd", {}, time(endpoint.created_at))),
    );
  }
  await loadHealth();

  return {
    refresh() {
      if (progress) progress.refresh();
      return loadHealth();
    },
    dispose() {
      if (progress) progress.dispose();
    },
  };
}
