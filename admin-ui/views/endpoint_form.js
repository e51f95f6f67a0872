// The endpoint form, shared by "new endpoint" and "edit endpoint".

import { h } from "/admin/ui.js";

const list = (value) =>
  value
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);

/** A form for `endpoint` (or a new one); `onSubmit(body)` gets the API body. */
export function endpointForm(endpoint, submitLabel, onSubmit) {
  const e = endpoint || { url: "", description: "", event_types: [], streams: [], rate_limit: null, max_in_flight: 10, ordered: false };
  const prefix = endpoint ? "edit" : "new";
  const field = (name, label, control, help) =>
    h("div", { class: "field" },
      h("label", { for: `${prefix}-${name}`, text: label }),
      control,
      help ? h("p", { class: "muted help", id: `${prefix}-${name}-help`, text: help }) : null);
  const error = h("p", { class: "error", id: `${prefix}-endpoint-error`, role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "stack endpoint-form", id: `${prefix}-endpoint-form`, novalidate: true },
    field("url", "URL", h("input", { id: `${prefix}-url`, name: "url", type: "url", required: true, value: e.url, placeholder: "https://example.com/webhooks", "aria-describedby": `${prefix}-url-help` }), "HTTPS in production; Herald refuses private and loopback addresses unless allowed."),
    field("description", "Description", h("input", { id: `${prefix}-description`, name: "description", value: e.description })),
    field("event_types", "Event types", h("input", { id: `${prefix}-event_types`, name: "event_types", value: e.event_types.join(", "), placeholder: "order.created, order.paid", "aria-describedby": `${prefix}-event_types-help` }), "Comma-separated. Empty: every type."),
    field("streams", "Streams", h("input", { id: `${prefix}-streams`, name: "streams", value: e.streams.join(", "), placeholder: "orders, invoices:*", "aria-describedby": `${prefix}-streams-help` }), "Comma-separated names or prefixes ending in *. Empty: every stream except herald:*."),
    h("div", { class: "grid" },
      field("rate_limit", "Rate limit (per second)", h("input", { id: `${prefix}-rate_limit`, name: "rate_limit", type: "number", min: "1", value: e.rate_limit ?? "", placeholder: "none" })),
      field("max_in_flight", "Max in flight", h("input", { id: `${prefix}-max_in_flight`, name: "max_in_flight", type: "number", min: "1", value: e.max_in_flight }))),
    h("div", { class: "check" },
      h("input", { id: `${prefix}-ordered`, name: "ordered", type: "checkbox", checked: e.ordered }),
      h("label", { for: `${prefix}-ordered`, text: "Ordered: one at a time per stream, in seq order" })),
    error,
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary", text: submitLabel })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    for (const el of form.querySelectorAll("[aria-invalid]")) {
      el.removeAttribute("aria-invalid");
      el.removeAttribute("aria-errormessage");
    }
    const data = new FormData(form);
    const body = {
      url: data.get("url").trim(),
      description: data.get("description").trim(),
      event_types: list(data.get("event_types")),
      streams: list(data.get("streams")),
      rate_limit: data.get("rate_limit") ? Number(data.get("rate_limit")) : null,
      max_in_flight: data.get("max_in_flight") ? Number(data.get("max_in_flight")) : 10,
      ordered: data.get("ordered") === "on",
    };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await onSubmit(body);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      const bad = e.problem && e.problem.field && form.querySelector(`[name="${e.problem.field.split(/[.[]/)[0]}"]`);
      if (bad) {
        bad.setAttribute("aria-invalid", "true");
        bad.setAttribute("aria-errormessage", error.id);
        bad.focus();
      }
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
