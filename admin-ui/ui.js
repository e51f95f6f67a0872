// Small DOM helpers shared by the console's views. No framework: every view builds its
// elements with `h` and re-renders only the parts that change.

/** Creates an element. `attrs`: `class`, `text`, `on<event>` handlers, booleans, others
 * as attributes. Children: nodes, strings, arrays, or null/false (skipped). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const localFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** A time in the browser's zone, with the UTC value on hover. */
export function time(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  const date = new Date(iso);
  return h("time", {
    datetime: date.toISOString(),
    title: `UTC: ${date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z")}`,
    text: localFormat.format(date),
  });
}

/** "3 s", "4 min", "2 h 5 min", "1 d 3 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 24) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** A status as a coloured badge (the text says it too, colour is only a help). */
export function badge(status) {
  return h("span", { class: `badge badge-${status}`, text: status });
}

/** Loading, empty and error states. */
export function loading(what = "Loading…") {
  return h("p", { class: "state state-loading", role: "status", text: what });
}
export function empty(message) {
  return h("p", { class: "state state-empty", text: message });
}
export function failure(error, retry) {
  return h(
    "div",
    { class: "state state-error", role: "alert" },
    h("p", { text: `Could not load this: ${error.message}` }),
    retry ? h("button", { type: "button", onclick: retry, text: "Try again" }) : null,
  );
}

/** A read-only field with a Copy button (for secrets shown once). */
export function copyable(label, value) {
  const id = `copy-${Math.random().toString(36).slice(2)}`;
  const status = h("span", { class: "muted", role: "status" });
  const input = h("input", { id, value, readonly: true, class: "mono", spellcheck: "false" });
  return h(
    "div",
    { class: "copyable" },
    h("label", { for: id, text: label }),
    h(
      "div",
      { class: "row" },
      input,
      h("button", {
        type: "button",
        text: "Copy",
        onclick: async () => {
          try {
            await navigator.clipboard.writeText(value);
            status.textContent = "Copied.";
          } catch {
            input.select();
            status.textContent = "Selected: press Ctrl+C to copy.";
          }
        },
      }),
      status,
    ),
  );
}

/** Pretty-printed JSON (or the text as it is, if it is not JSON). */
export function prettyJson(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

/** A table of name/value pairs from an object (headers). */
export function headerTable(caption, headers) {
  const entries = Object.entries(headers || {});
  if (entries.length === 0) return h("p", { class: "muted", text: `${caption}: none` });
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "kv" },
      h("caption", { text: caption }),
      h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { class: "mono", text: String(v) })))),
    ),
  );
}

/** `<input type="datetime-local">` value (local time) from an ISO time, and back. */
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** Asks for confirmation in a modal `<dialog>`; resolves true if confirmed. */
export function confirmDialog(title, body, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "confirm-title", text: title }),
        h("p", { text: body }),
        h(
          "div",
          { class: "row" },
          h("button", { value: "cancel", type: "submit", text: "Cancel" }),
          h("button", { value: "confirm", type: "submit", class: "primary", text: confirmLabel }),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A short, readable endpoint name: its URL without the scheme. */
export function shortUrl(url) {
  return (url || "").replace(/^https?:\/\//, "");
}

/** Wraps a loader: `fetch()` gets data, `apply(data)` draws it. Only the newest call's
 * answer is drawn (live refreshes can overlap), and not at all if it equals what is on
 * screen, so focus and open sections are left alone when nothing changed. */
export function newestWins(fetch, apply) {
  let seq = 0;
  let shown = null;
  return async () => {
    const n = ++seq;
    const data = await fetch();
    if (n !== seq) return;
    const signature = JSON.stringify(data);
    if (signature === shown) return;
    shown = signature;
    apply(data);
  };
}
