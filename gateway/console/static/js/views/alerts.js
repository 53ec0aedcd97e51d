// Alerts: rule hits over the audit log (bursts, off-hours, repeated denials, wide probing),
// each with the entries behind it.
import { api, qs } from "../api.js";
import { h, clear, badge, decisionBadge, outcomeBadge, timeEl, pageHeader, errorBox, loading, table, select, field, add, fill } from "../ui.js";

const RULES = {
  repeated_denials: ["bad", "Repeated denials", "Many refused requests by one user in a short window"],
  burst: ["warn", "Burst of requests", "Unusually many requests by one user within a minute"],
  off_hours: ["warn", "Off-hours access", "Requests outside office hours or at weekends"],
  many_subjects: ["bad", "Wide probing", "Requests about unusually many distinct people"],
  log_integrity: ["bad", "Audit log damaged", "The gateway found its audit log truncated, forked or re-signed, stopped signing and refuses checks"],
};
const REASONS = { truncated: "Truncated", forked: "Forked", resigned: "Re-signed with another key" };
const WINDOWS = [["1", "Last 24 hours"], ["7", "Last 7 days"], ["30", "Last 30 days"]];

export async function alertsView(main, ctx) {
  const days = ctx.params.get("days") || "1";
  const windowSel = select("days", WINDOWS, days);
  windowSel.id = "alert-window";
  windowSel.addEventListener("change", () => ctx.go("alerts", { days: windowSel.value }));
  const body = h("div", { id: "alerts-body" }, loading());
  add(main, pageHeader("Alerts", "Open alerts raised by the audit rules, with the exchanges behind each one."),
    h("div", { class: "card toolbar" }, field("Time window", windowSel)), body);
  let data;
  try {
    const since = new Date(Date.now() - Number(days) * 86400000).toISOString();
    data = await api(`/v1/audit/alerts${qs({ since, mode: "tolerant" })}`);
  } catch (e) {
    fill(body, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  clear(body);
  if (data.altered.length) {
    add(body, h("div", { class: "alert alert-bad", role: "alert" }, h("strong", null, `${data.altered.length} altered entries `),
      "in this window were left out of the rules: ", data.altered.slice(0, 20).map((i) => [h("a", { href: `#/entry/${i}` }, `#${i}`), " "])));
  }
  add(body, h("p", { class: "muted", id: "alerts-count" },
    `${data.alerts.length} alert${data.alerts.length === 1 ? "" : "s"} from ${data.scanned} entries scanned${data.truncated ? " (scan limit reached)" : ""}.`));
  if (!data.alerts.length) add(body, h("p", { class: "card empty-state" }, badge("ok", "No open alerts"), " in this window."));
  data.alerts.forEach((a, i) => {
    const [kind, label, explain] = RULES[a.rule] || ["warn", a.rule, ""];
    const rows = a.entries.map((e) => h("tr", null,
      h("td", { class: "num" }, h("a", { href: `#/entry/${e.index}` }, `#${e.index}`)),
      h("td", { class: "nowrap" }, timeEl(e.time)), h("td", null, e.kind), h("td", null, e.program || "\u2014"),
      h("td", null, decisionBadge(e.decision)), h("td", { class: "reason" }, e.reason || "")));
    add(body, h("section", { class: `card alert-card alert-card-${kind}`, "aria-labelledby": `alert-${i}`, dataset: { rule: a.rule } },
      h("div", { class: "alert-head" },
        h("h2", { id: `alert-${i}` }, badge(kind, label), " ", h("span", { class: "alert-who" }, `${a.user} (${a.agency})`)),
        h("p", { class: "muted" }, explain)),
      a.reason ? h("p", { class: "alert-reason" }, badge("bad", REASONS[a.reason] || a.reason), " ", a.summary || "") : null,
      h("p", null, `${a.count} ${a.rule === "many_subjects" ? "distinct subjects" : "entries"} from `, timeEl(a.start), " to ", timeEl(a.end), "."),
      table(`Entries behind this alert`, ["Entry", "Time", "Kind", "Program", "Decision", "Reason"], rows, { captionHidden: false }),
      a.entries_truncated ? h("p", { class: "muted" }, `Showing the first ${a.entries.length} of ${a.entry_indices.length} entries.`) : null));
  });
}
