// Deliveries: the webhook log, filtered by status, endpoint, event type, stream, response
// status code, time range and replay; newest first with keyset pagination; filters live in
// the URL. Updates live, and replays the whole filter after showing how many match.

import { api, query } from "/admin/api.js";
import { h, replace, badge, time, empty, failure, loading, shortUrl, toLocalInput, fromLocalInput, confirmDialog, newestWins } from "/admin/ui.js";
import { replayProgress } from "/admin/views/replay.js";

const FILTERS = ["status", "endpoint_id", "event_type", "stream", "status_code", "since", "until", "replay_id"];
const LIMIT = 50;

export async function render(root, { navigate, query: params }) {
  const filter = {};
  for (const name of FILTERS) if (params.get(name)) filter[name] = params.get(name);
  const cursor = params.get("cursor") || "";

  let endpoints = [];
  try {
    endpoints = (await api("GET", "/v1/endpoints")).endpoints;
  } catch {
    // The filter still works with an endpoint id typed in the URL.
  }
  const urlOf = new Map(endpoints.map((e) => [e.id, e.url]));

  const field = (id, label, control) => h("div", { class: "field" }, h("label", { for: id, text: label }), control);
  const form = h(
    "form",
    { class: "filters", id: "filters", role: "search", "aria-label": "Filter deliveries" },
    field("f-status", "Status", h("select", { id: "f-status", name: "status" },
      h("option", { value: "", text: "Any" }),
      ["pending", "delivering", "succeeded", "failed"].map((s) => h("option", { value: s, text: s, selected: filter.status === s })))),
    field("f-endpoint", "Endpoint", h("select", { id: "f-endpoint", name: "endpoint_id" },
      h("option", { value: "", text: "Any" }),
      endpoints.map((e) => h("option", { value: e.id, text: shortUrl(e.url), selected: filter.endpoint_id === e.id })),
      filter.endpoint_id && !urlOf.has(filter.endpoint_id) ? h("option", { value: filter.endpoint_id, text: filter.endpoint_id, selected: true }) : null)),
    field("f-type", "Event type", h("input", { id: "f-type", name: "event_type", value: filter.event_type || "", placeholder: "order.created" })),
    field("f-stream", "Stream", h("input", { id: "f-stream", name: "stream", value: filter.stream || "", placeholder: "orders" })),
    field("f-code", "Response status", h("input", { id: "f-code", name: "status_code", inputmode: "numeric", value: filter.status_code || "", placeholder: "500" })),
    field("f-since", "From", h("input", { id: "f-since", name: "since", type: "datetime-local", value: toLocalInput(filter.since) })),
    field("f-until", "Until", h("input", { id: "f-until", name: "until", type: "datetime-local", value: toLocalInput(filter.until) })),
    filter.replay_id ? h("input", { type: "hidden", name: "replay_id", value: filter.replay_id }) : null,
    h("div", { class: "field actions" },
      h("button", { type: "submit", class: "primary", text: "Apply filters" }),
      h("a", { href: "/admin/deliveries", class: "button", text: "Clear" })),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const [name, value] of data.entries()) {
      if (!value) continue;
      next[name] = name === "since" || name === "until" ? fromLocalInput(value) : value.trim();
    }
    navigate(`/admin/deliveries${query(next)}`);
  });

  const tableArea = h("div", { id: "deliveries-area" }, loading("Loading deliveries…"));
  const notice = h("p", { class: "notice", role: "status", hidden: true });
  const bulkArea = h("div", { id: "bulk-area" });
  const hasFilter = Object.keys(filter).length > 0;
  const bulkButton = h("button", {
    type: "button",
    id: "bulk-replay",
    text: "Replay matching deliveries…",
    disabled: !hasFilter,
    "aria-describedby": "bulk-hint",
  });
  const bulkHint = h("span", { id: "bulk-hint", class: "muted", text: hasFilter ? "" : "Choose at least one filter to replay." });
  let progress = null;

  bulkButton.addEventListener("click", async () => {
    bulkButton.disabled = true;
    try {
      const preview = await api("POST", "/v1/deliveries/replay", { filter, dry_run: true });
      const described = `(${describe(filter, urlOf)})`;
      const n = preview.matched.toLocaleString("en");
      let ok;
      if (preview.searched_to) {
        // A filter no index answers: counted among the newest deliveries only; the replay
        // searches the rest of the history in the background.
        const back = new Date(preview.searched_to).toLocaleString();
        ok = await confirmDialog(
          preview.matched === 0
            ? "Search older deliveries and replay every match?"
            : `Replay ${n} ${preview.matched === 1 ? "delivery" : "deliveries"} and every older match?`,
          `${preview.matched === 0 ? "None" : n} of the deliveries created since ${back} ${preview.matched === 1 ? "matches" : "match"} the current filter ${described}; older ones have not been searched yet. The replay sends the matches again now, as a replay by your key, and goes on searching older deliveries in the background (at most 100,000 in all).`,
          "Replay",
        );
      } else if (preview.matched === 0) {
        replace(bulkArea, h("p", { class: "notice", role: "status", text: "No deliveries match this filter (deliveries being attempted right now are not counted)." }));
        return;
      } else {
        ok = await confirmDialog(
          preview.more
            ? `Replay more than ${n} deliveries?`
            : `Replay ${n} ${preview.matched === 1 ? "delivery" : "deliveries"}?`,
          preview.more
            ? `More than ${n} deliveries match the current filter ${described}. They will be sent again now, as a replay by your key; one replay takes at most 100,000: if more match, replay again for the rest.`
            : `Every delivery matching the current filter ${described} will be sent again now, as a replay by your key.`,
          preview.more ? "Replay" : `Replay ${n}`,
        );
      }
      if (!ok) return;
      const done = await api("POST", "/v1/deliveries/replay", { filter });
      if (progress) progress.dispose();
      progress = replayProgress(done.replay_id);
      replace(bulkArea, progress.element);
    } catch (error) {
      replace(bulkArea, h("p", { class: "error", role: "alert", text: `Replay failed: ${error.message}` }));
    } finally {
      bulkButton.disabled = !hasFilter;
    }
  });

  replace(
    root,
    h("div", { class: "title-row" }, h("h1", { text: "Deliveries" }), h("div", { class: "row wrap" }, bulkHint, bulkButton)),
    form,
    h("p", { class: "muted", id: "filter-summary", text: hasFilter ? `Showing: ${describe(filter, urlOf)}` : "Showing every delivery, newest first." }),
    bulkArea,
    notice,
    tableArea,
  );

  const load = newestWins(
    () => api("GET", `/v1/deliveries${query({ ...filter, cursor, limit: LIMIT })}`),
    draw,
  );
  function draw(page) {
    // Keep keyboard focus on the same delivery across a live refresh.
    const focusedRow = document.activeElement && document.activeElement.closest && document.activeElement.closest("#deliveries-table tr[data-id]");
    const focusedId = focusedRow ? focusedRow.dataset.id : null;
    if (page.deliveries.length === 0) {
      replace(tableArea, empty(page.searched_to ? "None so far." : cursor ? "No older deliveries." : hasFilter ? "No deliveries match these filters." : "No deliveries yet. They appear here as soon as an event is sent to an endpoint."));
    } else {
      replace(tableArea, table(page.deliveries, urlOf));
    }
    // A filter no index answers (type, stream, status code) searches a bounded stretch of
    // history per page and says how far back it looked.
    if (page.searched_to) {
      tableArea.append(h("p", { class: "muted", id: "searched-to" }, "Searched back to ", time(page.searched_to), "."));
    }
    const pager = h("nav", { class: "pager", "aria-label": "Pages" },
      cursor ? h("a", { href: `/admin/deliveries${query(filter)}`, text: "← Newest" }) : null,
      page.next_cursor ? h("a", { href: `/admin/deliveries${query({ ...filter, cursor: page.next_cursor })}`, rel: "next", text: page.searched_to ? "Search older →" : "Older →" }) : null);
    tableArea.append(pager);
    if (focusedId) {
      const link = tableArea.querySelector(`tr[data-id="${focusedId}"] a`);
      if (link) link.focus();
    }
  }

  async function first() {
    try {
      await load();
    } catch (error) {
      replace(tableArea, failure(error, () => {
        replace(tableArea, loading("Loading deliveries…"));
        first();
      }));
    }
  }
  await first();

  return {
    refresh() {
      if (progress) progress.refresh();
      if (cursor) {
        // An older page stays as it is; say (once) that there is news at the top.
        if (notice.hidden) {
          notice.hidden = false;
          replace(notice, "New delivery activity. ", h("a", { href: `/admin/deliveries${query(filter)}`, text: "Show the newest" }));
        }
        return Promise.resolve();
      }
      return load();
    },
    dispose() {
      if (progress) progress.dispose();
    },
  };
}

function describe(filter, urlOf) {
  const parts = [];
  if (filter.status) parts.push(`status ${filter.status}`);
  if (filter.endpoint_id) parts.push(`endpoint ${shortUrl(urlOf.get(filter.endpoint_id) || filter.endpoint_id)}`);
  if (filter.event_type) parts.push(`type ${filter.event_type}`);
  if (filter.stream) parts.push(`stream ${filter.stream}`);
  if (filter.status_code) parts.push(`response ${filter.status_code}`);
  if (filter.since) parts.push(`from ${new Date(filter.since).toLocaleString()}`);
  if (filter.until) parts.push(`until ${new Date(filter.until).toLocaleString()}`);
  if (filter.replay_id) parts.push(`replay ${filter.replay_id.slice(0, 8)}…`);
  return parts.join(", ");
}

function table(deliveries, urlOf) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "deliveries-table" },
      h("caption", { class: "visually-hidden", text: "Deliveries, newest first" }),
      h("thead", {}, h("tr", {},
        ["Created", "Status", "Event type", "Stream", "Endpoint", "Attempts", "Last result"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, deliveries.map((d) =>
        h("tr", { "data-id": d.id, "data-status": d.status },
          h("td", {}, h("a", { href: `/admin/deliveries/${d.id}`, "aria-label": `Delivery of ${d.event_type} created ${new Date(d.created_at).toLocaleString()}, ${d.status}` }, time(d.created_at))),
          h("td", {}, badge(d.status)),
          h("td", { class: "mono", text: d.event_type }),
          h("td", { class: "mono", text: `${d.stream} #${d.seq}` }),
          h("td", { class: "mono clip", title: urlOf.get(d.endpoint_id) || d.endpoint_id, text: shortUrl(urlOf.get(d.endpoint_id)) || d.endpoint_id.slice(0, 8) }),
          h("td", { text: String(d.attempts) }),
          h("td", { class: "clip" }, d.last_status_code ? h("span", { class: "mono", text: String(d.last_status_code) }) : null, d.last_error ? h("span", { class: "muted", text: ` ${d.last_error}` }) : d.last_status_code ? null : "—"),
        ))),
    ),
  );
}
