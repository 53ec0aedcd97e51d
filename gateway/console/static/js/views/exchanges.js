// Exchanges: the audit log as a searchable, filterable, paged table, and one entry's evidence.
import { api, qs } from "../api.js";
import { h, clear, badge, decisionBadge, outcomeBadge, timeEl, shortHash, pageHeader, errorBox, loading, field, select, table, dl, announce, add, fill } from "../ui.js";
import { verifyEntry } from "../merkle.js";
import { programResources } from "./policies.js";

const FILTERS = ["q", "user", "agency", "program", "purpose", "decision", "kind", "request_id", "since", "until"];
const KINDS = ["", "request", "policy_decision", "fanout_call", "node_response", "result", "config_change",
  "admin_action", "audit_read", "consent_change", "checkpoint", "alert"];

export function integrityBadge(entry) {
  return entry.intact ? badge("ok", "Intact", "leaf hash and record check out")
    : badge("bad", "ALTERED", entry.problem || "entry does not match its leaf hash");
}

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}
function fromLocalInput(v) { return v ? new Date(v).toISOString() : ""; }

// What an entry is about: the program and purpose, or for a plain request its method and route.
export function whatOf(r) {
  const m = r.metadata || {};
  if (r.program) return [r.program, r.purpose ? h("div", { class: "muted" }, r.purpose) : null];
  if (m.route) return h("code", { class: "route" }, `${m.method || ""} ${m.route}`.trim());
  return h("span", { class: "muted" }, "\u2014");
}

export async function exchangesView(main, ctx) {
  const params = ctx.params;
  const state = Object.fromEntries(FILTERS.map((f) => [f, params.get(f) || ""]));
  let offset = Number(params.get("offset") || 0);
  let limit = Number(params.get("limit") || 50);

  const inputs = {
    q: h("input", { type: "search", name: "q", value: state.q, maxlength: 128, id: "f-q" }),
    user: h("input", { type: "text", name: "user", value: state.user, id: "f-user" }),
    agency: h("input", { type: "text", name: "agency", value: state.agency, id: "f-agency" }),
    program: h("input", { type: "text", name: "program", value: state.program, id: "f-program" }),
    purpose: h("input", { type: "text", name: "purpose", value: state.purpose, id: "f-purpose" }),
    decision: select("decision", [["", "Any"], ["allow", "Allowed"], ["deny", "Refused"]], state.decision),
    kind: select("kind", KINDS.map((k) => [k, k || "Any"]), state.kind),
    request_id: h("input", { type: "text", name: "request_id", value: state.request_id, id: "f-request" }),
    since: h("input", { type: "datetime-local", name: "since", value: toLocalInput(state.since), id: "f-since" }),
    until: h("input", { type: "datetime-local", name: "until", value: toLocalInput(state.until), id: "f-until" }),
  };
  inputs.decision.id = "f-decision";
  inputs.kind.id = "f-kind";
  const results = h("section", { "aria-labelledby": "results-title", id: "results" });

  const readForm = () => {
    for (const f of FILTERS) {
      state[f] = f === "since" || f === "until" ? fromLocalInput(inputs[f].value) : inputs[f].value.trim();
    }
  };
  const syncUrl = () => {
    const q = new URLSearchParams(Object.entries({ ...state, offset: offset || "", limit: limit === 50 ? "" : limit })
      .filter(([, v]) => v !== "" && v !== 0)).toString();
    window.history.replaceState(null, "", `#/exchanges${q ? `?${q}` : ""}`);
  };

  const load = async () => {
    fill(results, loading());
    try {
      const data = await api(`/v1/audit/entries${qs({ ...state, offset, limit, order: "desc", mode: "tolerant" })}`);
      if (!ctx.isCurrent()) return;
      fill(results, renderResults(data));
      announce(`${data.total}${data.total_capped ? "+" : ""} matching entries`);
    } catch (e) {
      fill(results, errorBox(e));
    }
  };

  const pager = (data) => {
    const from = data.total ? data.offset + 1 : 0;
    const to = data.offset + data.entries.length;
    const sizeSel = select("limit", [25, 50, 100, 200], limit);
    sizeSel.id = "page-size";
    sizeSel.addEventListener("change", () => { limit = Number(sizeSel.value); offset = 0; syncUrl(); load(); });
    return h("div", { class: "pager" },
      h("p", { id: "page-status" }, `Showing ${from}\u2013${to} of ${data.total}${data.total_capped ? "+" : ""} entries`),
      h("div", { class: "pager-controls" },
        h("label", { for: "page-size" }, "Rows per page"), sizeSel,
        h("button", { type: "button", class: "btn", id: "prev-page", disabled: data.offset === 0, onclick: () => {
          offset = Math.max(0, offset - limit); syncUrl(); load();
        } }, "\u2190 Newer"),
        h("button", { type: "button", class: "btn", id: "next-page", disabled: to >= data.total, onclick: () => {
          offset += limit; syncUrl(); load();
        } }, "Older \u2192")));
  };

  const renderResults = (data) => {
    const rows = data.entries.map((e) => {
      const r = e.record || {};
      const actor = r.actor || {};
      return h("tr", { class: e.intact ? null : "row-altered", dataset: { index: e.index } },
        h("td", { class: "num" }, h("a", { href: `#/entry/${e.index}`, "aria-label": `Open entry ${e.index}` }, `#${e.index}`)),
        h("td", { class: "nowrap" }, timeEl(r.time)),
        h("td", null, r.kind || "\u2014"),
        h("td", null, actor.user || "\u2014", h("div", { class: "muted" }, [actor.agency, actor.role].filter(Boolean).join(" \u00b7 "))),
        h("td", null, whatOf(r)),
        h("td", null, outcomeBadge(r)),
        h("td", { class: "reason" }, e.reason || ""),
        h("td", null, integrityBadge(e)));
    });
    const meta = h("p", { class: "muted small" }, `Tree size ${data.tree_size}; latest signed checkpoint covers ${data.checkpoint_size} entries.`);
    return [
      h("h2", { id: "results-title", class: "visually-hidden" }, "Matching entries"),
      pager(data),
      table("Audit log entries, newest first", ["Entry", "Time", "Kind", "Actor", "Program / route", "Outcome", "Reason", "Integrity"], rows,
        { captionHidden: true, empty: "No entries match these filters.", class: "entries" }),
      meta,
    ];
  };

  const form = h("form", { class: "filters card", role: "search", "aria-label": "Filter the audit log", onsubmit: (ev) => {
    ev.preventDefault(); readForm(); offset = 0; syncUrl(); load();
  } },
  h("div", { class: "filter-grid" },
    field("Search", inputs.q, "Text anywhere in the record (ids, digests, reasons)"),
    field("User", inputs.user), field("Agency", inputs.agency),
    field("Program", inputs.program), field("Purpose", inputs.purpose),
    field("Decision", inputs.decision), field("Kind", inputs.kind),
    field("Request id", inputs.request_id),
    field("From (local time)", inputs.since), field("Until (local time)", inputs.until)),
  h("div", { class: "form-actions" },
    h("button", { type: "submit", class: "btn btn-primary", id: "apply-filters" }, "Apply filters"),
    h("button", { type: "button", class: "btn", id: "reset-filters", onclick: () => {
      for (const f of FILTERS) { inputs[f].value = ""; state[f] = ""; }
      offset = 0; syncUrl(); load();
    } }, "Reset")));

  add(main, pageHeader("Exchanges", "Every request, decision, node call and result in the audit log. Every read here is itself logged."), form, results);
  await load();
}

function verdictPanel(title, id, verdict) {
  const labels = {
    verified: ["ok", "Verified"], not_verified: ["bad", "NOT verified"], pending: ["pending", "Pending: not yet in a signed checkpoint"],
    incomplete: ["warn", "Incomplete"], unavailable: ["warn", "Cannot verify here"],
  };
  const [kind, text] = labels[verdict.status] || ["warn", verdict.status];
  return h("section", { class: `card verdict verdict-${kind}`, id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title),
    h("p", { class: "verdict-badge" }, badge(kind, text)),
    h("ul", { class: "checks" }, verdict.steps.map((s) => h("li", null,
      s.ok === true ? badge("ok", "ok") : s.ok === false ? badge("bad", "FAIL") : badge("neutral", "n/a"),
      h("span", { class: "check-name" }, s.name), h("span", { class: "check-detail" }, s.detail)))));
}

export async function entryView(main, ctx) {
  const index = Number(ctx.args[0]);
  add(main, pageHeader(`Entry #${index}`, null,
    h("a", { href: "#/exchanges", class: "btn" }, "\u2190 All exchanges")));
  const body = h("div", { id: "entry-body" }, loading());
  add(main, body);
  let entry;
  let logKey = null;
  try {
    [entry, logKey] = await Promise.all([api(`/v1/audit/entries/${index}?mode=tolerant`), api("/v1/audit/log-key").catch(() => null)]);
  } catch (e) {
    fill(body, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  const r = entry.record || {};
  const actor = r.actor || {};
  const browserSlot = h("div", { id: "browser-verdict-slot" }, h("section", { class: "card verdict", id: "browser-verdict" },
    h("h2", null, "Verified in this browser"), loading("Verifying with WebCrypto\u2026")));
  const server = entry.server_verdict;
  const serverPanel = verdictPanel("Server's verdict", "server-verdict", { status: server.status, steps: server.checks });

  const digests = Object.entries(r.digests || {}).map(([k, v]) =>
    h("tr", null, h("th", { scope: "row" }, k), h("td", null, (Array.isArray(v) ? v : [v]).map((d) => h("div", null, h("code", { class: "hash" }, d))))));
  const metadata = Object.entries(r.metadata || {}).map(([k, v]) =>
    h("tr", null, h("th", { scope: "row" }, k), h("td", null, Array.isArray(v) ? v.join(", ") : String(v))));
  const subjects = (r.subjects || []).slice(0, 50).map((s) => h("li", null, h("a", { href: `#/subject?pseudonym=${s}` }, h("code", null, s))));

  const actions = [];
  if (r.request_id) actions.push(h("a", { class: "btn", href: `#/exchanges?request_id=${encodeURIComponent(r.request_id)}` }, "All entries of this request"));
  if (r.decision && actor.user) {
    const p = new URLSearchParams({ principal: actor.user, action: "check", purpose: r.purpose || "", legal_basis: r.legal_basis || "",
      case_id: r.case_id || "", at: r.time || "", program: r.program || "" });
    actions.push(h("a", { class: "btn", id: "explain-link", href: `#/policies?${p.toString()}` }, "Explain this decision"));
  }

  fill(body, 
    entry.intact ? null : h("div", { class: "alert alert-bad", role: "alert", id: "tamper-alert" },
      h("strong", null, "This entry has been altered. "), entry.problem || ""),
    h("div", { class: "grid-2" }, browserSlot, serverPanel),
    h("section", { class: "card", "aria-labelledby": "rec-title" },
      h("h2", { id: "rec-title" }, "Record"),
      dl([
        ["Time", timeEl(r.time)], ["Kind", r.kind], ["Actor", `${actor.user || "?"} (${actor.role || "?"}, ${actor.agency || "?"})`],
        ["Decision", h("span", { id: "entry-decision" }, outcomeBadge(r))],
        entry.reason ? ["Reason", h("span", { id: "entry-reason", class: "reason" }, entry.reason)] : null,
        ["Request id", r.request_id ? h("code", null, r.request_id) : null], ["Program", r.program], ["Purpose", r.purpose],
        ["Legal basis", r.legal_basis], ["Case id", r.case_id],
        ["Policy ids", (r.policy_ids || []).length ? (r.policy_ids || []).join(", ") : null],
        ["Policy version (policy-set SHA-256)", r.policy_set_hash ? h("code", { class: "hash" }, r.policy_set_hash) : null],
        ["Leaf hash (stored)", h("code", { class: "hash" }, entry.leaf_hash)],
      ]),
      actions.length ? h("div", { class: "form-actions" }, actions) : null),
    h("div", { class: "grid-2" },
      h("section", { class: "card", "aria-labelledby": "dig-title" }, h("h2", { id: "dig-title" }, "Digests (results, node answers)"),
        digests.length ? h("table", { class: "data kv-table" }, h("tbody", null, digests)) : h("p", { class: "muted" }, "No digests.")),
      h("section", { class: "card", "aria-labelledby": "meta-title" }, h("h2", { id: "meta-title" }, "Metadata"),
        metadata.length ? h("table", { class: "data kv-table" }, h("tbody", null, metadata)) : h("p", { class: "muted" }, "No metadata."))),
    subjects.length ? h("section", { class: "card", "aria-labelledby": "subj-title" },
      h("h2", { id: "subj-title" }, `Subjects (${(r.subjects || []).length} pseudonym${(r.subjects || []).length === 1 ? "" : "s"})`), h("ul", { class: "pseudonyms" }, subjects)) : null,
    h("section", { class: "card", "aria-labelledby": "proof-title" },
      h("h2", { id: "proof-title" }, "Inclusion proof"),
      entry.checkpoint ? [
        dl([["Checkpoint", `${entry.checkpoint.origin}, tree size ${entry.checkpoint.size}`],
          ["Root", h("code", { class: "hash" }, entry.checkpoint.root)],
          ["Signed by", entry.checkpoint.signers.join(", ")],
          ["Proof", `${entry.inclusion_proof.length} hashes`]]),
        h("ol", { class: "proof" }, entry.inclusion_proof.map((p) => h("li", null, h("code", { class: "hash" }, p)))),
        h("details", null, h("summary", null, "Signed checkpoint note"), h("pre", null, entry.checkpoint.note)),
      ] : h("p", null, "No signed checkpoint covers this entry yet. Publish one on the Integrity page."),
      h("details", null, h("summary", null, "Stored record bytes (canonical JSON)"), h("pre", { class: "wrap" }, safeDecode(entry.data_b64)))),
  );
  if (r.kind === "policy_decision" && r.decision === "deny" && actor.user) {
    const why = h("section", { class: "card", id: "why-refused", "aria-labelledby": "why-title" },
      h("h2", { id: "why-title" }, "Why it was refused"), loading("Asking the policy engine\u2026"));
    body.insertBefore(why, body.children[entry.intact ? 1 : 2]);
    explainDenial(why, r, actor);
  }
  // Verify in the browser after the page is shown (WebCrypto is asynchronous).
  const verdict = await verifyEntry(entry, logKey);
  if (!ctx.isCurrent()) return;
  fill(browserSlot, verdictPanel("Verified in this browser", "browser-verdict", verdict));
  announce(verdict.status === "verified" ? `Entry ${index} verified` : `Entry ${index} NOT verified`);
}

// Re-run the recorded request through the policy engine at the recorded time.
async function explainDenial(box, r, actor) {
  const m = r.metadata || {};
  try {
    const resources = await programResources(r.program);
    const res = await api("/v1/policies/explain", { method: "POST", body: {
      principal: actor.user, action: "check", resources: resources.length ? resources : [`Program::${r.program}`],
      context: { purpose: r.purpose || "", legal_basis: r.legal_basis || "", case_id: r.case_id || "", at: r.time, program: r.program || "",
        approval_ref: m.approval_ref || "", consent_ref: m.consent_ref || "", consent_valid: !!m.consent_ref },
    } });
    const same = res.policy_set_hash === r.policy_set_hash;
    fill(box, h("h2", { id: "why-title" }, "Why it was refused"),
      h("p", null, res.allowed ? badge("warn", "The policy in force now would ALLOW this request") : badge("bad", "Denied by policy"),
        " ", h("span", { class: "muted" }, same ? "Explained under the same policy version as recorded." : "Explained under the policy version in force now, which differs from the recorded one.")),
      h("ul", { class: "reasons", id: "why-reasons" }, res.reasons.map((x) => h("li", null, x))),
      m.approval_ref === undefined ? h("p", { class: "muted small" }, "This record does not carry the request's approval reference or consent, so restrictions that depend on them (core data, consent-based purposes) may appear here although the original request satisfied them.") : null,
      h("a", { class: "btn", href: document.getElementById("explain-link") ? document.getElementById("explain-link").getAttribute("href") : "#/policies" }, "Full explanation, condition by condition"));
  } catch (e) {
    fill(box, h("h2", { id: "why-title" }, "Why it was refused"), errorBox(e));
  }
}

function safeDecode(b64) {
  try { return new TextDecoder("utf-8", { fatal: false }).decode(Uint8Array.from(window.atob(b64), (c) => c.charCodeAt(0))); } catch (_) { return "(undecodable)"; }
}

export { shortHash };
