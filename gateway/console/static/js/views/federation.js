// Federation: every node's health, data elements offered, certificate expiry, last contact.
import { api } from "../api.js";
import { h, clear, badge, timeEl, relTime, pageHeader, errorBox, loading, table, add, fill } from "../ui.js";

function healthBadge(hl) {
  if (!hl) return badge("neutral", "unknown");
  if (hl.status === "serving") return badge("ok", "Serving");
  if (hl.status === "unreachable") return badge("bad", "Unreachable", hl.error);
  return badge("warn", hl.status);
}

function certBadge(c) {
  if (!c) return badge("neutral", "not in directory");
  const days = c.days_left === null ? "" : ` (${Math.floor(c.days_left)} days)`;
  switch (c.status) {
    case "valid": return badge("ok", `Valid${days}`);
    case "expiring": return badge("warn", `Expires soon${days}`);
    case "expired": return badge("bad", "EXPIRED");
    case "revoked": return badge("bad", "REVOKED");
    default: return badge("neutral", c.status);
  }
}

const CLASS_KIND = { core: "bad", important: "warn", general: "neutral" };

export async function federationView(main, ctx) {
  const body = h("div", { id: "federation-body" }, loading("Asking every node for Health and Describe\u2026"));
  const refresh = h("button", { type: "button", class: "btn", id: "refresh-nodes", onclick: () => ctx.go("federation", { t: Date.now() }) }, "Refresh");
  add(main, pageHeader("Federation", "Agency nodes as the gateway sees them now (gRPC Health and Describe over mTLS), with certificates from the CA-signed federation directory.", refresh), body);
  let data;
  try {
    data = await api("/v1/nodes");
  } catch (e) {
    fill(body, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  const serving = data.nodes.filter((n) => n.health && n.health.status === "serving").length;
  const rows = data.nodes.map((n) => {
    const c = n.certificate;
    return h("tr", { dataset: { agency: n.agency } },
      h("th", { scope: "row" }, n.agency, c && c.address ? h("div", { class: "muted" }, c.address) : null),
      h("td", null, healthBadge(n.health), n.health && n.health.version ? h("div", { class: "muted" }, `version ${n.health.version}`) : null),
      h("td", { class: "num" }, n.health && n.health.subjects !== undefined ? n.health.subjects.toLocaleString() : "\u2014"),
      h("td", null, certBadge(c), c && c.not_after ? h("div", { class: "muted" }, "until ", timeEl(c.not_after)) : null),
      h("td", null, n.last_contact ? [relTime(n.last_contact), h("div", { class: "muted" }, timeEl(n.last_contact))] : h("span", { class: "muted" }, "never")),
      h("td", null, n.elements.length ? h("ul", { class: "elements" }, n.elements.map((e) => h("li", null,
        h("code", null, e.id), " ", badge(CLASS_KIND[e.classification] || "neutral", e.classification || "?")))) : h("span", { class: "muted" }, n.describe_error || "none"),
      n.computations.length ? h("div", { class: "muted small" }, n.computations.join(", ")) : null));
  });
  fill(body, 
    h("section", { class: "card stats" },
      h("div", { class: "stat" }, h("span", { class: "stat-value" }, `${serving} / ${data.nodes.length}`), h("span", { class: "stat-label" }, "nodes serving")),
      data.gateway_certificate ? h("div", { class: "stat" }, h("span", { class: "stat-value" }, certBadge(data.gateway_certificate)), h("span", { class: "stat-label" }, "gateway certificate")) : null,
      h("div", { class: "stat" }, h("span", { class: "stat-value small-value" }, timeEl(data.checked_at)), h("span", { class: "stat-label" }, "checked at"))),
    data.certificates_note ? h("p", { class: "alert alert-warn" }, data.certificates_note) : null,
    table("Agency nodes", ["Agency", "Health", "Subjects", "Certificate", "Last contact", "Data elements offered"], rows,
      { empty: "No nodes are configured on this gateway.", captionHidden: true }),
    h("p", { class: "muted small" }, "Last contact: the last successful Health or Describe answer seen by this gateway process."));
}
