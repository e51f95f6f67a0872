// One delivery: the event as sent (pretty-printed payload and the request headers), every
// attempt with its time, duration, answer or error class, and what triggered it. Replay
// sends it again; the new attempt appears without a reload.

import { api, query } from "/admin/api.js";
import { h, replace, badge, time, prettyJson, headerTable, shortUrl, newestWins } from "/admin/ui.js";

export async function render(root, { params }) {
  const id = params[0];
  const [keys, endpoints] = await Promise.all([
    api("GET", "/v1/keys").then((r) => r.keys).catch(() => []),
    api("GET", "/v1/endpoints").then((r) => r.endpoints).catch(() => []),
  ]);
  const keyName = (keyId) => {
    const key = keys.find((k) => k.id === keyId);
    if (!key) return keyId ? `key ${keyId.slice(0, 8)}…` : "an unknown key";
    return key.description ? `${key.description} (${key.key_prefix}…)` : `key ${key.key_prefix}…`;
  };
  let event = null;
  let delivery = await api("GET", `/v1/deliveries/${id}`);
  try {
    event = await api("GET", `/v1/events/${delivery.event_id}`);
  } catch {
    event = null; // purged by retention: the attempts still say what was sent
  }
  const endpointUrl = (endpoints.find((e) => e.id === delivery.endpoint_id) || {}).url;

  const summary = h("section", { class: "card", "aria-labelledby": "summary-title" });
  const attemptsArea = h("section", { class: "card", "aria-labelledby": "attempts-title" });
  const message = h("p", { role: "status", "aria-live": "polite", class: "notice", hidden: true });
  const replayButton = h("button", { type: "button", id: "replay", class: "primary", text: "Replay" });
  replayButton.addEventListener("click", async () => {
    replayButton.disabled = true;
    try {
      await api("POST", `/v1/deliveries/${id}/replay`);
      message.hidden = false;
      message.className = "notice";
      message.textContent = "Replay requested: the new attempt appears below when it is made.";
      load().catch(() => {}); // the live feed brings it too
    } catch (error) {
      message.hidden = false;
      message.className = "error";
      message.textContent = `Replay refused: ${error.message}`;
    } finally {
      replayButton.disabled = delivery.status === "delivering";
    }
  });

  const eventArea = h(
    "section",
    { class: "card", "aria-labelledby": "event-title" },
    h("h2", { id: "event-title", text: "Event" }),
    event
      ? [
          h("dl", { class: "facts" },
            h("dt", { text: "Event id (webhook-id)" }), h("dd", { class: "mono", text: event.id }),
            h("dt", { text: "Stream" }), h("dd", { class: "mono", text: `${event.stream} #${event.seq}` }),
            h("dt", { text: "Created" }), h("dd", {}, time(event.created_at))),
          h("h3", { text: "Payload" }),
          h("pre", { class: "json", id: "event-payload", tabindex: "0", "aria-label": "Event payload" }, prettyJson(event.payload)),
        ]
      : h("p", { class: "muted", text: "The event itself is no longer stored (past retention)." }),
  );

  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "/admin/deliveries", text: "Deliveries" }), " / ", h("span", { class: "mono", text: id.slice(0, 8) })),
    h("div", { class: "title-row" }, h("h1", { text: `Delivery of ${delivery.event_type}` }), replayButton),
    message,
    summary,
    eventArea,
    attemptsArea,
  );

  function draw() {
    replayButton.disabled = delivery.status === "delivering";
    replayButton.title = delivery.status === "delivering" ? "Being attempted right now" : "";
    replace(
      summary,
      h("h2", { id: "summary-title", text: "Summary" }),
      h("dl", { class: "facts" },
        h("dt", { text: "Status" }), h("dd", { id: "delivery-status" }, badge(delivery.status)),
        h("dt", { text: "Endpoint" }), h("dd", {}, h("a", { href: `/admin/endpoints/${delivery.endpoint_id}`, class: "mono", text: shortUrl(endpointUrl) || delivery.endpoint_id })),
        h("dt", { text: "Attempts" }), h("dd", { text: String(delivery.attempts.length) }),
        h("dt", { text: "Next attempt" }), h("dd", {}, delivery.status === "pending" ? time(delivery.next_attempt_at) : "—"),
        h("dt", { text: "Last result" }), h("dd", { class: "mono", text: delivery.last_status_code ? `${delivery.last_status_code}${delivery.last_error ? ` · ${delivery.last_error}` : ""}` : delivery.last_error || "—" }),
        h("dt", { text: "Created" }), h("dd", {}, time(delivery.created_at)),
        h("dt", { text: "Delivery id" }), h("dd", { class: "mono", text: delivery.id }),
        delivery.replay_id ? [h("dt", { text: "Bulk replay" }), h("dd", {}, h("a", { href: `/admin/deliveries${query({ replay_id: delivery.replay_id })}`, text: "Deliveries of that replay" }))] : null),
    );
    const attempts = [...delivery.attempts].reverse();
    // Attempts the reader opened stay open across a refresh; at first, the newest is open.
    const opened = [...attemptsArea.querySelectorAll("details[data-id]")];
    const open = opened.length ? new Set(opened.filter((d) => d.open).map((d) => d.dataset.id)) : null;
    const knew = new Set(opened.map((d) => d.dataset.id));
    replace(
      attemptsArea,
      h("h2", { id: "attempts-title", text: `Attempts (${attempts.length})` }),
      attempts.length === 0
        ? h("p", { class: "state state-empty", text: delivery.status === "pending" ? "No attempt yet: the first is due now." : "No attempts." })
        : h("ol", { class: "attempts plain", id: "attempts", reversed: true }, attempts.map((a, i) => attemptItem(a, attempts.length - i, open ? open.has(a.id) || (i === 0 && !knew.has(a.id)) : i === 0))),
    );
  }

  function attemptItem(a, number, open) {
    const ok = a.response_status !== null && a.response_status >= 200 && a.response_status < 300;
    const result = a.response_status !== null ? `HTTP ${a.response_status}` : `error: ${a.error_class}`;
    const trigger = a.trigger === "replay" ? `replay by ${keyName(a.triggered_by)}` : "schedule";
    return h(
      "li",
      { class: "attempt", "data-status": a.response_status === null ? "" : String(a.response_status), "data-trigger": a.trigger },
      h(
        "details",
        { open, "data-id": a.id },
        h("summary", {},
          h("span", { class: "attempt-number", text: `#${number}` }), " ",
          time(a.started_at), " ",
          badge(ok ? "succeeded" : "failed"), " ",
          h("span", { class: "mono attempt-result", text: result }), " ",
          h("span", { class: "muted", text: `${a.duration_ms} ms · ${trigger}` })),
        a.error_class ? h("p", { class: "error", text: `${a.error_class}: ${a.error_detail || ""}` }) : null,
        headerTable("Request headers sent", a.request_headers),
        a.response_headers ? headerTable("Response headers", a.response_headers) : null,
        a.response_body !== null && a.response_body !== undefined
          ? [h("h4", { text: "Response body" }), h("pre", { class: "json response-body", tabindex: "0", "aria-label": `Response body of attempt ${number}` }, a.response_body === "" ? "(empty)" : prettyJson(a.response_body))]
          : null,
      ),
    );
  }

  const load = newestWins(() => api("GET", `/v1/deliveries/${id}`), (fresh) => {
    delivery = fresh;
    draw();
  });
  draw();

  return { refresh: load };
}
