// Overview: deliveries by status over the last hour and day, the due backlog and its age,
// and the endpoints that are failing or disabled, each linking into the filtered lists.

import { api, query } from "/admin/api.js";
import { h, replace, badge, duration, time, empty, failure, loading, shortUrl, newestWins } from "/admin/ui.js";

const STATUSES = ["pending", "delivering", "succeeded", "failed"];

export async function render(root) {
  const body = h("div", { class: "stack" }, loading("Loading the overview…"));
  replace(root, h("h1", { text: "Overview" }), body);

  const load = newestWins(() => api("GET", "/v1/overview"), draw);
  function draw(data) {
    const since = (hours) => new Date(Date.now() - hours * 3600 * 1000).toISOString();
    const countsTable = h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "status-counts" },
        h("caption", { text: "Deliveries by status (created in the window)" }),
        h(
          "thead",
          {},
          h("tr", {}, h("th", { scope: "col", text: "Status" }), h("th", { scope: "col", text: "Last hour" }), h("th", { scope: "col", text: "Last 24 hours" })),
        ),
        h(
          "tbody",
          {},
          STATUSES.map((status) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, badge(status)),
              h("td", {}, h("a", { href: `/admin/deliveries${query({ status, since: since(1) })}`, "aria-label": `${data.deliveries.last_hour[status]} ${status} in the last hour`, text: String(data.deliveries.last_hour[status]) })),
              h("td", {}, h("a", { href: `/admin/deliveries${query({ status, since: since(24) })}`, "aria-label": `${data.deliveries.last_day[status]} ${status} in the last 24 hours`, text: String(data.deliveries.last_day[status]) })),
            ),
          ),
        ),
      ),
    );
    const backlog = data.backlog;
    const backlogCard = h(
      "section",
      { class: "card", "aria-labelledby": "backlog-title" },
      h("h2", { id: "backlog-title", text: "Backlog" }),
      h(
        "dl",
        { class: "facts" },
        h("dt", { text: "Due now" }),
        h("dd", { id: "backlog-due", text: String(backlog.due) }),
        h("dt", { text: "Oldest due for" }),
        h("dd", { id: "backlog-age", text: backlog.oldest_due_age_seconds === null ? "—" : duration(backlog.oldest_due_age_seconds) }),
        h("dt", { text: "Waiting for a retry" }),
        h("dd", { text: String(backlog.pending - backlog.due) }),
        h("dt", { text: "Being attempted" }),
        h("dd", { text: String(backlog.delivering) }),
      ),
      h("a", { href: `/admin/deliveries${query({ status: "pending" })}`, text: "Pending deliveries" }),
    );
    const troubled = data.endpoints.filter((e) => !e.enabled || e.failing_since || (e.failed_24h > 0));
    const endpointsCard = h(
      "section",
      { class: "card", "aria-labelledby": "troubled-title" },
      h("h2", { id: "troubled-title", text: "Endpoints needing attention" }),
      troubled.length === 0
        ? empty(data.endpoints.length === 0 ? "No endpoints yet." : "Every endpoint is healthy.")
        : h(
            "ul",
            { class: "plain", id: "troubled-endpoints" },
            troubled.map((e) =>
              h(
                "li",
                {},
                h("a", { href: `/admin/endpoints/${e.id}`, text: shortUrl(e.url) }),
                " ",
                e.enabled ? badge(e.failing_since ? "failing" : "degraded") : badge("disabled"),
                h(
                  "div",
                  { class: "muted" },
                  e.enabled
                    ? [e.failing_since ? ["failing since ", time(e.failing_since), "; "] : null, `${e.failed_24h} failed in 24 h`]
                    : `disabled: ${e.disabled_reason || "by an operator"}`,
                  e.last_error ? ` · last error: ${e.last_error}` : null,
                ),
                h("a", { href: `/admin/deliveries${query({ endpoint_id: e.id, status: "failed" })}`, text: "Failed deliveries" }),
              ),
            ),
          ),
    );
    replace(body, h("section", { class: "card", "aria-label": "Deliveries by status" }, countsTable), h("div", { class: "grid" }, backlogCard, endpointsCard));
  }

  async function first() {
    try {
      await load();
    } catch (error) {
      replace(body, failure(error, () => {
        replace(body, loading("Loading the overview…"));
        first();
      }));
    }
  }
  await first();
  return { refresh: load };
}
