// Policies: the agreements in force, "who can use data element X", "explain this decision".
import { api, qs } from "../api.js";
import { h, clear, badge, pageHeader, errorBox, loading, table, select, field, announce, add, fill } from "../ui.js";

function effectBadge(effect) {
  return effect === "permit" ? badge("ok", "permit") : badge("bad", "forbid");
}
function budgetText(b) {
  return b ? `${b.max_checks} per subject / ${b.window_days} days` : "\u2014";
}

function principalLines(p) {
  const entries = Object.entries(p || {});
  if (!entries.length) return h("span", { class: "muted" }, "any principal");
  return h("ul", { class: "lines" }, entries.map(([k, v]) => h("li", null, h("span", { class: "muted" }, `${k}: `), v)));
}

function conditionsCell(conds) {
  if (!conds.length) return h("span", { class: "muted" }, "\u2014");
  return h("details", null, h("summary", null, `${conds.length} condition${conds.length === 1 ? "" : "s"}`),
    h("ul", { class: "conds" }, conds.map((c) => h("li", null, h("code", null, c)))));
}

function agreementsSection(data) {
  const permits = data.policies.filter((p) => p.effect === "permit");
  const forbids = data.policies.filter((p) => p.effect === "forbid");
  const permitRow = (p) => h("tr", null,
    h("td", null, h("strong", null, p.agreement || p.description || p.id),
      p.provider ? h("div", null, `${p.provider} \u2192 ${p.consumer || "?"}`) : null,
      h("div", { class: "policy-id" }, h("code", null, p.id), ` \u00b7 ${p.source}`)),
    h("td", null, p.actions.join(", "), h("div", null, h("code", null, p.resource))),
    h("td", null, principalLines(p.principal)),
    h("td", null, p.purposes.length ? p.purposes.join(", ") : h("span", { class: "muted" }, "any")),
    h("td", null, budgetText(p.budget)),
    h("td", null, conditionsCell(p.conditions)));
  const forbidRow = (p) => h("tr", null,
    h("td", null, h("strong", null, p.description || p.id), h("div", { class: "policy-id" }, h("code", null, p.id), ` \u00b7 ${p.source}`)),
    h("td", null, p.actions.join(", "), h("div", null, h("code", null, p.resource))),
    h("td", null, conditionsCell(p.conditions)));
  return h("section", { class: "card", "aria-labelledby": "agr-title", id: "agreements" },
    h("h2", { id: "agr-title" }, "Agreements in force"),
    h("p", { class: "muted" }, `${permits.length} permits (one per data-sharing agreement) and ${forbids.length} baseline restrictions. Policy version `,
      h("code", { class: "hash", id: "policy-hash", title: data.policy_set_hash }, data.policy_set_hash.slice(0, 16) + "\u2026"), "."),
    data.reload_error ? h("p", { class: "alert alert-warn", role: "alert" }, `The last policy change was rejected and the previous version stays in force: ${data.reload_error}`) : null,
    table("Permits (deny by default: nothing else is allowed)", ["Agreement", "Grants", "To", "Purposes", "Probing budget", "Conditions"], permits.map(permitRow), { class: "policies" }),
    table("Restrictions (a matching forbid overrides every permit)", ["Restriction", "Applies to", "Conditions"], forbids.map(forbidRow), { class: "policies" }));
}

function whoCanSection(data, ctx) {
  const elementSel = select("data_element", data.elements.map((e) => [e.id, `${e.id} (${e.classification})`]), ctx.params.get("element") || "");
  elementSel.id = "whocan-element";
  const actionSel = select("action", ["check", "train"], "check");
  actionSel.id = "whocan-action";
  const out = h("div", { id: "whocan-result", "aria-live": "polite" });
  const form = h("form", { class: "inline-form", onsubmit: async (ev) => {
    ev.preventDefault();
    fill(out, loading());
    try {
      const r = await api(`/v1/policies/who-can${qs({ data_element: elementSel.value, action: actionSel.value })}`);
      clear(out);
      if (!r.grants.length) add(out, h("p", { class: "alert alert-warn" }, `Nobody: no agreement grants ${r.action} on ${r.data_element}.`));
      add(out, table(`Who can ${r.action} ${r.data_element}`, ["Agreement", "Principal", "Purposes", "Other conditions", "Budget", "Registered users who qualify"],
        r.grants.map((g) => h("tr", null,
          h("td", null, h("code", null, g.policy_id), g.agreement ? h("div", { class: "muted" }, `${g.agreement} (${g.provider} \u2192 ${g.consumer})`) : null),
          h("td", null, principalLines(g.principal)), h("td", null, g.purposes.join(", ") || "any registered purpose"),
          h("td", null, g.conditions.length ? h("ul", { class: "conds" }, g.conditions.map((c) => h("li", null, h("code", null, c)))) : "\u2014"),
          h("td", null, budgetText(g.budget)),
          h("td", null, g.registered_users.length ? g.registered_users.join(", ") : h("span", { class: "muted" }, "nobody registered"))))));
      if (r.restrictions.length) {
        add(out, h("p", { class: "muted" }, "Still subject to: "), h("ul", null, r.restrictions.map((f) => h("li", null, h("code", null, f.policy_id), ` \u2014 ${f.description}`))));
      }
      announce(`${r.grants.length} agreements can release ${r.data_element}`);
    } catch (e) {
      fill(out, errorBox(e));
    }
  } }, field("Data element", elementSel), field("Action", actionSel), h("button", { type: "submit", class: "btn btn-primary", id: "whocan-submit" }, "Who can?"));
  return h("section", { class: "card", "aria-labelledby": "whocan-title", id: "who-can" },
    h("h2", { id: "whocan-title" }, "Who can use a data element?"), form, out);
}

export async function programResources(program) {
  if (!program) return [];
  try {
    const programs = await api("/v1/programs");
    const p = programs.find((x) => x.id === program);
    if (!p) return [`Program::${program}`];
    const elements = [...new Set(p.criteria.flatMap((c) => c.elements))];
    return [`Program::${program}`, ...elements.map((e) => `DataElement::${e}`)];
  } catch (_) {
    return [`Program::${program}`];
  }
}

function explainSection(data, ctx) {
  const p = ctx.params;
  const principalSel = select("principal", data.principals.map((u) => [u.id, `${u.id} (${u.agency}, ${u.role}, ${u.tier})`]), p.get("principal") || "");
  principalSel.id = "ex-principal";
  const actionSel = select("action", ["check", "train", "read_audit", "administer"], p.get("action") || "check");
  actionSel.id = "ex-action";
  const resources = h("textarea", { id: "ex-resources", name: "resources", rows: 4 }, "");
  const purposeSel = select("purpose", [["", "(none)"], ...data.purposes.map((x) => [x.id, x.id])], p.get("purpose") || "");
  purposeSel.id = "ex-purpose";
  const txt = (id, name, value) => h("input", { type: "text", id, name, value: value || "" });
  const legal = txt("ex-legal", "legal_basis", p.get("legal_basis"));
  const caseId = txt("ex-case", "case_id", p.get("case_id"));
  const approval = txt("ex-approval", "approval_ref", p.get("approval_ref"));
  const consent = txt("ex-consent", "consent_ref", p.get("consent_ref"));
  const at = txt("ex-at", "at", p.get("at"));
  const out = h("div", { id: "explain-result", "aria-live": "polite" });

  const run = async () => {
    fill(out, loading());
    const body = {
      principal: principalSel.value, action: actionSel.value,
      resources: resources.value.split(/\s*\n\s*/).map((x) => x.trim()).filter(Boolean),
      context: { purpose: purposeSel.value, legal_basis: legal.value.trim(), case_id: caseId.value.trim(),
        approval_ref: approval.value.trim(), consent_ref: consent.value.trim(), at: at.value.trim() || undefined,
        consent_valid: !!consent.value.trim(), program: p.get("program") || "" },
    };
    try {
      const r = await api("/v1/policies/explain", { method: "POST", body });
      fill(out, renderExplanation(r));
      announce(r.allowed ? "Decision: allow" : "Decision: deny");
    } catch (e) {
      fill(out, errorBox(e));
    }
  };
  const form = h("form", { class: "explain-form", onsubmit: (ev) => { ev.preventDefault(); run(); } },
    h("div", { class: "filter-grid" },
      field("Principal", principalSel), field("Action", actionSel),
      field("Resources (one per line)", resources, "e.g. Program::dibao and DataElement::tax.monthly_income"),
      field("Purpose", purposeSel), field("Legal basis", legal), field("Case id", caseId),
      field("Approval reference", approval), field("Consent reference", consent),
      field("Time (ISO 8601 with offset)", at, "Empty: now. Agreements can depend on the hour.")),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "btn btn-primary", id: "explain-submit" }, "Explain")));
  const section = h("section", { class: "card", "aria-labelledby": "explain-title", id: "explain" },
    h("h2", { id: "explain-title" }, "Explain a decision"),
    h("p", { class: "muted" }, "Cedar decides; every policy that mentions the action and resource is listed with each condition's result."),
    form, out);
  // Pre-filled from an audit entry ("Explain this decision"): resources from the program, then run.
  if (p.get("principal")) {
    programResources(p.get("program")).then((list) => {
      resources.value = (list.length ? list : []).join("\n");
      if (list.length) run();
      section.scrollIntoView({ block: "start" });
    });
  }
  return section;
}

function renderExplanation(r) {
  const parts = [
    h("p", { class: "verdict-badge", id: "explain-verdict" }, r.allowed ? badge("ok", "ALLOW") : badge("bad", "DENY"),
      r.principal ? h("span", { class: "muted" }, ` ${r.principal.id}: ${r.principal.agency}, ${r.principal.role}, ${r.principal.tier}`) : h("span", { class: "muted" }, " principal not registered")),
    h("ul", { class: "reasons", id: "explain-reasons" }, r.reasons.map((x) => h("li", null, x))),
    r.budget ? h("p", null, `Probing budget: ${r.budget.max_checks} per subject per ${r.budget.window_days} days (${r.budget.policy_id}).`) : null,
  ];
  for (const item of r.items) {
    parts.push(h("section", { class: "explain-item" },
      h("h3", null, item.allowed ? badge("ok", "allow") : badge("bad", "deny"), " ", h("code", null, item.resource)),
      item.policies.length ? h("ul", { class: "policy-list" }, item.policies.map((pol) => h("li", null,
        h("p", null, effectBadge(pol.effect), " ", h("code", null, pol.id), " ", pol.matched ? badge("info", "matched") : h("span", { class: "muted" }, "not matched"),
          h("span", { class: "muted small" }, ` ${pol.source}`)),
        h("ul", { class: "conds" }, pol.conditions.map((c) => h("li", null,
          c.ok === true ? badge("ok", "ok") : c.ok === false ? badge("bad", "FAIL") : badge("neutral", "?"), " ",
          h("code", null, c.text), c.actual ? h("span", { class: "actual" }, ` actual: ${c.actual}`) : null)))))) : h("p", { class: "muted" }, "No policy mentions this action on this resource (deny by default)."),
      h("details", null, h("summary", null, "Engine explanation (text)"), h("pre", null, item.text))));
  }
  parts.push(h("p", { class: "muted small" }, `Policy version ${r.policy_set_hash}`));
  return parts;
}

export async function policiesView(main, ctx) {
  const body = h("div", null, loading());
  add(main, pageHeader("Policies", "Access policies in force (Cedar), who may use each data element, and why a decision came out as it did."),
    h("nav", { class: "toc", "aria-label": "On this page" }, h("a", { href: "#/policies", onclick: (e) => { e.preventDefault(); document.getElementById("agreements").scrollIntoView(); } }, "Agreements"),
      h("a", { href: "#/policies", onclick: (e) => { e.preventDefault(); document.getElementById("who-can").scrollIntoView(); } }, "Who can"),
      h("a", { href: "#/policies", onclick: (e) => { e.preventDefault(); document.getElementById("explain").scrollIntoView(); } }, "Explain")),
    body);
  let data;
  try {
    data = await api("/v1/policies/agreements");
  } catch (e) {
    fill(body, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  fill(body, agreementsSection(data), whoCanSection(data, ctx), explainSection(data, ctx));
}
