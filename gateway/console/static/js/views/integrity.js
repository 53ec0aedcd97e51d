// Integrity: checkpoint history with cosignatures, publish a checkpoint, verify the whole log.
import { api, qs } from "../api.js";
import { h, clear, badge, timeEl, shortHash, pageHeader, errorBox, loading, table, dl, announce, add, fill } from "../ui.js";

function sigBadge(v) {
  if (v.ok === true) return badge("ok", "Verified", v.detail);
  if (v.ok === false) return badge("bad", "FAILS", v.detail);
  return badge("neutral", "Not checked", v.detail);
}

const REFUSAL = { truncated: "truncated", forked: "forked", resigned: "re-signed with another key", unreachable: "unreachable", refused: "refused" };

function cosignPanel(outcome) {
  const rows = [
    ...outcome.cosigned_by.map((a) => h("tr", null, h("td", null, a), h("td", null, badge("ok", "Cosigned")), h("td", null, ""))),
    ...Object.entries(outcome.refused).map(([a, r]) => h("tr", { dataset: { reason: r.reason } }, h("td", null, a),
      h("td", null, badge(r.reason === "unreachable" ? "warn" : "bad", REFUSAL[r.reason] || r.reason)), h("td", { class: "reason" }, r.message))),
  ];
  return h("div", null, h("p", null, `Checkpoint at tree size ${outcome.size}: `),
    table("Witnesses", ["Agency", "Answer", "Why"], rows, { captionHidden: true, empty: "No witnesses configured." }));
}

function verifyPanel(status) {
  const box = h("div", { id: "verify-result" });
  if (!status || status.state === "idle") {
    add(box, h("p", { class: "muted" }, "Not run since the gateway started."));
    return box;
  }
  if (status.state === "unavailable") {
    add(box, h("p", { class: "alert alert-warn" }, status.message));
    return box;
  }
  const total = status.total ?? 0;
  const scanned = status.scanned ?? 0;
  if (status.state === "running") {
    const phase = status.phase === "tree" ? "Rebuilding the tree and checking every checkpoint (audit.verify.verify_log)\u2026"
      : `Checking entries: ${scanned} of ${total || "?"}`;
    add(box, 
      h("label", { for: "verify-progress" }, phase),
      h("progress", { id: "verify-progress", max: total || 1, value: status.phase === "tree" ? total || 1 : scanned }, `${scanned}/${total}`));
    return box;
  }
  if (status.state === "passed") {
    const r = status.report;
    add(box, h("p", { class: "verdict-badge" }, badge("ok", "Whole log verified")),
      dl([["Entries", r.size], ["Root", h("code", { class: "hash" }, r.root)], ["Checkpoints checked", r.checkpoints],
        ["Unsigned tail", `${r.unsigned_tail} entries after the latest checkpoint`],
        ["Cosignatures verified", `${r.cosignatures_verified} (${r.cosignatures_unknown} from witnesses whose keys are not configured)`],
        ["Took", `${status.seconds} s`], ["Started by", [`${status.started_by} at `, timeEl(status.started_at)]]]));
  } else {
    const err = status.error || {};
    const details = Object.entries(err.details || {}).map(([k, v]) => `${k} = ${v}`).join(", ");
    add(box, h("div", { class: "alert alert-bad", role: "alert" }, h("p", { class: "verdict-badge" }, badge("bad", "Log does NOT verify")),
      h("p", null, err.message || "verification failed", details ? ` (${details})` : "")));
    if ((status.altered || []).length) {
      add(box, h("p", null, `Altered entries found by the scan (${status.altered.length}${status.altered.length >= 200 ? "+" : ""}): `),
        h("ul", { class: "inline-list", id: "altered-list" }, status.altered.map((i) => h("li", null, h("a", { href: `#/entry/${i}` }, `#${i}`)))));
    }
  }
  return box;
}

export async function integrityView(main, ctx) {
  const summary = h("div", { id: "integrity-summary" });
  const verifyBox = h("div", { "aria-live": "polite" });
  const history = h("section", { class: "card", "aria-labelledby": "cp-title" }, h("h2", { id: "cp-title" }, "Checkpoint history"), loading());
  let offset = Number(ctx.params.get("offset") || 0);
  const limit = 20;
  let polling = null;
  let started = false; // refresh the counts once a run started here has finished

  const showVerify = (status) => { fill(verifyBox, verifyPanel(status)); };
  const poll = async () => {
    try {
      const status = await api("/v1/audit/verify-log");
      if (!ctx.isCurrent()) return;
      showVerify(status);
      if (status.state === "running") polling = window.setTimeout(poll, 1000);
      else if (status.state === "passed" || status.state === "failed") {
        announce(status.state === "passed" ? "Whole log verified" : "The log does NOT verify");
        if (started) { started = false; loadHistory(); }
      }
    } catch (e) {
      fill(verifyBox, errorBox(e));
    }
  };
  const verifyBtn = h("button", { type: "button", class: "btn btn-primary", id: "verify-log", onclick: async () => {
    verifyBtn.disabled = true;
    try {
      showVerify(await api("/v1/audit/verify-log", { method: "POST" }));
      started = true;
      window.clearTimeout(polling);
      await poll();
    } catch (e) {
      fill(verifyBox, errorBox(e));
    } finally {
      verifyBtn.disabled = false;
    }
  } }, "Verify whole log");
  const publishBtn = h("button", { type: "button", class: "btn", id: "publish-checkpoint", onclick: async () => {
    publishBtn.disabled = true;
    try {
      const cp = await api("/v1/audit/checkpoints", { method: "POST" });
      announce(`Checkpoint published at tree size ${cp.size}`);
      await loadHistory();
    } catch (e) {
      add(history, errorBox(e));
    } finally {
      publishBtn.disabled = false;
    }
  } }, "Publish checkpoint now");
  const cosignBox = h("div", { id: "cosign-result", "aria-live": "polite" });
  const cosignBtn = h("button", { type: "button", class: "btn", id: "cosign-checkpoint", onclick: async () => {
    cosignBtn.disabled = true;
    try {
      fill(cosignBox, cosignPanel(await api("/v1/audit/checkpoints/cosign", { method: "POST" })));
      await loadHistory();
    } catch (e) {
      fill(cosignBox, errorBox(e));
    } finally {
      cosignBtn.disabled = false;
    }
  } }, "Publish and ask the witnesses");

  const loadHistory = async () => {
    try {
      const data = await api(`/v1/audit/checkpoints${qs({ offset, limit })}`);
      if (!ctx.isCurrent()) return;
      const latest = data.checkpoints[0];
      fill(summary, h("section", { class: "card stats" },
        h("div", { class: "stat" }, h("span", { class: "stat-value", id: "tree-size" }, data.tree_size), h("span", { class: "stat-label" }, "entries in the log")),
        h("div", { class: "stat" }, h("span", { class: "stat-value" }, latest ? latest.size : 0), h("span", { class: "stat-label" }, "covered by the latest signed checkpoint")),
        h("div", { class: "stat" }, h("span", { class: "stat-value" }, data.tree_size - (latest ? latest.size : 0)), h("span", { class: "stat-label" }, "unsigned tail (not yet protected)")),
        h("div", { class: "stat" }, h("span", { class: "stat-value" }, data.total), h("span", { class: "stat-label" }, "checkpoints published"))),
        data.log_key_configured ? null : h("p", { class: "alert alert-warn" }, "The log public key is not configured on this gateway: signatures cannot be checked here."),
        data.log_state && data.log_state.compromised ? h("div", { class: "alert alert-bad", role: "alert", id: "log-compromised" },
          h("p", { class: "verdict-badge" }, badge("bad", `Audit log ${REFUSAL[data.log_state.reason] || data.log_state.reason}`)),
          h("p", null, data.log_state.message, ". The gateway signs nothing more and refuses checks until the log is restored.")) : null);
      const rows = data.checkpoints.map((c) => h("tr", null,
        h("td", { class: "num" }, c.id),
        h("td", { class: "num" }, c.size),
        h("td", null, shortHash(c.root, 16)),
        h("td", { class: "nowrap" }, timeEl(c.published_at)),
        h("td", null, sigBadge(c.signature)),
        h("td", null, c.cosignatures.length ? h("ul", { class: "cosigs" }, c.cosignatures.map((s) => h("li", null,
          h("span", { class: "witness" }, s.witness), " ", sigBadge(s.verified), " ", h("span", { class: "muted" }, s.cosigned_at ? timeEl(s.cosigned_at) : "")))) : h("span", { class: "muted" }, "none"))));
      const pager = h("div", { class: "pager" }, h("p", null, `Checkpoints ${data.total ? offset + 1 : 0}\u2013${offset + data.checkpoints.length} of ${data.total}`),
        h("div", { class: "pager-controls" },
          h("button", { type: "button", class: "btn", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - limit); loadHistory(); } }, "\u2190 Newer"),
          h("button", { type: "button", class: "btn", disabled: offset + limit >= data.total, onclick: () => { offset += limit; loadHistory(); } }, "Older \u2192")));
      fill(history, h("h2", { id: "cp-title" }, "Checkpoint history"),
        h("p", { class: "muted" }, "Signed tree heads (C2SP signed notes) and the cosignatures of agency nodes acting as witnesses, newest first."),
        pager,
        table("Checkpoints", ["#", "Tree size", "Root", "Published", "Log signature", "Cosignatures (witnesses)"], rows,
          { captionHidden: true, empty: "No checkpoint published yet." }));
    } catch (e) {
      fill(history, errorBox(e));
    }
  };

  add(main, pageHeader("Integrity", "Is the log complete and unaltered? Checkpoints, witnesses and a full re-verification.", publishBtn),
    summary,
    h("section", { class: "card", "aria-labelledby": "cosign-title" },
      h("h2", { id: "cosign-title" }, "Witnesses"),
      h("p", { class: "muted" }, "Publish a checkpoint and ask every agency node to cosign it. A witness refuses a log that is smaller than, or does not extend, what it cosigned before; its answer is shown as it is."),
      h("div", { class: "form-actions" }, cosignBtn), cosignBox),
    h("section", { class: "card", "aria-labelledby": "verify-title" },
      h("h2", { id: "verify-title" }, "Verify the whole log"),
      h("p", { class: "muted" }, "Recomputes every leaf hash, rebuilds the Merkle tree, compares every stored node and checks every checkpoint signature and root (the same check as ", h("code", null, "xgate audit verify-log"), ")."),
      h("div", { class: "form-actions" }, verifyBtn), verifyBox),
    history);
  await Promise.all([loadHistory(), poll()]);
}
