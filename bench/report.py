"""Render docs/BENCHMARKS.md from bench/results/*.json (figures are never typed by hand).

Run after `make bench` (which calls this last): python -m bench.report
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def eligibility(d: dict[str, Any]) -> str:
    rows = []
    for b in d["batches"]:
        he, pt = b["he"], b["plaintext"]
        rows.append(
            [
                f"{b['applicants']:,}",
                f"{he['median_ms']:.0f}",
                f"{he['applicant_checks_per_s']:,.0f}",
                f"{pt['median_ms']:.0f}",
                f"{pt['applicant_checks_per_s']:,.0f}",
                f"{b['he_over_plaintext_latency']}×",
                f"{(he['client_gateway_bytes_per_applicant'] + he['gateway_node_bytes_per_applicant']) / 1000:,.1f} kB",
                f"{(pt['client_gateway_bytes_per_applicant'] + pt['gateway_node_bytes_per_applicant']):,} B",
            ]
        )
    met = d.get("target_met", {})
    signed = [b for b in d["batches"] if "requester_statement" in b]
    statements = (
        "Requester-signed checks (docs/PROTOCOL.md), included in the HE figures above: "
        + "; ".join(
            f"{b['applicants']:,} applicant(s): sign {b['requester_statement']['sign_ms']:g} ms, verify "
            f"{b['requester_statement']['verify_ms']:g} ms (gateway, then each node), "
            f"{b['requester_statement']['share_of_he_check']:.1%} of the check"
            for b in signed
        )
        + f"; the statement is {signed[0]['requester_statement']['statement_bytes']} bytes, sent by the client and"
        " forwarded to each node (in the bytes per applicant above)."
        if signed
        else ""
    )
    return "\n\n".join(
        [
            f"Program {d['program']}; {d['transport']}; {d['he_params']}. {d.get('policy', '')}. "
            f"Medians over repeated runs after a warm-up; the requester's BFV key pair is generated once "
            f"(keygen median {d['requester_keygen_ms_median']} ms) and reused, as the SDK does.",
            _table(
                [
                    "applicants",
                    "HE ms",
                    "HE checks/s",
                    "plaintext ms",
                    "plaintext checks/s",
                    "HE/plaintext",
                    "HE bytes/applicant",
                    "plaintext bytes/applicant",
                ],
                rows,
            ),
            f"Targets: single applicant < {d['targets']['single_applicant_ms']:.0f} ms → "
            f"{'met' if met.get('single_applicant_ms') else 'NOT met'}; ≥ "
            f"{d['targets']['applicant_checks_per_s_at_10000']:,.0f} applicant-checks/s at 10,000 → "
            f"{'met' if met.get('applicant_checks_per_s_at_10000') else 'NOT met'}.",
            *([statements] if statements else []),
        ]
    )


def masking(d: dict[str, Any]) -> str:
    mi = d["mutual_information_bits"]
    return (
        f"Information a masked value gives the requester about floor(log2 |T−S|), per observation, for a "
        f"criterion whose span reaches the masking bound (2^24; one that cannot be clamped, none shipped: the "
        f"shipped criteria's clamped figures are in the privacy table below) "
        f"({d['samples']:,} samples; prior {d['prior_entropy_bits']} bits): **{mi['xgate_ramped_log_r']} bits** "
        f"with xgate's masks, {mi['uniform_r']} bits with a uniform r of the same range, "
        f"{mi['previous_log_uniform_r_from_1']} bits with the earlier log-uniform r from 1. {d['note']}."
    )


def _by_failing_sum(by_sum: dict[str, Any] | None, bound: float) -> list[list[Any]]:
    """The magnitude-aware guess for one person failing at each income sum (bench/privacy.py)."""
    if not by_sum:
        return []
    sums = ", ".join(f"{int(k):,}" for k in by_sum)
    rates = " / ".join(str(m["magnitude_aware_success_rate"]) for m in by_sum.values())
    return [[f"bronze magnitude-aware guess, one person failing at income sum {sums}", rates, "", f"<= {bound}"]]


def _by_failing_terms(by_terms: dict[str, Any] | None, bound: float) -> list[list[Any]]:
    """The same guess for one person whose failing sum is carried by several terms, each clamped
    at the mirror ceiling (the sum's failing distance then reaches past a passing one's)."""
    if not by_terms:
        return []
    cases = ", ".join(" + ".join(f"{int(x):,}" for x in k.split("+")) for k in by_terms)
    rates = " / ".join(str(m["magnitude_aware_success_rate"]) for m in by_terms.values())
    margin = next(iter(by_terms.values())).get("margin_3_sigma", "")
    label = f"bronze magnitude-aware guess, one person failing through several income terms ({cases})"
    return [[label, rates, "", f"<= {bound} (+ {margin})"]]


def _bronze_rows(d: dict[str, Any]) -> list[list[Any]]:
    """The cohort view: randomized response per slot (eps per criterion), shuffles per criterion."""
    b = d.get("bronze")
    if not b or "two_cohort_differencing" not in b:
        return []
    eps, per_query, bound = (
        d["bronze_epsilon_per_criterion"],
        d["bronze_epsilon_per_query"],
        d["bronze_single_person_bound"],
    )
    diff, mag, link = b["two_cohort_differencing"], b["magnitude_aware"], b["slot_linkage_across_criteria"]
    rows: list[list[Any]] = [
        [
            f"bronze two-cohort differencing success, eps {eps:g} per criterion ({per_query:g} per query; "
            f"{diff['trials']:,} runs)",
            diff["success_rate"],
            b["two_cohort_differencing_without_randomized_response"]["success_rate"],
            f"<= {bound} (+ {diff['margin_3_sigma']}, 3 sigma)",
        ],
        [
            "bronze fake-member attack success",
            b["fake_member"]["success_rate"],
            b["fake_member_without_member_check"]["success_rate"],
            "0",
        ],
        [
            f"bronze magnitude-aware guess, victim's slot given ({mag['samples']:,} samples; income terms "
            "clamped at the mirror ceiling 2T + 1; previous design: whole sums)",
            mag["magnitude_aware_success_rate"],
            b.get("magnitude_aware_with_whole_sums", {}).get("magnitude_aware_success_rate", ""),
            f"<= {bound} (+ {mag['margin_3_sigma']}); sign only: {mag['sign_only_success_rate']}",
        ],
        *_by_failing_sum(b.get("magnitude_aware_by_failing_sum"), bound),
        *_by_failing_terms(b.get("magnitude_aware_by_failing_terms"), bound),
        [
            "bronze slot linkage across criteria (same person in slot j)",
            link["same_person_rate"],
            "1.0",
            f"chance {link['chance_rate']}",
        ],
    ]
    cost = d.get("bronze_check_cost")
    if cost:
        sizes = [k for k in cost if k.startswith("subjects_")]
        rows.append(
            [
                "bronze check ms, per-criterion fan-out / one fan-out ("
                + ", ".join(k.removeprefix("subjects_") for k in sizes)
                + " subjects; in process)",
                " · ".join(f"{cost[k]['per_criterion_fan_out_ms']} / {cost[k]['one_fan_out_ms']}" for k in sizes),
                "",
                "",
            ]
        )
    return rows


def privacy(d: dict[str, Any]) -> str:
    exact, bits = d["exact"]["clamped_span"], d["extra_bits"]
    shipped = bits["shipped_criteria_clamped"]
    population = d["silver_population"]
    goal_bits = d["goals"]["extra_bits_per_query"]
    chance = f"chance {population['chance_rate']}"
    accuracy = population["balanced_accuracy"]
    over_epochs = population.get("over_epochs", {})
    rows = [
        [
            "exact reveals per million (at/near the threshold)",
            d["exact_reveals_per_million"],
            exact["previous_design"]["exact_reveals_per_million"],
            d["goals"]["exact_reveals_per_million"],
        ],
        [
            "near-exact (within 10 units) per million",
            d["near_exact_reveals_per_million"],
            exact["previous_design"]["near_exact_reveals_per_million"],
            "",
        ],
        [
            "extra bits per query, gold (worst shipped criterion, terms clamped)",
            d["extra_bits_per_query"]["gold"],
            max(c["gold_before_clamping"] for c in shipped.values()),
            goal_bits,
        ],
        *[
            [
                f"… {name} (span {c['catalogue_span']:,} → {c['clamped_span']:,})",
                c["gold"],
                c["gold_before_clamping"],
                "",
            ]
            for name, c in shipped.items()
        ],
        [
            "extra bits per query, gold, a criterion that cannot be clamped, span at the masking bound",
            d["extra_bits_per_query"]["gold_unclamped_criterion_at_the_masking_bound"],
            "",
            goal_bits,
        ],
        [
            "extra bits per query, silver (低保: clamped income sum, register masks shaped like it)",
            d["extra_bits_per_query"]["silver"],
            d["extra_bits_per_query"]["silver_unclamped_criterion_at_the_masking_bound"],
            goal_bits,
        ],
        [
            f"silver: failing criterion identified, synthetic federation ({population['people']:,} people; "
            "the larger of failing position / every position: "
            f"{accuracy['failing_position']} / {accuracy['every_position']})",
            d["silver_failed_criterion_identified_rate"],
            max(
                population["before_whole_sums_and_plain_masks"]["failing_position"],
                population["before_whole_sums_and_plain_masks"]["every_position"],
            ),
            chance,
        ],
        [
            "… one result per epoch for each person, read together, over 3 / 12 epochs (fresh masks, the same data)",
            " / ".join(str(max(e["failing_position"], e["every_position"])) for e in over_epochs.values()),
            "",
            chance,
        ],
        [
            "… the same clamps with plain masks for the single terms (positive control)",
            max(
                population["sign_only_criteria_masked_plainly"]["failing_position"],
                population["sign_only_criteria_masked_plainly"]["every_position"],
            ),
            "",
            chance,
        ],
    ]
    rows += _bronze_rows(d)
    if "failed_check_budget_spent" in d:
        rows.append(
            [
                "failed check budget spent",
                d["failed_check_budget_spent"],
                "",
                d["goals"].get("failed_check_budget_spent", ""),
            ]
        )
    flood = d.get("noise_flooding_cost")
    if flood:
        one, many = flood["applicants_1"], flood["applicants_4096"]
        rows.append(
            [
                "noise flooding, gateway CPU ms per 低保 check (1 / 4,096 applicants; built during the fan-out)",
                f"{one['flooding_ms']} / {many['flooding_ms']}",
                "0",
                "",
            ]
        )
    return "\n\n".join(
        [
            f"Real mask code, {exact['samples']:,} simulated subjects; bits as `bench/masking_leakage.py` measures "
            'them (log2|d| uniform over each criterion\'s span; "previous design" for gold: the same criterion '
            "before its terms were clamped; for silver bits: a sum that cannot be clamped; for silver "
            "identification: whole sums and plain masks in the overall view). Silver identification: "
            "gradient-boosted trees on the masked values of people failing exactly one 低保 criterion, "
            "balanced accuracy.",
            _table(["measure", "now", "previous design", "goal"], rows),
        ]
    )


def transport(d: dict[str, Any]) -> str:
    rows = [
        [
            c["case"],
            c["applicants"],
            c["secure"]["median_ms"],
            c["insecure"]["median_ms"],
            f"{c['ratio_secure_over_insecure']}×",
            c["overhead_ms"],
        ]
        for c in d["cases"]
    ]
    return "\n\n".join(
        [
            f"Secure: {d['secure']}. Insecure: {d['insecure']}. {d['method']}.",
            _table(["case", "applicants", "secure ms", "insecure ms", "ratio", "overhead ms"], rows),
        ]
    )


def security(d: dict[str, Any]) -> str:
    env = d["envelope"]
    rtt = d["grpc_loopback"]["median_rtt_ms"]
    rows = [[k, v["sign_ms"], v["verify_ms"]] for k, v in env.items()]
    rtt_rows = [[mode, vals.get("small_1kb"), vals.get("large_4mb")] for mode, vals in rtt.items()]
    return "\n\n".join(
        [
            _table(["envelope body", "sign ms", "verify ms"], rows),
            _table(["gRPC loopback round trip", "1 kB ms", "4 MB ms"], rtt_rows),
        ]
    )


def policy(d: dict[str, Any]) -> str:
    rows = []
    for s in d["sets"]:
        r = s["decisions_per_s"]
        rows.append(
            [
                s["agreements"],
                s["policies_total"],
                f"{r['engine_single_allow']:,}",
                f"{r['engine_batched_6']:,}",
                f"{r['cedarpy_policy_text_per_call']:,}",
                f"{r['baseline_python_dict']:,}",
            ]
        )
    return "\n\n".join(
        [
            f"Target: {d['target']}.",
            _table(
                [
                    "agreements",
                    "policies",
                    "engine decisions/s",
                    "batched (6/check)",
                    "policy text per call",
                    "baseline: dict lookup",
                ],
                rows,
            ),
        ]
    )


def audit(d: dict[str, Any]) -> str:
    a = d["appends"]
    rows = [
        [
            k.replace("_", " "),
            f"{v.get('auditlog_entries_per_s', '')}",
            f"{v.get('auditlog_process_writer_entries_per_s', '—')}",
            v.get("plain_row_per_txn_entries_per_s", "—"),
            v.get("plain_batched_500_entries_per_s", "—"),
        ]
        for k, v in a.items()
    ]
    p = d["proofs"]
    return "\n\n".join(
        [
            f"Durability: {d['durability']}.",
            _table(
                [
                    "writers",
                    "AuditLog, writer thread (entries/s)",
                    "AuditLog, writer process (gateway default)",
                    "plain SQLite, 1 row/txn",
                    "plain SQLite, 500 rows/txn",
                ],
                rows,
            ),
            f"At {p['entries']:,} entries: inclusion proof "
            f"{p['inclusion_proof_generate']['median_ms']} ms to generate, "
            f"{p['inclusion_proof_verify']['median_ms']} ms to verify; consistency proof "
            f"{p['consistency_proof_generate']['median_ms']} ms / {p['consistency_proof_verify']['median_ms']} ms.",
        ]
    )


_PSI_LABELS = {
    "psi-star": "PSI alignment in a star around the label holder",
    "psi-star-shares": "PSI alignment in a star around the label holder, with masked membership shares",
}


def federated(d: dict[str, Any]) -> str:
    rows = [
        [
            "pooled (centralised)",
            f"{d['pooled']['auc']:.4f}",
            f"{d['pooled']['balanced_accuracy']:.4f}",
            f"{d['pooled'].get('wall_s', 0):.1f}",
            d["pooled"].get("bytes", 0),
        ]
    ]
    for name, r in d.get("single_agency", {}).items():
        rows.append(
            [
                f"single agency: {name}",
                f"{r['auc']:.4f}",
                f"{r['balanced_accuracy']:.4f}",
                f"{r.get('wall_s', 0):.1f}",
                r.get("bytes", 0),
            ]
        )
    for key, r in d.items():
        if isinstance(r, dict) and "auc" in r and key not in ("pooled",):
            rows.append(
                [
                    key.replace("_", " "),
                    f"{r['auc']:.4f}",
                    f"{r['balanced_accuracy']:.4f}",
                    f"{r.get('wall_s', 0):.1f}",
                    f"{r.get('bytes', 0):,}",
                ]
            )
    for key, runs in d.items():
        if isinstance(runs, dict) and all(isinstance(v, dict) and "auc" in v for v in runs.values()) and runs:
            if key in ("single_agency",):
                continue
            for sub, r in runs.items():
                rows.append(
                    [
                        f"{key.replace('_', ' ')}: {sub}",
                        f"{r['auc']:.4f}",
                        f"{r['balanced_accuracy']:.4f}",
                        f"{r.get('wall_s', 0):.1f}",
                        f"{r.get('bytes', 0):,}",
                    ]
                )
    head = f"Dataset: {d.get('dataset', '')}; model: {d.get('model', '')}; {d.get('rows', '')} training rows."
    v = d.get("vertical", {})
    if "measured" in v:
        psi = f" ({_PSI_LABELS[v['alignment']]}, float16 wire)" if v.get("alignment") in _PSI_LABELS else ""
        link = ""
        if v.get("flower") == "long-lived link":
            link = f" run on a long-lived link (its start-up, {v['link_startup_s']:.1f} s, paid once, not in the row),"
        head += f" Vertical row{psi}{link} {v['measured']}."
    parts = [head, _table(["run", "AUC", "balanced accuracy", "wall s", "bytes exchanged"], rows)]
    if "record_dp" in d:
        parts.append(record_dp(d))
    return "\n\n".join(parts)


_EPS = ("1", "4", "8")


def _node_sigmas(nodes: dict[str, Any], steps: str) -> str:
    out = []
    for name in sorted(nodes):
        n = nodes[name]
        q = f"q={n['dp_sample_rate']:.4f}, " if n["dp_sample_rate"] < 1 else ""
        out.append(f"{name} σ={n['dp_sigma']:.3f} ({q}{n['dp_steps']} {steps}, ε={n['dp_epsilon']:.4f})")
    return ", ".join(out)


# What the section's last run ran (older runs recorded no `scope`: "vertical" when their vertical
# row says it was re-measured).
_RECORD_DP_SCOPE = {"all": "", "vertical": " (vertical runs only)", "horizontal": " (horizontal runs only)"}


def _record_dp_intro(r: dict[str, Any]) -> list[str]:
    job, limit = r["job"], r.get("limit")
    scope = (
        f"Reduced run: a seeded {r['rows']:,}-row subsample of Census-Income ({r['test_rows']:,} official test rows)"
        if limit
        else f"Full data: {r['rows']:,} rows of Census-Income ({r['test_rows']:,} official test rows)"
    )
    h_walls = [r[k]["wall_s"] for k in r if k.startswith("horizontal_secagg_dpsgd_eps")]
    timing = f"; horizontal jobs {min(h_walls):.0f}–{max(h_walls):.0f} s each" if h_walls else ""
    lines = [
        f"{scope}{timing}; the last run took {r['total_wall_s'] / 60:.0f} min in all on this shared 2-core machine"
        f"{_RECORD_DP_SCOPE[r.get('scope', 'vertical' if 'measured' in r['vertical'] else 'all')]}.",
        f"Horizontal: {job['min_nodes']} regional nodes, SecAgg+, record-level DP-SGD at every node "
        f"({job['rounds']} rounds × {job['local_epochs']} local epochs, batch {job['batch_size']}, "
        f"learning rate {job['learning_rate']}, clip {job['clip']}, δ = {job['delta']:g}); "
        "AUC of the saved global model on the official test rows.",
    ]
    v = r["vertical"]
    nodes = f"{v['nodes']} agency nodes" if "nodes" in v else "one node per agency"
    vline = f"Vertical: {nodes}, {v['rounds']} rounds, AUC on the aligned official test rows"
    if v.get("alignment") not in ("psi", *_PSI_LABELS):
        vline += (
            "; measured with the code before PSI alignment and float32 embeddings/gradients were merged "
            "(this run's bytes are float64 and plain pseudonym lists)"
        )
    else:
        psi = _PSI_LABELS.get(v["alignment"], "PSI alignment")
        vline += f"; {psi}, embeddings and gradients as {v.get('wire', 'float32')} on the wire"
        if "measured" in v:
            vline += f" ({v['measured']})"
    if "vertical_ab" in r and "baseline" in r["vertical_ab"]:
        ab = r["vertical_ab"]
        base, per_job, link = ab["baseline"], ab["this_commit_per_job"], ab["this_commit_link"]
        vline += (
            f"; side by side, the plain vertical job alone (`bench/ab_vertical.py`), back to back: before this round "
            f"({ab['baseline_commit']}: Flower started for the job, {base['steps']} steps) {base['wall_s']:.1f} s, "
            f"{base['bytes'] / 1e6:.1f} MB, AUC {base['auc']:.4f}; now with Flower started for the job "
            f"{per_job['wall_s']:.1f} s, {per_job['bytes'] / 1e6:.1f} MB, AUC {per_job['auc']:.4f}; now on the "
            f"long-lived link (up in {link['link_startup_s']:.1f} s, once) {link['wall_s']:.1f} s, "
            f"{link['bytes'] / 1e6:.1f} MB, AUC {link['auc']:.4f}: wall ×{ab['wall_ratio_link']:.2f} "
            f"(×{ab['wall_ratio_per_job']:.2f} without the link), bytes ×{ab['bytes_ratio']:.2f}"
        )
    if "vertical_issue_scale" in r:
        small = r["vertical_issue_scale"]
        vline += (
            f"; at the size of the dataset the issue was tried on ({small['rows']:,} rows, `bench/ab_vertical.py "
            f"--link --limit {small['rows']}`): {small['wall_s']:.1f} s, {small['bytes'] / 1e6:.1f} MB, AUC "
            f"{small['auc']:.4f}"
        )
    if "vertical_job" in r:
        vj = r["vertical_job"]
        vline += (
            f"; with record-level DP at the feature nodes (federated/vertical_dp.py: clip {vj['clip']}, "
            f"δ = {vj['delta']:g}, {vj['rounds']} round{'s' if vj['rounds'] != 1 else ''} of the default batch at "
            f"learning rate {vj['learning_rate']}"
            + (
                f", the label holder's top fitted on a share {vj['top_calibration']:g} of the held-out rows"
                " (federated/top_calibration.py)"
                if vj.get("top_calibration")
                else ""
            )
            + ")"
        )
    return [*lines, vline + "."]


def _record_dp_rows(r: dict[str, Any]) -> list[list[Any]]:
    pooled = r["pooled"]
    rows: list[list[Any]] = [["pooled (centralised)", f"{pooled['auc']:.4f}", "—", "—", f"{pooled['wall_s']:.1f}", 0]]
    runs = [("vertical", r["vertical"])]
    runs += [
        (f"vertical record-level DP ε = {e}", r[f"vertical_dp_eps{e}"]) for e in _EPS if f"vertical_dp_eps{e}" in r
    ]
    runs += [
        (f"vertical stacked, record-level DP ε = {e}", r[f"vertical_stacked_dp_eps{e}"])
        for e in _EPS
        if f"vertical_stacked_dp_eps{e}" in r
    ]
    runs += [
        (f"horizontal SecAgg+ record-level DP ε = {e}", r[f"horizontal_secagg_dpsgd_eps{e}"])
        for e in _EPS
        if f"horizontal_secagg_dpsgd_eps{e}" in r
    ]
    for name, x in runs:
        eps = "—" if x.get("epsilon") is None else f"{x['epsilon']:.4f}"
        diff = x["auc"] - pooled["auc"]
        rows.append([name, f"{x['auc']:.4f}", f"{diff:.4f}", eps, f"{x['wall_s']:.1f}", f"{x['bytes']:,}"])
    return rows


def _goal(r: dict[str, Any], eps: str, goal: float) -> str:
    key = f"horizontal_secagg_dpsgd_eps{eps}"
    if key not in r:
        return ""
    diff = r[key]["auc"] - r["pooled"]["auc"]
    verdict = "is within" if -diff <= goal else "misses"
    return f"horizontal ε = {eps} {verdict} {goal:g} AUC of pooled ({diff:.4f})"


def _record_dp_reading(d: dict[str, Any]) -> list[str]:
    r = d["record_dp"]
    out = []
    goals = [g for g in (_goal(r, "1", 0.02), _goal(r, "4", 0.01)) if g]
    if goals:
        out.append("* Goals (δ = 1e-6): " + "; ".join(goals) + ".")
    node = [f"{d[f'horizontal_secagg_dp_eps{e}']['auc']:.4f}" for e in _EPS if f"horizontal_secagg_dp_eps{e}" in d]
    aucs = [r[k]["auc"] for e in _EPS if (k := f"horizontal_secagg_dpsgd_eps{e}") in r]
    rec = [f"{a:.4f}" for a in aucs]
    if len(aucs) > 1 and max(aucs) - min(aucs) < 0.005:
        out.append(
            f"* Horizontal record-level DP gains only {max(aucs) - min(aucs):.4f} AUC from ε = 1 to ε = 8: what limits "
            "the model there is the optimisation budget (rounds × local epochs with clipped gradients), not the noise."
        )
    if len(node) == len(rec) == len(_EPS):
        at_nodes = all(d[f"horizontal_secagg_dp_eps{e}"].get("noise_added_by") == "nodes" for e in _EPS)
        kind = "node-level DP (noise added at the nodes)" if at_nodes else "node-level (central) DP"
        out.append(
            f"* Horizontal at ε = 1 / 4 / 8: {kind} {' / '.join(node)} (table above, full data); "
            f"record-level DP at each node {' / '.join(rec)}."
        )
    vdp = [r[k]["auc"] for e in _EPS if (k := f"vertical_dp_eps{e}") in r]
    if len(vdp) == len(_EPS):
        same = r.get("vertical_dp_pooled_same_rows")
        if same and all(r[f"vertical_dp_eps{e}"].get("top_calibrated") for e in _EPS):
            out.append(_calibrated_vertical_reading(r, vdp, same))
        else:
            out.append(_deattenuated_vertical_reading(r, vdp))
    stacked = [r[k]["auc"] for e in _EPS if (k := f"vertical_stacked_dp_eps{e}") in r]
    if len(stacked) == len(_EPS) and r.get("vertical_dp_pooled_same_rows"):
        out.append(_stacked_vertical_reading(r, stacked, r["vertical_dp_pooled_same_rows"]))
    li = d.get("label_inference")
    if li:
        gaps = [abs(v["attack_balanced_accuracy"] - v["bound"]) for k, v in li.items() if k.startswith("label_dp_eps")]
        out.append(
            f"* Label inference: without label DP the direction attack reaches balanced accuracy "
            f"{li['no_label_dp']['attack_balanced_accuracy']:.4f}; with randomized response it stays within "
            f"{max(gaps):.4f} of the ε-label-DP bound e^ε/(1+e^ε)."
        )
    out.append(
        "* `bench/results/federated.json` keeps the full-data runs above and adds `record_dp`, `label_inference` "
        "and the top-level keys `pooled_auc`, `dp_eps1_auc`, `dp_eps4_auc`, `dp_eps8_auc`, "
        "`vertical_dp_eps{1,4,8}_auc`, `vertical_stacked_dp_eps{1,4,8}_auc`, `vertical_auc`, "
        f"`vertical_wall_s`, `vertical_bytes` (`headline_run`: {d.get('headline_run', '—')})."
    )
    return out


def _calibrated_vertical_reading(r: dict[str, Any], vdp: list[float], same: dict[str, Any]) -> str:
    diffs = [a - same["auc"] for a in vdp]
    verdicts = [
        f"ε = {e} {'is within' if -d <= goal else 'misses'} {goal:g} ({d:.4f})"
        for e, d, goal in zip(_EPS, diffs, (0.02, 0.01, None), strict=True)
        if goal is not None
    ]
    balanced = [r[f"vertical_dp_eps{e}"].get("balanced_accuracy") for e in _EPS]
    return (
        f"* Vertical at ε = 1 / 4 / 8: {' / '.join(f'{a:.4f}' for a in vdp)} with record-level DP at the feature "
        f"nodes, the label holder's top fitted on {same['calibration_rows']:,} held-out rows' clean embeddings and "
        f"the AUC counted on the other {same['rows']:,}; pooled training on the training and calibration rows "
        f"scores {same['auc']:.4f} on those same rows"
        + (
            f" ({same['auc_training_rows_only']:.4f} on the training rows alone)"
            if "auc_training_rows_only" in same
            else ""
        )
        + f" ({' / '.join(f'{d:+.4f}' for d in diffs)}): {'; '.join(verdicts)}"
        + (f"; balanced accuracy {' / '.join(f'{b:.4f}' for b in balanced)}." if None not in balanced else ".")
        + f" Without DP the vertical job reaches {r['vertical']['auc']:.4f} on all held-out rows."
    )


def _stacked_vertical_reading(r: dict[str, Any], aucs: list[float], same: dict[str, Any]) -> str:
    diffs = [a - same["auc"] for a in aucs]
    verdicts = [
        f"ε = {e} {'is within' if -d <= goal else 'misses'} {goal:g} ({d:.4f})"
        for e, d, goal in zip(_EPS[:2], diffs, (0.02, 0.01), strict=False)
    ]
    first = r["vertical_stacked_dp_eps1"]
    walls = [r[f"vertical_stacked_dp_eps{e}"]["wall_s"] for e in _EPS]
    return (
        f'* Vertical stacked (`vertical_scheme = "stacked"`: each feature node\'s logistic regression trained by '
        f"DP-SGD on the label holder's training labels, its held-out scores stacked by a top fitted on the same "
        f"{same['calibration_rows']:,} calibration rows, δ = {first.get('delta', 1e-6):g}) at ε = 1 / 4 / 8: "
        f"{' / '.join(f'{a:.4f}' for a in aucs)} against {same['auc']:.4f} pooled on the same rows "
        f"({' / '.join(f'{d:+.4f}' for d in diffs)}): {'; '.join(verdicts)}; {min(walls):.0f}–{max(walls):.0f} s and "
        f"{first['bytes'] / 1e6:.1f} MB each, against {r['vertical_dp_eps1']['wall_s']:.0f} s and "
        f"{r['vertical_dp_eps1']['bytes'] / 1e6:.1f} MB for split learning's."
    )


def _deattenuated_vertical_reading(r: dict[str, Any], vdp: list[float]) -> str:
    line = (
        f"* Vertical at ε = 1 / 4 / 8: {' / '.join(f'{a:.4f}' for a in vdp)} with record-level DP at the feature "
        f"nodes, against {r['vertical']['auc']:.4f} without."
    )
    if r["vertical"]["auc"] - max(vdp) > 0.005:
        one_step = r.get("vertical_job", {}).get("rounds") == 1
        line += (
            (
                " The job takes one step (chosen by `bench/dp_sweep.py --vertical`): each feature node's model "
                "is its one noisy update, so that update's noise, at three releases per row with no sampling "
                "amplification (the batches are the job's public schedule), is what costs accuracy. "
            )
            if one_step
            else " The noise on every training embedding row is what costs accuracy (no sampling amplification). "
        )
        balanced = [r[f"vertical_dp_eps{e}"].get("balanced_accuracy") for e in _EPS]
        line += (
            "The label holder scores with top weights de-attenuated for the noise"
            + (
                " and its bias recentred on the held-out scores"
                if all(r[f"vertical_dp_eps{e}"].get("top_recentred") for e in _EPS)
                else ""
            )
            + " (post-processing, no label)"
            + (
                f"; balanced accuracy {' / '.join(f'{b:.4f}' for b in balanced)}."
                if all(b is not None for b in balanced)
                else "."
            )
        )
    return line


def record_dp(d: dict[str, Any]) -> str:
    """The record-level DP, vertical and label-inference subsection, from `record_dp` and `label_inference`."""
    r = d["record_dp"]
    cmd = "python -m bench.federated --record-dp" + (f" --limit {r['limit']}" if r.get("limit") else "")
    parts = [
        f"### Record-level DP, vertical, label inference (`{cmd}`)",
        "\n".join(_record_dp_intro(r)),
        _table(["run", "AUC", "AUC − pooled", "ε (largest node)", "wall s", "bytes exchanged"], _record_dp_rows(r)),
    ]
    sigmas = [
        f"Horizontal ε = {e}: per-node noise multipliers " + _node_sigmas(r[k]["nodes"], "steps")
        for e in _EPS
        if (k := f"horizontal_secagg_dpsgd_eps{e}") in r
    ]
    sigmas += [
        f"Vertical ε = {e}: per-feature-node noise multipliers " + _node_sigmas(r[k]["nodes"], "releases")
        for e in _EPS
        if (k := f"vertical_dp_eps{e}") in r
    ]
    sigmas += [
        f"Vertical stacked ε = {e}: per-feature-node DP-SGD noise multipliers " + _node_sigmas(r[k]["nodes"], "steps")
        for e in _EPS
        if (k := f"vertical_stacked_dp_eps{e}") in r
    ]
    if sigmas:
        parts.append("\n".join(sigmas))
    li = d.get("label_inference")
    if li:
        parts.append(
            "Label inference by a feature node from vertical gradients (`python -m bench.federated --label-attack"
            + (f" --limit {li['limit']}" if li.get("limit") else "")
            + f"`, in-process, {li['rows']:,} training rows, direction attack, balanced accuracy):"
        )
        rows = [
            [k, f"{v['attack_balanced_accuracy']:.4f}", f"{v['bound']:.4f}"]
            for k, v in li.items()
            if isinstance(v, dict)
        ]
        parts.append(_table(["label DP", "attack balanced accuracy", "bound e^ε/(1+e^ε)"], rows))
    parts.append("Reading the figures:\n" + "\n".join(_record_dp_reading(d)))
    return "\n\n".join(parts)


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _load_rows(levels: list[dict[str, Any]]) -> list[list[str]]:
    ms = _ms
    return [
        [
            f"{r['concurrency']:,}",
            f"{r['answered']:,}",
            f"{r['refused']:,}",
            f"{r['client_timeouts']:,}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0",
            f"{r['goodput_per_s']:.2f}",
            f"{ms(r['answered_ms']['p50'])} / {ms(r['answered_ms']['p95'])} / {ms(r['answered_ms']['p99'])}",
            ms(r["refused_ms"]["max"]),
            f"{r['gateway_rss_max_mb']:,.0f}",
        ]
        for r in levels
    ]


LOAD_HEADER = [
    "clients",
    "answered",
    "refused (503/429)",
    "client timeouts",
    "other errors",
    "goodput /s",
    "answered p50 / p95 / p99 ms",
    "slowest refusal ms",
    "gateway RSS max MB",
]


def _replicas(d: dict[str, Any]) -> list[str]:
    if "replicas_2" not in d:
        return []
    limited = d.get("replicas_2_limited_by", {})
    return [
        f"Two replicas: {d['replicas_2']['setup']}.",
        _table(LOAD_HEADER, _load_rows(d["replicas_2"]["levels"])),
        f"Two replicas against one (best goodput): **{d['replicas_2_speedup']}×** "
        f"(goal ≥ {d['goals'].get('replicas_2_speedup', 1.5)}×; by level: "
        + ", ".join(f"{k} clients {v}×" for k, v in d.get("replicas_2_speedup_by_level", {}).items())
        + f"). Limited by — one gateway: {limited.get('one_gateway')}; two replicas: {limited.get('two_replicas')}.",
    ]


def load(d: dict[str, Any]) -> str:
    ms = _ms
    rows = _load_rows(d["levels"])
    top, goals = d.get("at_1000") or {}, d["goals"]
    lines = [
        f"{d['federation']}. Clients: {d['client']}. Admission: at most "
        f"{d['admission']['max_inflight_checks']} checks in flight, {d['admission']['max_queued_checks']} waiting "
        f"(`[gateway.admission]`). Load average at the end: {d['machine']['load_average_1m_at_end']} "
        f"on {d['machine']['cpus']} cores shared with other work.",
        _table(LOAD_HEADER, rows),
        (
            f"At 1,000 clients: {top.get('client_timeouts')} client timeouts "
            f"(goal {goals['client_timeouts_at_1000']}), "
            f"goodput {top.get('goodput_ratio_to_peak')} of the best level (goal ≥ {goals['goodput_ratio_to_peak']}), "
            f"gateway RSS {top.get('gateway_rss_max_mb')} MB (goal ≤ {goals['gateway_rss_max_mb']} MB), "
            f"slowest refusal {ms(top.get('refused_ms_max'))} ms (goal ≤ {goals['refusal_s'] * 1000:.0f} ms)."
            if top
            else "The 1,000-client level was not run (--quick)."
        ),
        _single_check(d),
        _load_reading(d),
        *_replicas(d),
    ]
    return "\n\n".join(lines)


def _load_reading(d: dict[str, Any]) -> str:
    """What the load figures say, from the figures: context bytes, where the CPU went at 1,000
    clients, and when the requests that timed out were sent."""
    parts = [
        "Reading the figures: checks name the requester's registered context by fingerprint, so after the "
        "first no context bytes travel."
        if "single_check_bytes_first" in d
        else "Reading the figures: every check request of this run still carried the requester's public HE "
        "context (it predates registering the context once, issue 17 item 2)."
    ]
    top = next((r for r in d["levels"] if r["concurrency"] == 1000), None)
    if top is not None:
        cpu = top["cpu"]
        parts.append(
            f"At 1,000 clients the machine was {cpu['machine_busy_of_cores']:.0%} busy (CPU cores per second: "
            f"gateway {cpu['gateways']}, nodes {cpu['nodes']}, load clients {cpu['client']}); the load clients "
            f"share the federation's {d['machine']['cpus']} cores, so a late answer or refusal is late for want "
            "of a core."
        )
        best = max(d["levels"], key=lambda r: r["goodput_per_s"])
        if "cpu" in best and best is not top:
            extra = cpu["client"] - best["cpu"]["client"]
            parts.append(
                f"Against the best level ({best['concurrency']:,} clients), the load clients took {extra:.2f} more "
                f"cores ({extra / d['machine']['cpus']:.0%} of the machine) and the nodes {best['cpu']['nodes']} "
                f"against {cpu['nodes']}: part of the goodput lost at 1,000 clients is the load generator's share "
                "of these cores, which separate client machines would not take."
            )
        sent = top.get("client_timeouts_by_sent_s")
        if sent and top["client_timeouts"]:
            when = ", ".join(f"{span} s: {n}" for span, n in sent.items())
            parts.append(f"Timed-out requests by when they were sent (seconds into the level): {when}.")
        slowest = top.get("refused_ms_max_by_sent_s")
        if slowest:
            parts.append(
                f"The slowest refusal of a request sent in the level's first 5 s, when all 1,000 clients open "
                f"their TLS connections at once (the burst is cut right after its bodies, docs/SECURITY.md), took "
                f"{_ms(slowest['0-5'])} ms; of one sent after, {_ms(slowest['5+'])} ms."
            )
    parts.append("Admission keeps the gateway's own memory bounded (RSS column).")
    return " ".join(parts)


def audit_federation(d: dict[str, Any]) -> str:
    rows = [
        [name, f"{r['processes']}", f"{r['appends_per_s']:,}", f"{r['latency_ms_p50']}", f"{r['latency_ms_p99']}"]
        for name, r in (
            ("one process (baseline)", d["one_process"]),
            ("two replicas, one log each (built)", d["per_replica_logs"]),
            (
                "two processes, one log sequenced in PostgreSQL (not built; an upper bound for it)",
                d["postgres_sequence"],
            ),
        )
    ]
    return "\n\n".join(
        [
            f"{d['tasks_per_process']} asyncio appenders per process, durable appends; "
            f"{d['machine']['cpus']} cores. Per-replica logs {d['per_replica_vs_one']}× one process; "
            f'one PostgreSQL-sequenced log {d["postgres_sequence_vs_one"]}× (docs/AUDIT.md "Replicas").',
            _table(["configuration", "processes", "appends/s", "p50 ms", "p99 ms"], rows),
        ]
    )


def training_startup(d: dict[str, Any]) -> str:
    med, idle, rss = d["median"], d.get("idle_cores_by_link", {}), d.get("idle_rss_mb_by_link", {})
    arms = [
        ("Flower processes started per job (baseline)", "per_job"),
        (
            "the gateway's long-lived link (built: short poll while busy, 1 s after 5 s idle, warm ClientApps)",
            "long_lived",
        ),
        (
            "the same link, Flower's own SuperNode (3 s idle poll, a process per message; baseline)",
            "long_lived_stock_poll",
        ),
        ("the same link, short poll but a process per message (baseline)", "long_lived_cold_clientapps"),
    ]
    rows = [
        [
            label,
            f"{med[key]['to_run_s']}",
            f"{med[key]['wall_s']}",
            f"{idle[key]:.3f}" if key in idle else "—",
            f"{rss[key]:,.0f}" if key in rss else "—",
        ]
        for label, key in arms
        if key in med
    ]
    text = (
        f"{d['setup']}; medians. Submission to the run's start: {d['to_run_ratio_per_job_vs_long_lived']}x "
        f"shorter on the long-lived link; job wall time {d['wall_ratio_per_job_vs_long_lived']}x shorter "
        f"(the per-job federation is also stopped at the end). The link's own start-up, paid once when "
        f"the gateway starts: {d['link_startup_s']} s."
    )
    if "wall_ratio_stock_poll_vs_short_poll" in d:
        polls = d["supernode_poll_s"]
        text += (
            f" Against Flower's own SuperNode (a fixed {polls['long_lived_stock_poll']:g} s idle poll, a fresh "
            f"ClientApp process per message): job wall time {d['wall_ratio_stock_poll_vs_short_poll']}x shorter."
        )
    if "wall_ratio_cold_vs_warm_clientapps" in d:
        text += (
            f" Warm ClientApps alone (`federated/warm_clientapp.py`, against a process per message at the same "
            f"poll): {d['wall_ratio_cold_vs_warm_clientapps']}x."
        )
    headers = ["federation", "submission to run start, s", "job wall, s", "idle link, cores", "idle link RSS, MB"]
    return "\n\n".join([text, _table(headers, rows)])


def sign_binding(d: dict[str, Any]) -> str:
    rows = [
        [
            f"N = {c['poly_modulus_degree']}, {c['coeff_modulus_bits']}-bit modulus, t {c['plain_modulus_bits']} bits",
            c["fresh_budget_bits"],
            c["after_ct_ct_product_bits"],
            c["after_random_plaintext_bits"],
            c["needed_before_flood_bits"],
            "yes" if c["fits"] else "no",
            f"{c['fresh_ciphertext_bytes'] / 1e6:.2f}",
            f"{c['relin_keys_bytes'] / 1e6:.1f}",
            f"{c['ct_ct_product_ms']:.0f}",
        ]
        for c in d["chains"]
    ]
    head = [
        "parameters", "fresh bits", "after bit check (ct × ct)", "after randomising", "needed for today's flood",
        "fits", "ciphertext MB", "relinearisation keys MB", "ct × ct ms",
    ]  # fmt: skip
    return "\n\n".join(
        [
            "Noise budget (bits, measured with the secret key) left by the chain a bound comparison needs: the "
            "booleanity check on the requester's encrypted bits (one ciphertext product), the randomisation "
            f"(one product with a random plaintext), then the flood, which leaves {d['flood_term_leaves_bits']} bits "
            f"itself and must exceed what it hides by 2^{d['flood_margin_bits']}:",
            _table(head, rows),
            f"So a bound comparison needs the larger parameters: at least "
            f"{d['bound_check_extra_bytes_at_least'] / 1e6:.1f} MB more per check (the requester's bits out, the "
            f"result back) against today's {d['today_check_bytes'] / 1e6:.2f} MB, and a relinearisation key "
            f"registered per requester key. {d['note'].capitalize()}.",
        ]
    )


def sign_comparison(d: dict[str, Any]) -> str:
    c = d["comparison"]
    per = c["per_comparison"]
    rows = [
        [
            r["subjects"],
            r["comparisons"],
            f"{r['today_cpu_ms']:,.1f}",
            f"{r['sign_only_cpu_ms']:,.1f}",
            f"×{r['cpu_ratio']:,}",
            r["today_megabytes"],
            r["sign_only_megabytes"],
            f"×{r['bytes_ratio']}",
            f"+{r['extra_round_trips']}",
        ]
        for r in d["side_by_side"]
    ]
    return "\n\n".join(
        [
            f"One secure comparison ({c['bit_length']}-bit inputs, Paillier {c['paillier_bits']}, DGK "
            f"{c['dgk_n_bits']}; TNO MPC Lab's `tno.mpc.protocols.secure_comparison`): gateway "
            f"{per['gateway_ms']} ms, requester {per['requester_ms']} ms, {per['bytes'] / 1000:.1f} kB on the wire "
            f"({c['samples']} comparisons, {c['wrong_results']} wrong; key generation {c['key_generation_s']} s). "
            "A sign-only 低保 check needs two per subject and criterion (the blinding wraps modulo BFV's t), "
            "on top of today's masked results, which the requester still decrypts to get its inputs:",
            _table(
                [
                    "subjects",
                    "comparisons",
                    "today CPU ms",
                    "sign-only CPU ms",
                    "ratio",
                    "today MB",
                    "sign-only MB",
                    "ratio",
                    "round trips",
                ],
                rows,
            ),
            *_threshold_shift(d),
        ]
    )


def _threshold_shift(d: dict[str, Any]) -> list[str]:
    a = d.get("threshold_shift_attack")
    if a is None:
        return []
    return [
        f"And it protects only an honest client: a modified requester that shifts its own Paillier input "
        f"(it makes that input from its BFV decryption, and nothing binds the two) learns the verdict at "
        f"a threshold of its choosing. Bisecting over checks with the real comparison steps recovered "
        f"{a['values_recovered_exactly']} of {a['subjects']} secret {a['span_bits'] + 1}-bit values exactly, "
        f"{a['checks_per_subject']:g} checks each (`threshold_shift_attack`)."
    ]


def _single_check(d: dict[str, Any]) -> str:
    single, first, goals = d["single_check_bytes"], d.get("single_check_bytes_first"), d["goals"]
    county, county_ms = d.get("county_link", {}), d.get("single_check_ms_county_link")
    county_text = f"{county_ms:,.0f} ms" if county_ms is not None else f"not measured ({county.get('reason', '')})"
    text = (
        f"One single-applicant check moves {single['total']:,} bytes ({single['client_gateway']:,} client↔gateway, "
        f"{single['gateway_nodes']:,} gateway↔nodes; goal ≤ {goals['single_check_bytes']:,})"
    )
    if first is not None:
        text += (
            f" once the requester's context is registered and the nodes hold it; the first check of a fresh key "
            f"moves {first['total']:,} ({first['client_gateway']:,} client↔gateway with the 404 "
            f"`context_unknown` and the registration, {first['gateway_nodes']:,} gateway↔nodes with each node's "
            f"copy of the context and the pads that open the key's pad batch)"
        )
    return (
        f"{text}. Over a county office's link ({county.get('rate')}, {county.get('rtt_ms')} ms round trip, from a "
        f"network namespace: {county.get('emulation', 'not built')}): {county_text} "
        f"(goal < {goals['single_check_ms_county_link']} ms)."
    )


def load_single(d: dict[str, Any]) -> str:
    text = (
        f"{d['federation']}; the requester's context registered once (`POST /v1/contexts`), the result of all "
        f"three criteria packed into one ciphertext switched one modulus level down (docs/PROTOCOL.md, "
        f'"Registered contexts" and "Result ciphertext size"). Load average at the end: '
        f"{d['machine']['load_average_1m_at_end']} on {d['machine']['cpus']} cores shared with other work.\n\n"
        + _single_check(d)
    )
    before = d.get("without_pads")
    if before is None:
        return text
    single, old, first = d["single_check_bytes"], before["single_check_bytes"], d["single_check_bytes_first"]
    ms, old_ms = d.get("single_check_ms_county_link"), before.get("single_check_ms_county_link")
    timing = f"; over the county link {old_ms:,.0f} ms before, {ms:,.0f} ms now" if ms and old_ms else ""
    return text + (
        f' With one-time pads (docs/PROTOCOL.md "Pads") the nodes send each element\'s Enc(ρ) once, when a '
        f"pad batch is opened (the first check's {first['gateway_nodes']:,} gateway↔nodes bytes include the "
        f"five pads, which then serve {d['pad_batch_checks']:,} single checks), and afterwards x − ρ per slot. "
        f"Side by side in the same run with `one_time_pads = false` (a fresh ciphertext per element and check): "
        f"{old['total']:,} bytes before ({old['gateway_nodes']:,} gateway↔nodes), {single['total']:,} now "
        f"(ratio {single['total'] / old['total']:.3f}; gateway↔nodes "
        f"{single['gateway_nodes'] / old['gateway_nodes']:.4f}){timing}."
    )


def _timeout_share(r: dict[str, Any]) -> float:
    sent = r["answered"] + r["refused"] + r["client_timeouts"] + sum(r["errors"].values())
    return r["client_timeouts"] / sent if sent else 0.0


def load_partial(d: dict[str, Any]) -> str:
    """The chosen levels of the gateway as configured, beside the same gateway configured otherwise."""
    header = ["gateway", *LOAD_HEADER, "refusal p50 ms", "CPU cores: client / gateway / nodes, busy"]
    rows = [
        [
            run["gateway"],
            *_load_rows([r])[0],
            _ms(r["refused_ms"]["p50"]),
            f"{r['cpu']['client']} / {r['cpu']['gateways']} / {r['cpu']['nodes']}, "
            f"{r['cpu']['machine_busy_of_cores']:.0%} of {d['machine']['cpus']}",
        ]
        for run in d["runs"]
        for r in run["levels"]
    ]
    built, *others = d["runs"]

    def versus(r: dict[str, Any], other: dict[str, Any]) -> str:
        t = {x["concurrency"]: x for x in other["levels"]}[r["concurrency"]]
        return (
            f"{r['concurrency']:,} clients, against {other['gateway']}: goodput {r['goodput_per_s']:.2f}/s against "
            f"{t['goodput_per_s']:.2f}/s, {_timeout_share(r):.0%} of requests timed out against "
            f"{_timeout_share(t):.0%}, refusals within {_ms(r['refused_ms']['p50'])} ms (half) and "
            f"{_ms(r['refused_ms']['max'])} ms (all) against {_ms(t['refused_ms']['p50'])} and "
            f"{_ms(t['refused_ms']['max'])} ms"
        )

    compared = [versus(r, other) for other in others for r in built["levels"]]
    if d.get("compare") == "pads":
        ratios = ", ".join(
            f"{r['concurrency']:,} clients {r['goodput_per_s'] / t['goodput_per_s']:.2f}×"
            for r, t in zip(built["levels"], others[0]["levels"], strict=True)
        )
        intro = (
            "The same federation twice in one run: the gateway as shipped, small checks on one-time pads "
            '(docs/PROTOCOL.md "Pads": the nodes send x − ρ per slot, not a ciphertext per element), then '
            f"with `one_time_pads = false`. Goodput ratio, pads against fresh ciphertexts: {ratios}. "
        )
    else:
        intro = (
            "The same federation twice in one run: the gateway as configured, its checks' HE arithmetic in "
            "worker processes (`[gateway] he_workers`, gateway/he_workers.py), then with `he_workers = 0`, the "
            "arithmetic in the gateway's own threads as before. TenSEAL holds the GIL for each operation, so in "
            "threads it stalls the event loop that admits and refuses requests. "
        )
    return "\n\n".join(
        [
            intro + "The load clients are aiohttp, levels above 250 clients driven from several load processes. "
            f"Load average at the end: {d['machine']['load_average_1m_at_end']} on {d['machine']['cpus']} cores.",
            _table(header, rows),
            f"{built['gateway']}: " + "; ".join(compared) + ".",
        ]
    )


def dp_sweep(d: dict[str, Any]) -> str:
    sched = d["schedule"]
    intro = (
        f"In-process replay of the horizontal record-DP schedule ({sched['rounds']} rounds × {sched['local_epochs']} "
        f"local epochs of DP-SGD, batch {sched['batch_size']}, δ = {d['delta']:g}) on a {d['rows']:,}-row subsample: "
        "every (clip, learning rate, ε) of the grid scored on a validation split of the training rows; per ε the "
        "best pair, then its AUC on the official test rows with fresh noise. "
        f"{len(d['grid'])} trainings in {d['wall_s']:.0f} s."
    )
    rows = [
        [k.removeprefix("eps"), c["clip"], c["learning_rate"], f"{c['validation_auc']:.4f}", f"{c['test_auc']:.4f}"]
        for k, c in d["chosen"].items()
    ]
    by_clip: dict[float, list[float]] = {}
    for g in d["grid"]:
        if g["epsilon"] == 4.0:
            by_clip.setdefault(g["clip"], []).append(g["validation_auc"])
    spread = "; ".join(f"clip {c:g}: best {max(v):.4f}" for c, v in sorted(by_clip.items()))
    parts = [
        intro,
        _table(["ε", "clip", "learning rate", "validation AUC", "test AUC"], rows),
        f"At ε = 4, by clip (validation AUC, best learning rate): {spread}.",
    ]
    if "by_mean_over_epsilons" in d:
        top = d["by_mean_over_epsilons"][:5]
        parts.append(
            "One setting for every ε, by mean validation AUC over ε = 1, 4, 8: "
            + "; ".join(
                f"clip {r['clip']:g} / rate {r['learning_rate']:g}: {r['mean_validation_auc']:.4f}" for r in top
            )
            + "."
        )
    for section, arm, command in (
        ("vertical", "de-attenuated top weights", "--vertical"),
        (
            "vertical_calibrated",
            "its top fitted on half the held-out rows (`top_calibration`)",
            "--vertical --calibrated",
        ),
    ):
        if v := d.get(section):
            parts += _vertical_sweep(v, arm, command)
    return "\n\n".join(parts)


def _vertical_sweep(v: dict[str, Any], arm: str, command: str) -> list[str]:
    vrows = [
        [
            k.removeprefix("eps"),
            f"{c['batch_size']:,}",
            c["rounds"],
            c["learning_rate"],
            f"{c['validation_auc']:.4f}",
            f"{c['test_auc']:.4f}",
        ]
        for k, c in v["chosen"].items()
    ]
    grid_rows = [
        [
            f"{g['batch_size']:,}",
            g["rounds"],
            g["learning_rate"],
            *(f"{g['validation_auc'][f'eps{e}']:.4f}" for e in _EPS),
            f"{g['mean_validation_auc']:.4f}",
        ]
        for g in sorted(v["grid"], key=lambda g: -g["mean_validation_auc"])
    ]
    return [
        f"Vertical record-level DP (replay of split learning as the job runs it, label holder with {arm}, clip "
        f"{v['clip']:g}, embedding dimension {v['embedding_dim']}, {v['training_rows']:,} training rows; "
        f"`bench/dp_sweep.py {command}`): validation AUC by batch, rounds and learning rate, best first:",
        _table(["batch_size", "rounds", "learning rate", *(f"ε = {e}" for e in _EPS), "mean"], grid_rows),
        "The best by mean validation AUC, at each ε on fresh noise:",
        _table(["ε", "batch_size", "rounds", "learning rate", "validation AUC", "test AUC"], vrows),
    ]


def vertical_he_bound(d: dict[str, Any]) -> str:
    rows = [["pooled logistic regression", f"{d['pooled_lr_auc']:.4f}", "—"]]
    rows.append(["the Taylor loss's exact minimiser, pooled (least squares)", f"{d['least_squares_auc']:.4f}", "—"])
    nn = d["no_noise"]
    rows.append(
        [
            f"the protocol without noise ({nn['steps']} steps, U = {nn['score_bound']:g}, rate {nn['lr']:g})",
            f"{nn['test_auc']:.4f}",
            "—",
        ]
    )
    for e in _EPS:
        c = d[f"eps{e}"]
        rows.append(
            [
                f"ε = {e} ({c['steps']} steps, U = {c['score_bound']:g}, rate {c['lr']:g}, ridge ×{c['ridge']:g})",
                f"{c['test_auc']:.4f}",
                f"{-c['below_pooled']:+.4f}",
            ]
        )
    return "\n\n".join(
        [
            "What vertical logistic regression under homomorphic encryption (nobody sees a per-row value; the "
            "per-node gradients are decrypted only with Gaussian noise) could reach under record-level DP, replayed "
            f"without the encryption on {d['rows']:,} rows ({d['training_rows']:,} training, δ = {d['delta']:g}). "
            "Per-example clipping is impossible there, so the sensitivity is the worst case, 2 · (0.25·U + 0.5) · "
            f"{d['row_bound']:.2f}; settings chosen per ε on the validation split, test AUC the mean of the noise "
            f"draws ({d['wall_s']:.0f} s).",
            _table(["run", "test AUC", "− pooled"], rows),
        ]
    )


def dp_standardise(d: dict[str, Any]) -> str:
    arms = (
        ("default encodings (minmax / log / onehot)", "default"),
        ("standardise, statistics pooled with record-level DP noise (built)", "standardise_dp_stats"),
        ("standardise, exact statistics (not a DP release; reference)", "standardise_exact_stats"),
    )
    rows = [
        [label, *(f"{d[f'eps{e}_{key}']['test_auc_mean']:.4f}" for e in _EPS if f"eps{e}_{key}" in d)]
        for label, key in arms
    ]
    gain = [d[f"eps{e}_standardise_dp_stats"]["test_auc_mean"] - d[f"eps{e}_default"]["test_auc_mean"] for e in _EPS]
    return "\n\n".join(
        [
            f"In-process replay of the horizontal record-DP schedule at clip {d['clip']:g}, learning rate "
            f"{d['learning_rate']:g}, δ = {d['delta']:g}, on a {d['rows']:,}-row subsample; every integer feature "
            f"standardised with the pooled statistics of the 4 regions' moment vectors; mean test AUC over "
            f"{d['seeds']} runs (fresh DP-SGD and statistics noise each). Standardise with DP statistics against "
            f"the default encodings: {', '.join(f'{g:+.4f}' for g in gain)} AUC at ε = 1 / 4 / 8 "
            f"({d['wall_s']:.0f} s in all).",
            _table(["encoding", *(f"ε = {e}" for e in _EPS)], rows),
        ]
    )


def vertical_batches(d: dict[str, Any]) -> str:
    def table(run: dict[str, Any]) -> str:
        rows = [
            [
                "all rows" if r["batches_per_epoch"] == 1 else f"{r['batch_size']:,}",
                r["rounds"],
                f"{r['validation_auc']:.4f}",
                f"{r['test_auc']:.4f}",
                f"{r['embedding_rows_sent_per_node']:,}",
            ]
            for r in run["runs"]
        ]
        return _table(
            ["batch_size", "steps", "validation AUC", "test AUC", "embedding rows each feature node sends"], rows
        )

    return "\n\n".join(
        [
            "In-process replay of the plain vertical job (pipelined, the wire's float16, learning rate 3) over the "
            "six agencies, trained on the training rows less a 20 % validation split; the default batch is now "
            f"{d['default_batch']:,} rows, chosen on the validation AUC. Full data "
            f"({d['full']['training_rows']:,} training rows):",
            table(d["full"]),
            f"Subsample ({d['subsample']['rows']:,} rows, {d['subsample']['training_rows']:,} training rows):",
            table(d["subsample"]),
        ]
    )


_VERTICAL_ARMS = (
    ("per-node noise, top as fitted (the job before de-attenuation)", "per_node_noise"),
    ("secure sum of the feature nodes' blocks, noise shared out", "secure_sum"),
    ("regression calibration of the noisy embeddings", "regression_calibration"),
    ("de-attenuated top weights (built: the job now)", "deattenuated_top"),
    ("no embedding noise (not private; reference)", "no_embedding_noise"),
)


def dp_vertical_options(d: dict[str, Any]) -> str:
    arms = d["arms"]
    rows = [
        [
            label,
            *(f"{a['test_auc_mean']:.4f} (min {a['test_auc_min']:.4f})" for a in (arms[key][f"eps{e}"] for e in _EPS)),
        ]
        for label, key in _VERTICAL_ARMS
        if key in arms
    ]
    sd = arms["per_node_noise"]
    return "\n\n".join(
        [
            f"In-process replay of the vertical record-DP job ({d['rounds']} rounds, learning rate "
            f"{d['learning_rate']:g}, clip {d['clip']:g}, {d['rows']:,}-row subsample); "
            f"test AUC, mean and lowest over {d['seeds']} noise draws. Every training embedding coordinate "
            f"carries noise of sd {', '.join(str(sd[f'eps{e}']['noise_sd_per_clip']) for e in _EPS)} × the clip at "
            f"ε = 1 / 4 / 8 (each row released {2 * d['rounds'] + 1} times, replacement sensitivity 2 × clip; "
            f"{d['wall_s']:.0f} s in all).",
            _table(["label holder's use of the embeddings", *(f"ε = {e}" for e in _EPS)], rows),
        ]
    )


def dp_vertical_ceiling(d: dict[str, Any]) -> str:
    rows = [
        [f"{k} step{'s' if k != '1' else ''}, no clip, no noise", f"{v['learning_rate']:g}", f"{v['test_auc']:.4f}",
         f"{v['test_auc'] - d['pooled_test_auc']:+.4f}"]
        for k, v in d["no_dp_by_steps"].items()
    ]  # fmt: skip
    dp, job = d["record_dp_eps4_test_auc"], d["record_dp_job"]
    mean = sum(dp) / len(dp)
    rows.append(
        [f"record-level DP at ε = 4, as the benchmark's job ({job['rounds']} step{'s' if job['rounds'] != 1 else ''})",
         f"{job['learning_rate']:g}", f"{mean:.4f} (min {min(dp):.4f}, {len(dp)} draws)",
         f"{mean - d['pooled_test_auc']:+.4f}"]
    )  # fmt: skip
    return "\n\n".join(
        [
            f"In-process replay of split learning on the {d['rows']:,}-row subsample, the top fitted on half the "
            "held-out rows as a `top_calibration` job's, test AUC on the other half; learning rate chosen per "
            f"number of steps on the validation split. Pooled logistic regression on the same rows: "
            f"**{d['pooled_test_auc']:.4f}**, so the goal at ε = 4 (within 0.01) is {d['goal_eps4']:.4f} "
            f"({d['wall_s']:.0f} s in all).",
            _table(["vertical job", "learning rate", "test AUC", "− pooled"], rows),
        ]
    )


def dp_stacked(d: dict[str, Any]) -> str:
    rows = []
    for k, setting in enumerate(_stacked_settings(d)):
        by_eps = {g["epsilon"]: g["validation_auc"] for g in d["grid"] if g["setting"] == k}
        rows.append(
            [str(setting["local_epochs"]), f"{setting['learning_rate']:g}", f"{setting['clip']:g}",
             f"{setting['batch_size']:,}", *(f"{by_eps[float(e)]:.4f}" for e in _EPS),
             f"{d['mean_validation_auc'][str(k)]:.4f}" + (" (chosen)" if k == d["chosen"]["index"] else "")]
        )  # fmt: skip
    test = [d["test_auc"][f"eps{e}"] for e in _EPS]
    pooled = d["pooled_test_auc"]
    return "\n\n".join(
        [
            f'In-process replay of a stacked vertical job (`vertical_scheme = "stacked"`) on the {d["rows"]:,}-row '
            "subsample: each feature node's logistic regression trained by DP-SGD on the training rows' labels "
            f"(δ = {d['delta']:g}), the label holder's by plain SGD, the top fitted on half the rows and the AUC "
            "counted on the other half; validation AUC by setting (mean of the noise draws; "
            f"{d['wall_s']:.0f} s in all):",
            _table(["epochs", "learning rate", "clip", "batch", *(f"ε = {e}" for e in _EPS), "mean"], rows),
            f"The chosen setting on the test rows, fresh noise: {' / '.join(f'{a:.4f}' for a in test)} at "
            f"ε = 1 / 4 / 8, against pooled logistic regression {pooled:.4f} on the same counted rows "
            f"({' / '.join(f'{a - pooled:+.4f}' for a in test)}).",
        ]
    )


def federated_full_vertical_dp(d: dict[str, Any]) -> str:
    """The vertical record-DP runs on every row of Census-Income (their own results file)."""
    r = d["record_dp"]
    v = r["vertical"]
    head = (
        f"Full data: {r['rows']:,} rows ({r['test_rows']:,} official test rows), 6 agency nodes on a long-lived link, "
        f"the plain vertical job and the record-level DP jobs at δ = {r['vertical_job']['delta']:g} (the largest δ a "
        f"node with {r['rows'] - r['test_rows']:,} aligned training rows "
        f"takes, 1/(10 n) rounded down; 1e-6 is refused there); the split jobs as the subsample's, the stacked jobs "
        f"at their defaults; {r['total_wall_s'] / 60:.0f} min in all. Plain vertical: {v['wall_s']:.1f} s "
        f"({v['to_aligned_s']:.1f} s to aligned), {v['bytes'] / 1e6:.1f} MB."
    )
    parts = [
        head,
        _table(["run", "AUC", "AUC − pooled", "ε (largest node)", "wall s", "bytes exchanged"], _record_dp_rows(r)),
    ]
    same = r["vertical_dp_pooled_same_rows"]
    vdp = [r[f"vertical_dp_eps{e}"]["auc"] for e in _EPS]
    readings = [_calibrated_vertical_reading(r, vdp, same)]
    stacked = [r[k]["auc"] for e in _EPS if (k := f"vertical_stacked_dp_eps{e}") in r]
    if len(stacked) == len(_EPS):
        readings.append(_stacked_vertical_reading(r, stacked, same))
    parts.append("\n".join(readings))
    return "\n\n".join(parts)


def _stacked_settings(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings of the grid, by index, as the sweep recorded them."""
    seen: dict[int, dict[str, Any]] = {}
    for g in d["grid"]:
        seen.setdefault(g["setting"], {k: g[k] for k in ("local_epochs", "learning_rate", "clip", "batch_size")})
    return [seen[k] for k in sorted(seen)]


def holdout_dp(d: dict[str, Any]) -> str:
    r = d["readout"]
    attack = [
        [
            f"ε = {e}",
            f"{r[f'eps{e}']['noise_multiplier']:.2f}",
            f"{r[f'eps{e}']['success']:.3f}",
            f"{r[f'eps{e}']['gaussian_optimum']:.3f}",
            f"{r[f'eps{e}']['bound']:.4f}",
        ]
        for e in _EPS
    ]
    a = d["auc_estimate"]
    rows = [
        [
            b["bins"] if b["bins"] != d["bins_used"] else f"**{b['bins']}** (used)",
            f"{b['coarseness_error']:+.4f}",
            *(f"{b[f'eps{e}']['mean_abs_error']:.4f}" for e in _EPS),
            f"{b['eps1']['mean_error_if_clipped_at_zero']:+.4f}",
        ]
        for b in a["by_bins"]
    ]
    return "\n\n".join(
        [
            "A coordinator's weights put one held-out person alone in the top bin; it knows every other held-out "
            f"count and guesses the label from the noisy bin ({r['trials_per_world']:,} releases per world; "
            f"δ = {d['delta']:g}; without the noise: {r['without_dp_success']:.1f}):",
            _table(["", "noise multiplier", "attack success", "Φ(1/(2z))", "bound e^ε/(1+e^ε)"], attack),
            f"The AUC the coordinator estimates from the four nodes' noisy histograms, against the exact "
            f"{a['exact_auc']:.4f} on {a['rows']:,} held-out rows (mean |error| over {a['draws']} draws), by "
            "bin count; the last column is the bias if negative noisy counts were clipped at zero instead of "
            "summed as they are:",
            _table(["bins", "coarseness alone", *(f"ε = {e}" for e in _EPS), "clipped at zero, ε = 1"], rows),
        ]
    )


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("eligibility", "Encrypted eligibility checks vs plaintext exchange (`bench/eligibility.py`)", eligibility),
    ("masking_leakage", "What a masked value reveals (`bench/masking_leakage.py`)", masking),
    ("privacy", "What a curious requester learns (`bench/privacy.py`)", privacy),
    (
        "sign_comparison",
        "What revealing the sign alone would cost (`bench/sign_comparison.py`)",
        sign_comparison,
    ),
    (
        "sign_binding",
        "What binding a sign-only comparison to the decryption would take (`bench/sign_binding.py`)",
        sign_binding,
    ),
    ("transport_overhead", "mTLS + signed envelopes vs none (`bench/transport_overhead.py`)", transport),
    ("security", "Envelope and gRPC primitives (`bench/security.py`)", security),
    ("policy", "Policy decisions (`bench/policy.py`)", policy),
    ("audit", "Audit log (`bench/audit.py`)", audit),
    ("federated", "Federated training on Census-Income (`bench/federated.py`)", federated),
    ("dp_sweep", "How the record-level DP settings were chosen (`bench/dp_sweep.py`)", dp_sweep),
    ("holdout_dp", "Record-level DP holdout evaluation (`bench/holdout_dp.py`)", holdout_dp),
    (
        "vertical_he_bound",
        "Vertical record-level DP under homomorphic encryption, replayed (`bench/vertical_he_bound.py`)",
        vertical_he_bound,
    ),
    (
        "dp_standardise",
        "Standardise under record-level DP (`bench/dp_sweep.py --standardise`)",
        dp_standardise,
    ),
    (
        "dp_vertical_options",
        "Vertical record-level DP: what the label holder could do with the noisy embeddings "
        "(`bench/dp_sweep.py --vertical-options`)",
        dp_vertical_options,
    ),
    (
        "dp_vertical_ceiling",
        "Vertical split learning before any privacy, by number of steps (`bench/dp_sweep.py --vertical-ceiling`)",
        dp_vertical_ceiling,
    ),
    (
        "federated_full_vertical_dp",
        "Vertical record-level DP on the full data (`bench/federated.py --record-dp --no-horizontal "
        "--out bench/results/federated_full_vertical_dp.json`)",
        federated_full_vertical_dp,
    ),
    (
        "dp_stacked",
        "Vertical stacked parts under record-level DP, by part-training setting (`bench/dp_sweep.py --stacked`)",
        dp_stacked,
    ),
    (
        "vertical_batches",
        "Vertical mini-batches against full batches (`bench/vertical_batches.py`)",
        vertical_batches,
    ),
    (
        "training_startup",
        "Start-up: a training job on a long-lived link (`bench/training_startup.py`)",
        training_startup,
    ),
    ("load", "Under load: 1 to 1,000 concurrent clients (`bench/load.py`)", load),
    (
        "audit_federation",
        "The federation's audit log with two replicas (`bench/audit_federation.py`)",
        audit_federation,
    ),
    ("load.single", "One check on a county office's link (`bench/load.py --single`)", load_single),
    (
        "load.partial",
        "HE in worker processes against HE in the gateway's threads (`bench/load.py --levels 100,1000`)",
        load_partial,
    ),
    (
        "load.pads",
        "One-time pads against fresh node ciphertexts (`bench/load.py --levels 10,100 --compare pads`)",
        load_partial,
    ),
]


def render() -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.report` from `bench/results/*.json` (written by `make bench`). "
        "All runs on the project's 2-core machines, each compared in the same run with its baseline; "
        "absolute times on these shared machines are noisy, the ratios less so.",
    ]
    for name, title, renderer in SECTIONS:
        data = _load(name)
        parts += ["", f"## {title}", ""]
        if data is None:
            parts.append(f"_No results yet: run `python -m bench.{name}`._")
            continue
        try:
            parts.append(renderer(data))
        except (KeyError, TypeError, ValueError) as exc:
            parts.append(
                f"_Results present but not renderable ({type(exc).__name__}: {exc}); see `bench/results/{name}.json`._"
            )
    return "\n".join(parts) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
