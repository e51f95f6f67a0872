// Endpoints: every endpoint with its health (success rate over 24 h, backlog, last error,
// enabled or disabled), and a form to add one (its signing secret is shown once).

import { api, query } from "/admin/api.js";
import { h, replace, badge, empty, failure, loading, shortUrl, copyable, newestWins } from "/admin/ui.js";
import { endpointForm } from "/admin/views/endpoint_form.js";

export async function render(root) {
  const listArea = h("div", { id: "endpoints-area" }, loading("Loading endpoints…"));
  const created = h("div", { id: "created-area" });
  const form = endpointForm(null, "Create endpoint", async (body) => {
    const endpoint = await api("POST", "/v1/endpoints", body);
    form.reset();
    replace(
      created,
      h("section", { class: "card secret", role: "status", "aria-labelledby": "created-title" },
        h("h2", { id: "created-title", text: "Endpoint created" }),
        h("p", {}, "Give this signing secret to the receiver now: it is not shown again. ",
          h("a", { href: `/admin/endpoints/${endpoint.id}`, text: "Open the endpoint" })),
        copyable("Signing secret", endpoint.secret)),
    );
    created.querySelector("input").focus();
    load().catch(() => {}); // created either way; the live feed refreshes the list too
  });
  replace(
    root,
    h("h1", { text: "Endpoints" }),
    listArea,
    created,
    h("section", { class: "card", "aria-labelledby": "new-title" }, h("h2", { id: "new-title", text: "New endpoint" }), form),
  );

  const load = newestWins(
    () => Promise.all([api("GET", "/v1/endpoints"), api("GET", "/v1/overview")]),
    draw,
  );
  function draw([list, overview]) {
    const health = new Map(overview.endpoints.map((e) => [e.id, e]));
    if (list.endpoints.length === 0) {
      replace(listArea, empty("No endpoints yet. Add one below to start receiving webhooks."));
      return;
    }
    replace(
      listArea,
      h("div", { class: "table-wrap" },
        h("table", { id: "endpoints-table" },
          h("caption", { class: "visually-hidden", text: "Endpoints and their health" }),
          h("thead", {}, h("tr", {}, ["Endpoint", "State", "Success (24 h)", "Backlog", "Last error"].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, list.endpoints.map((e) => {
            const hl = health.get(e.id) || {};
            const rate = hl.success_rate_24h === null || hl.success_rate_24h === undefined ? "—" : `${(hl.success_rate_24h * 100).toFixed(1)} %`;
            return h("tr", { "data-id": e.id },
              h("td", {},
                h("a", { href: `/admin/endpoints/${e.id}`, class: "mono", text: shortUrl(e.url) }),
                e.description ? h("div", { class: "muted", text: e.description }) : null),
              h("td", {}, e.enabled ? badge(e.failing_since ? "failing" : "enabled") : badge("disabled"),
                !e.enabled && e.disabled_reason ? h("div", { class: "muted", text: e.disabled_reason }) : null),
              h("td", { text: `${rate}${hl.failed_24h ? ` (${hl.failed_24h} failed)` : ""}` }),
              h("td", {}, hl.backlog ? h("a", { href: `/admin/deliveries${query({ endpoint_id: e.id, status: "pending" })}`, text: String(hl.backlog) }) : "0"),
              h("td", { class: "clip", title: hl.last_error || "", text: hl.last_error || "—" }));
          })))),
    );
  }

  async function first() {
    try {
      await load();
    } catch (error) {
      replace(listArea, failure(error, () => {
        replace(listArea, loading("Loading endpoints…"));
        first();
      }));
    }
  }
  await first();
  return { refresh: load };
}
