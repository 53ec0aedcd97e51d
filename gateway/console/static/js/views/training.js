// Training: federated jobs, their rounds and curves, and the privacy budget spent per dataset.
import { api } from "../api.js";
import { h, clear, badge, timeEl, pageHeader, errorBox, loading, table, add, fill } from "../ui.js";

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) add(el, c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function stateBadge(state) {
  const map = { completed: "ok", running: "pending", admission: "pending", refused: "bad", failed: "bad" };
  return badge(map[state] || "neutral", state || "unknown");
}

// A small line chart: loss (left axis) and AUC (right axis) per round, with a data table beside it.
function curveChart(curve, title) {
  const W = 560, H = 260, L = 56, R = 56, T = 20, B = 40;
  const rounds = curve.map((p) => p.round);
  const minR = Math.min(...rounds), maxR = Math.max(...rounds);
  const x = (r) => L + (maxR === minR ? 0.5 : (r - minR) / (maxR - minR)) * (W - L - R);
  const losses = curve.filter((p) => typeof p.loss === "number");
  const aucs = curve.filter((p) => typeof p.auc === "number");
  const lmax = Math.max(...losses.map((p) => p.loss), 0.001) * 1.1;
  const yl = (v) => T + (1 - v / lmax) * (H - T - B);
  const ya = (v) => T + (1 - (v - 0.5) / 0.5) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "curve-title", class: "chart" },
    s("title", { id: "curve-title" }, title));
  for (let i = 0; i <= 4; i++) {
    const y = T + (i / 4) * (H - T - B);
    add(svg, s("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }),
      s("text", { x: L - 8, y: y + 4, "text-anchor": "end", class: "axis" }, (lmax * (1 - i / 4)).toFixed(2)));
    if (aucs.length) add(svg, s("text", { x: W - R + 8, y: y + 4, class: "axis" }, (1 - i / 8).toFixed(2)));
  }
  for (const r of rounds) add(svg, s("text", { x: x(r), y: H - B + 18, "text-anchor": "middle", class: "axis" }, r));
  add(svg, s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" }, "round"));
  const line = (pts, y, cls, marker) => {
    if (!pts.length) return;
    add(svg, s("polyline", { points: pts.map((p) => `${x(p.round)},${y(p)}`).join(" "), class: cls }));
    for (const p of pts) add(svg, marker(x(p.round), y(p)));
  };
  line(losses, (p) => yl(p.loss), "line-loss", (cx, cy) => s("circle", { cx, cy, r: 4, class: "dot-loss" }));
  line(aucs, (p) => ya(p.auc), "line-auc", (cx, cy) => s("rect", { x: cx - 4, y: cy - 4, width: 8, height: 8, class: "dot-auc" }));
  const legend = h("p", { class: "legend" }, h("span", { class: "key key-loss" }, "\u25cf loss (left axis)"), " ",
    aucs.length ? h("span", { class: "key key-auc" }, "\u25a0 held-out AUC (right axis, 0.5\u20131.0)") : null);
  return h("figure", { class: "chart-figure" }, svg, legend);
}

async function jobDetail(slot, jobId, ctx) {
  fill(slot, loading());
  let job;
  try {
    job = await api(`/v1/training/jobs/${encodeURIComponent(jobId)}`);
  } catch (e) {
    fill(slot, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  const decisions = Object.entries(job.decisions || {}).map(([agency, d]) => h("tr", null, h("th", { scope: "row" }, agency),
    h("td", null, d.approved ? badge("ok", "approved") : badge("bad", "refused")), h("td", null, d.reason || ""), h("td", { class: "num" }, d.epsilon ?? "\u2014")));
  const curveRows = job.curve.map((p) => h("tr", null, h("td", { class: "num" }, p.round), h("td", { class: "num" }, p.loss !== undefined ? Number(p.loss).toFixed(4) : "\u2014"),
    h("td", { class: "num" }, p.auc !== undefined ? Number(p.auc).toFixed(4) : "\u2014")));
  const events = job.events.slice(-40).reverse().map((e) => h("tr", null, h("td", { class: "nowrap" }, timeEl(e.ts)), h("td", null, e.event),
    h("td", { class: "small" }, Object.entries(e).filter(([k]) => !["ts", "job_id", "event"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  "))));
  fill(slot, h("section", { class: "card", "aria-labelledby": "job-title", id: "job-detail" },
    h("h2", { id: "job-title" }, `Job ${job.job_id} `, stateBadge(job.state)),
    job.reason ? h("p", { class: "alert alert-bad" }, job.reason) : null,
    h("div", { class: "grid-2" },
      job.curve.length ? curveChart(job.curve, `Training curve of ${job.job_id}`) : h("p", { class: "muted" }, "No rounds evaluated yet."),
      table("Training curve (data)", ["Round", "Loss", "AUC"], curveRows, { empty: "No rounds yet." })),
    table("Admission by each data-owning node", ["Agency", "Decision", "Reason", "\u03b5 charged"], decisions, { empty: "No decisions recorded." }),
    table("Latest events (audit)", ["Time", "Event", "Fields"], events, { empty: "No events." })));
}

export async function trainingView(main, ctx) {
  const body = h("div", null, loading());
  const detail = h("div", { id: "job-slot" });
  add(main, pageHeader("Training", "Federated training jobs, their rounds, and the differential-privacy budget spent per dataset."), body, detail);
  let data;
  try {
    data = await api("/v1/training/jobs");
  } catch (e) {
    fill(body, errorBox(e));
    return;
  }
  if (!ctx.isCurrent()) return;
  const budgetRows = data.budgets.map((b) => {
    const pct = b.cap ? Math.min(100, (100 * b.spent) / b.cap) : 100;
    const kind = pct >= 100 ? "bad" : pct >= 75 ? "warn" : "ok";
    return h("tr", null, h("th", { scope: "row" }, h("code", null, b.dataset), h("div", { class: "muted" }, b.description || "")),
      h("td", null, b.agency || "\u2014"),
      h("td", null, h("div", { class: "budget" },
        h("meter", { min: 0, max: b.cap || 1, value: b.spent, low: (b.cap || 1) * 0.75, high: (b.cap || 1) * 0.99, optimum: 0, "aria-label": `epsilon spent on ${b.dataset}` }),
        h("span", null, `\u03b5 ${b.spent} of ${b.cap ?? "?"} spent`), " ", badge(kind, `${b.remaining ?? "?"} left`))),
      h("td", null, b.jobs.length ? b.jobs.map((j) => `${j.job_id} (\u03b5 ${j.epsilon})`).join(", ") : h("span", { class: "muted" }, "none")));
  });
  const jobRows = data.jobs.map((j) => h("tr", null,
    h("td", null, h("a", { href: `#/training/${encodeURIComponent(j.job_id)}` }, j.job_id)),
    h("td", null, stateBadge(j.state)),
    h("td", null, j.spec.mode || "\u2014", j.spec.purpose ? h("div", { class: "muted" }, j.spec.purpose) : null),
    h("td", { class: "num" }, `${j.rounds_done}${j.spec.rounds ? ` / ${j.spec.rounds}` : ""}`),
    h("td", { class: "num" }, j.epsilon ?? "\u2014"),
    h("td", { class: "num" }, j.evaluation && j.evaluation.auc !== undefined ? Number(j.evaluation.auc).toFixed(4) : "\u2014"),
    h("td", null, j.updated_at ? timeEl(new Date(j.updated_at * 1000).toISOString()) : "\u2014")));
  fill(body, 
    h("section", { class: "card", "aria-labelledby": "budget-title" }, h("h2", { id: "budget-title" }, "Privacy budget per dataset"),
      table("Privacy budget", ["Dataset", "Owner", "\u03b5 spent (never resets)", "Jobs charged"], budgetRows, { captionHidden: true, empty: "No datasets registered." })),
    h("section", { class: "card", "aria-labelledby": "jobs-title" }, h("h2", { id: "jobs-title" }, "Jobs"),
      data.jobs_dir_configured ? null : h("p", { class: "muted" }, "No job directory on this gateway yet."),
      table("Training jobs", ["Job", "State", "Mode / purpose", "Rounds", "\u03b5", "AUC", "Updated"], jobRows, { captionHidden: true, empty: "No training jobs." })));
  const selected = ctx.args[0] || (data.jobs[0] && data.jobs[0].job_id);
  if (selected) await jobDetail(detail, selected, ctx);
}
