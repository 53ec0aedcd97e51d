// Subject lookup: who accessed a pseudonym, when and why (the officer's view of Estonia's Data Tracker).
import { api, qs } from "../api.js";
import { h, clear, decisionBadge, outcomeBadge, timeEl, pageHeader, errorBox, loading, table, field, add, fill } from "../ui.js";
import { integrityBadge } from "./exchanges.js";

const PSEUDONYM = /^[a-z2-7]{26}$/;

export async function subjectView(main, ctx) {
  const value = (ctx.params.get("pseudonym") || "").trim();
  const input = h("input", { type: "text", name: "pseudonym", id: "pseudonym", value, required: true, pattern: "[a-z2-7]{26}",
    spellcheck: "false", autocomplete: "off", size: 30 });
  const result = h("div", { id: "subject-result" });
  const form = h("form", { class: "card toolbar", role: "search", "aria-label": "Look up a subject", onsubmit: (ev) => {
    ev.preventDefault(); ctx.go("subject", { pseudonym: input.value.trim() });
  } },
  field("Pseudonym", input, "26 characters a\u2013z, 2\u20137. The gateway never sees national ids: the subject's agency derives the pseudonym."),
  h("button", { type: "submit", class: "btn btn-primary", id: "lookup" }, "Look up"));
  add(main, pageHeader("Subject lookup", "Who accessed this person's data, when, and why."), form, result);
  if (!value) return;
  if (!PSEUDONYM.test(value)) {
    add(result, h("p", { class: "alert alert-bad", role: "alert" }, "That is not a pseudonym (26 characters a\u2013z and 2\u20137)."));
    return;
  }
  add(result, loading());
  let data;
  try {
    data = await api(`/v1/audit/entries${qs({ subject: value, limit: 200, order: "desc", mode: "tolerant" })}`);
  } catch (e) {
    fill(result, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  const agencies = new Set(data.entries.map((e) => (e.record && e.record.actor ? e.record.actor.agency : "?")));
  const rows = data.entries.map((e) => {
    const r = e.record || {};
    const a = r.actor || {};
    return h("tr", null,
      h("td", { class: "num" }, h("a", { href: `#/entry/${e.index}` }, `#${e.index}`)),
      h("td", { class: "nowrap" }, timeEl(r.time)),
      h("td", null, a.agency || "?", h("div", { class: "muted" }, `${a.user || "?"} \u00b7 ${a.role || "?"}`)),
      h("td", null, r.kind),
      h("td", null, r.purpose || "\u2014", r.program ? h("div", { class: "muted" }, r.program) : null),
      h("td", null, r.legal_basis || "\u2014", r.case_id ? h("div", { class: "muted" }, `case ${r.case_id}`) : null),
      h("td", null, outcomeBadge(r)),
      h("td", null, integrityBadge(e)));
  });
  fill(result, 
    h("p", { id: "subject-summary" }, `${data.total}${data.total_capped ? "+" : ""} log entries mention this pseudonym, from ${agencies.size} agenc${agencies.size === 1 ? "y" : "ies"}.`),
    table("Accesses to this subject, newest first", ["Entry", "When", "Who (agency)", "What", "Why (purpose)", "Legal basis / case", "Decision", "Integrity"], rows,
      { empty: "Nobody accessed this pseudonym (in this log).", captionHidden: true }),
    data.total > data.entries.length ? h("p", { class: "muted" }, `Showing the newest ${data.entries.length}.`) : null);
}
