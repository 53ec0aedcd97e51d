// Small DOM helpers. Everything from the server goes through text nodes (never innerHTML),
// so a record field cannot inject markup into the console.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

// Append children (flattening arrays, skipping null/false): Element.append would print "null".
export function add(el, ...children) {
  append(el, children);
  return el;
}
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// Status badges carry an icon AND a word, so colour is never the only signal.
const BADGE = {
  ok: "\u2713", bad: "\u2717", warn: "!", info: "i", neutral: "\u2022", pending: "\u2026",
};
export function badge(kind, text, title) {
  return h("span", { class: `badge badge-${kind}`, title: title || null },
    h("span", { class: "badge-icon", "aria-hidden": "true" }, BADGE[kind] || ""), text);
}

export function decisionBadge(decision) {
  if (decision === "allow") return badge("ok", "Allowed");
  if (decision === "deny") return badge("bad", "Refused");
  return badge("neutral", "\u2014 none");
}

// A record's outcome: the policy decision when it has one, else the HTTP status of a request.
export function outcomeBadge(record) {
  const r = record || {};
  if (r.decision) return decisionBadge(r.decision);
  const status = r.metadata && Number(r.metadata.status);
  if (status) {
    if (status < 400) return badge("ok", `HTTP ${status}`);
    if (status === 401 || status === 403 || status === 429) return badge("bad", `Refused ${status}`);
    return badge("warn", `Error ${status}`);
  }
  return h("span", { class: "muted", title: "no decision or status in this record" }, "\u2014");
}

export function pad(n, w = 2) { return String(n).padStart(w, "0"); }

// Local time as YYYY-MM-DD HH:MM:SS; the ISO UTC value goes into the title attribute.
export function fmtTime(iso) {
  if (!iso) return "\u2014";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
export function timeEl(iso) {
  return h("time", { datetime: iso || null, title: iso ? `${iso} (UTC)` : null }, fmtTime(iso));
}

export function relTime(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

export function shortHash(hex, n = 12) {
  if (!hex) return "\u2014";
  return h("code", { class: "hash", title: hex }, hex.length > n ? `${hex.slice(0, n)}\u2026` : hex);
}

export function announce(text) {
  const el = document.getElementById("announcer");
  if (!el) return;
  el.textContent = "";
  window.setTimeout(() => { el.textContent = text; }, 30);
}

// A page heading that receives focus after navigation (screen readers announce the new page).
export function pageHeader(title, subtitle, ...actions) {
  return h("div", { class: "page-header" },
    h("div", null, h("h1", { tabindex: "-1", id: "page-title" }, title),
      subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    actions.length ? h("div", { class: "page-actions" }, actions) : null);
}

export function errorBox(err) {
  const msg = err && err.message ? err.message : String(err);
  return h("div", { class: "alert alert-bad", role: "alert" },
    h("strong", null, "Could not load: "), msg);
}

export function loading(text = "Loading\u2026") {
  return h("p", { class: "loading", role: "status" }, text);
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null);
}

export function select(name, options, value) {
  const el = h("select", { name });
  for (const opt of options) {
    const [val, text] = Array.isArray(opt) ? opt : [opt, opt];
    const o = h("option", { value: val }, text);
    if (String(val) === String(value ?? "")) o.selected = true;
    el.appendChild(o);
  }
  return el;
}

export function table(caption, headers, rows, opts = {}) {
  return h("div", { class: "table-wrap" },
    h("table", { class: `data ${opts.class || ""}` },
      h("caption", { class: opts.captionHidden ? "visually-hidden" : null }, caption),
      h("thead", null, h("tr", null, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", null, rows.length ? rows : h("tr", null,
        h("td", { colspan: headers.length, class: "empty" }, opts.empty || "Nothing to show.")))));
}

export function dl(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", null, k), h("dd", null, v ?? "\u2014")]));
}
