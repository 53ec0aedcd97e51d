"""What a curious requester can learn beyond the verdicts, measured with the real mask code.

Writes bench/results/privacy.json:

* exact_reveals_per_million / near_exact_reveals_per_million: 10^6 subjects at and near a
  threshold (d = T - S in -2..2), masked with crypto.masks.derive_masks; a masked value is an exact
  reveal when only one difference is consistent with it given the published mask range (r between
  its lower and upper bound, 0 <= s' < r), near-exact when the consistent differences span at most
  10 units. The previous design (log-uniform r from 1 to 2^32) is measured the same way.
* extra_bits_per_query: mutual information between floor(log2 |d|) and the masked value's
  magnitude at half-bit resolution (as bench/masking_leakage.py), gold (one criterion's value) and
  silver (the largest magnitude among the permuted positions, the attacker's best single feature;
  the data-processing inequality bounds silver by gold).
* silver_failed_criterion_identified_rate: subjects failing exactly one 低保 criterion; a Bayes
  classifier trained on half the samples guesses, from the failing position's magnitude, which
  criterion failed; accuracy on the other half against chance (equal priors: 1/3).
* bronze_single_person_attack_success_rate (and the epsilon it should respect): see
  bronze_single_person; failed_check_budget_spent: evaluations charged after failed checks run
  through the real decision point, budget store and check service (must be 0).

Run: python -m bench.privacy [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from crypto.he import MAX_ABS_DIFFERENCE
from crypto.masks import MIN_MASK_LOG2, derive_masks, mask_bound
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry

RESULTS = Path(__file__).resolve().parent / "results" / "privacy.json"
KEY = bytes(range(32))
NEAR_UNITS = 10


def _pseudonyms(n: int, salt: str) -> list[str]:
    return [f"{salt}{i:020x}"[-26:] for i in range(n)]


def _consistent_width(v: np.ndarray, r_min: int, r_max: int) -> np.ndarray:
    """How many differences besides one are consistent with v when r ranges over [r_min, r_max]."""
    v = v.astype(object)
    pos = v >= 0
    out = np.empty(len(v), dtype=np.int64)
    a = np.abs(v)
    # d >= 0: v = r*d + s, s < r  =>  d = floor(v / r); d < 0: |v| = r*|d| - s  =>  |d| = ceil(|v| / r)
    hi = np.where(pos, a // r_min, -(-a // r_min))
    lo = np.where(pos, a // r_max, -(-a // r_max))
    out[:] = (hi - lo).astype(np.int64)
    return out


def _old_masks(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The design before issue 13: r log-uniform in [1, 2^32), s' uniform in [0, r)."""
    r = np.clip(np.floor(np.exp2(rng.random(n) * 32)), 1, 2**32 - 1).astype(np.int64)
    return r, np.floor(rng.random(n) * r).astype(np.int64)


def exact_reveals(n: int, span: int) -> dict[str, Any]:
    rng = np.random.default_rng(13)
    d = rng.integers(-2, 3, n)
    r, s = derive_masks(KEY, "bench:exact", 1, _pseudonyms(n, "x"), span)
    width = _consistent_width(r * d + s, 2**MIN_MASK_LOG2, mask_bound(span) - 1)
    r_old, s_old = _old_masks(n, rng)
    width_old = _consistent_width(r_old * d + s_old, 1, 2**32 - 1)
    per_million = 1e6 / n
    return {
        "samples": n,
        "differences": "uniform in -2..2 (at and next to the threshold)",
        "span": span,
        "exact_reveals_per_million": round(float((width == 0).sum()) * per_million, 2),
        "near_exact_reveals_per_million": round(float((width <= NEAR_UNITS).sum()) * per_million, 2),
        "previous_design": {
            "exact_reveals_per_million": round(float((width_old == 0).sum()) * per_million, 1),
            "near_exact_reveals_per_million": round(float((width_old <= NEAR_UNITS).sum()) * per_million, 1),
        },
    }


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.zeros((x.max() + 1, y.max() + 1))
    np.add.at(joint, (x, y), 1)
    joint /= len(x)
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


def _bins(v: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(np.abs(v).astype(np.float64) + 1) * 2).astype(int)


def extra_bits(n: int, span: int, flag_span: int, count_span: int) -> dict[str, Any]:
    rng = np.random.default_rng(17)
    log_d = rng.uniform(0, math.log2(span), n)
    d = np.floor(np.exp2(log_d)).astype(np.int64)
    cls = np.floor(log_d).astype(int)
    r, s = derive_masks(KEY, "bench:bits", 1, _pseudonyms(n, "b"), span)
    gold = _mutual_information(cls, _bins(r * d + s))
    # silver (dibao): income position plus two register/count positions that pass (d = 0)
    _, s2 = derive_masks(KEY, "bench:bits-flag", 1, _pseudonyms(n, "f"), flag_span)
    _, s3 = derive_masks(KEY, "bench:bits-count", 1, _pseudonyms(n, "c"), count_span)
    largest = np.maximum.reduce([_bins(r * d + s), _bins(s2), _bins(s3)])
    silver = _mutual_information(cls, largest)
    return {
        "samples": n,
        "prior": f"log2|d| uniform over [0, log2 {span}]",
        "prior_entropy_bits": round(math.log2(math.ceil(math.log2(span))), 2),
        "gold": round(gold, 3),
        "silver_largest_magnitude": round(silver, 3),
        "silver_upper_bound": round(gold, 3),
    }


def silver_identification(n: int, spans: dict[str, int]) -> dict[str, Any]:
    """Which of the 低保 criteria failed, guessed from the failing position's |v|."""
    rng = np.random.default_rng(19)
    per = n // 3
    # failing differences: income above 1,100 CNY by a log-uniform 1..2^15 CNY; not alive/resident
    # (d = -1); 1..3 registered businesses (most failing subjects have one)
    diffs = {
        "income_within_threshold": -np.floor(np.exp2(rng.uniform(0, 15, per))).astype(np.int64),
        "alive_and_resident": -np.ones(per, dtype=np.int64),
        "no_registered_business": -rng.choice([1, 1, 1, 2, 3], per).astype(np.int64),
    }
    features, labels = [], []
    for label, (name, d) in enumerate(diffs.items()):
        r, s = derive_masks(KEY, f"bench:silver:{name}", 1, _pseudonyms(per, f"s{label}"), spans[name])
        features.append(_bins(r * d + s))
        labels.append(np.full(per, label))
    x, y = np.concatenate(features), np.concatenate(labels)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    half = len(x) // 2
    counts = np.zeros((3, x.max() + 1))
    np.add.at(counts, (y[:half], x[:half]), 1)
    guess = counts.argmax(axis=0)[x[half:]]
    accuracy = float((guess == y[half:]).mean())
    sure = (counts > 0).sum(axis=0) == 1
    return {
        "samples": 3 * per,
        "population": "equal thirds failing income (by 1..2^15 CNY, log-uniform), residence, business (1-3)",
        "silver_failed_criterion_identified_rate": round(accuracy, 4),
        "chance_rate": round(1 / 3, 4),
        "identified_with_certainty_rate": round(float(sure[x[half:]].mean()), 4),
    }


class _FailingNodes:
    """A fan-out port that fails the way real ones do: node down, late, refusing."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    async def encrypt_all(self, requests: Any, deadline_s: float) -> dict[str, Any]:
        raise self.failure


def failed_check_budget(attempts: int) -> dict[str, Any]:
    """Real decision point, SQLite budget and check service; every check fails at the fan-out."""
    import asyncio
    import contextlib
    import tempfile
    from datetime import UTC, datetime, timedelta

    from exchange.service import CheckService
    from exchange.types import CheckRequest
    from policies.budgets import ProbeBudget
    from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
    from policies.types import BudgetRule
    from xgate.errors import NodeError, NodeRefused, NodeTimeout, NodeUnavailable
    from xgate.principal import Principal

    daytime = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 11:00 in Asia/Shanghai, inside the agreements' hours
    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    programs = ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0])
    gold = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
    subjects = tuple(_pseudonyms(6, "f"))
    approvals, approval_ref = _bench_approval(daytime)
    request = CheckRequest(
        "dibao", "dibao", "SAR-2014-art-12", "C-1", subjects, mode="plaintext", approval_ref=approval_ref
    )
    failures = [
        NodeUnavailable("hrss", "unreachable"),
        NodeTimeout("household", "late"),
        NodeRefused("tax", "refused"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        budgets = ProbeBudget(Path(tmp) / "b.db")
        for i in range(attempts):
            service = CheckService(
                programs=programs,
                nodes=_FailingNodes(failures[i % len(failures)]),
                mask_key=KEY,
                policy=CheckAuthorizer(engine, budgets=budgets, approvals=approvals, clock=lambda: daytime),
                allow_plaintext_mode=True,
                clock=lambda: daytime.timestamp(),
            )
            with contextlib.suppress(NodeError):
                asyncio.run(service.run(gold, request))
        rule = BudgetRule(max_checks=3, window_days=30, policy_id="")
        spent = sum(budgets.used(s, "dibao", "civil_affairs", rule, daytime + timedelta(seconds=1)) for s in subjects)
    return {"failed_checks": attempts, "subjects": len(subjects), "evaluations_charged": spent}


def _bench_approval(now: Any) -> tuple[Any, str]:
    """An approval registry (in a temporary file) holding one signed approval for dibao case C-1."""
    import base64
    import tempfile
    from datetime import timedelta

    from crypto.artefacts import Signer, sign_artefact
    from crypto.envelope import SigningKey
    from policies.approvals import APPROVAL_FORMAT, ApprovalRegistry, Approver, new_ref

    key = SigningKey.generate("ap-bench", "approver")
    signer = Signer.of("ap-bench", base64.b64encode(key.public_raw).decode())
    registry = ApprovalRegistry(
        Path(tempfile.mkdtemp(prefix="xgate-bench-")) / "approvals.db",
        approvers={key.key_id: Approver(signer, ("civil_affairs",))},
    )
    ref = new_ref()
    body = {
        "ref": ref, "approver": "ap-bench", "approver_role": "case_supervisor", "agencies": ["civil_affairs"],
        "programs": ["dibao"], "case_ids": ["C-1"], "max_subjects": 1_000_000,
        "valid_from": (now - timedelta(days=1)).isoformat(), "valid_until": (now + timedelta(days=30)).isoformat(),
    }  # fmt: skip
    registry.register_signed(sign_artefact(body, key, fmt=APPROVAL_FORMAT))
    return registry, ref


def _register_node(people: int, civil_register: bool, seed: int, tmp: Path) -> tuple[Any, list[str], dict[str, int]]:
    """A real household-register node (NodeService over a NodeStore) holding `people` registered people."""
    from nodes.service import NodeService
    from nodes.store import NodeStore
    from policies.catalogue import DataElement

    rng = np.random.default_rng(seed)
    registered = [_random_pseudonym(rng) for _ in range(people)]
    alive = {p: int(rng.random() < 0.9) for p in registered}
    element = DataElement(
        id="household.alive_resident", agency="household", type="flag", unit="flag", min=0, max=1,
        classification="important",
    )  # fmt: skip
    store = NodeStore.open(tmp / f"register-{civil_register}.sqlite")
    rows = [(element.id, p, v) for p, v in alive.items()]
    store.replace_dataset("household_register", "0" * 64, [(element, False)], rows, "2026-03-01T00:00:00+00:00")
    node = NodeService(agency="household", store=store, allow_plaintext_mode=True, civil_register=civil_register)
    return node, registered, alive


def _bronze_request(subjects: list[str], request_id: str) -> Any:
    from protos.xgate.v1 import node_pb2

    context = node_pb2.RequestContext(
        request_id=request_id, requester_agency="civil_affairs", requester_user="cw-wang",
        requester_role="caseworker", requester_tier="bronze", purpose="target_discovery",
        legal_basis="SAR-2014-art-12", case_id="C-1", program_id="target_discovery",
    )  # fmt: skip
    return node_pb2.EncryptRequest(
        context=context,
        mode=node_pb2.EXCHANGE_MODE_PLAINTEXT,
        pseudonyms=subjects,
        elements=[node_pb2.ElementQuery(element="household.alive_resident", if_missing=0)],
    )


def fake_member_attack(trials: int, civil_register: bool, seed: int = 23) -> dict[str, Any]:
    """The fake-member attack against a real register node: the victim plus 9 made-up people.

    Made-up pseudonyms (never registered) get the if_missing default (0 = not alive/resident), so
    every fake slot is predictable and the victim's slot is the odd one out. Success: the answer
    names the victim's value (the attacker reads the one non-default slot, or, all slots alike,
    the default). A refused cohort yields nothing, so it counts as failure. The attacker's
    no-answer baseline (guessing the majority value) is reported beside it.
    """
    import tempfile

    from xgate.errors import PolicyDenied

    rng = np.random.default_rng(seed)
    answered = success = 0
    with tempfile.TemporaryDirectory() as tmp:
        node, registered, alive = _register_node(200, civil_register, seed + 1_000, Path(tmp))  # its own stream
        for t in range(trials):
            victim = registered[int(rng.integers(len(registered)))]
            fakes = [_random_pseudonym(rng) for _ in range(9)]
            cohort = [*fakes, victim]
            rng.shuffle(cohort)
            try:
                response = node.encrypt_values(_bronze_request(cohort, f"fake-{t}"))
            except PolicyDenied:
                continue
            answered += 1
            slots = list(response.elements[0].plain_values)
            odd = [v for v in slots if v != 0]
            guess = odd[0] if odd else 0
            success += guess == alive[victim]
        node.store.close()
    prior = max(np.mean(list(alive.values())), 1 - np.mean(list(alive.values())))
    return {
        "trials": trials,
        "answered": answered,
        "success_rate": round(success / trials, 4),
        "majority_guess_baseline": round(float(prior), 4),
    }


def differencing_attack(trials: int, seed: int = 29) -> dict[str, Any]:
    """Two cohorts of registered people differing in the victim: the counts' difference is the
    victim's value (no noise on cohort counts). Run against a real register node."""
    import tempfile

    rng = np.random.default_rng(seed)
    success = 0
    with tempfile.TemporaryDirectory() as tmp:
        node, registered, alive = _register_node(200, True, seed + 1_000, Path(tmp))
        for t in range(trials):
            picks = rng.choice(len(registered), 11, replace=False)
            victim, others = registered[int(picks[0])], [registered[int(i)] for i in picks[1:]]
            with_victim = node.encrypt_values(_bronze_request([*others[:9], victim], f"diff-a-{t}"))
            without = node.encrypt_values(_bronze_request(others[:10], f"diff-b-{t}"))
            # the attacker knows the tenth other person's value (e.g. asked about them at gold)
            diff = sum(with_victim.elements[0].plain_values) - sum(without.elements[0].plain_values)
            success += (diff + alive[others[9]]) == alive[victim]
        node.store.close()
    return {"trials": trials, "success_rate": round(success / trials, 4)}


def _random_pseudonym(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(alphabet[int(i)] for i in rng.integers(0, 32, 26))


def bronze_single_person(trials: int) -> dict[str, Any]:
    """The bronze tier against one person, measured on a real register node (nodes/service.py).

    fake-member: refused since cohort members must be registered people (`civil_register`);
    the positive control runs the same attack against a node that does not check membership.
    two-cohort differencing: still succeeds (exact counts, no noise: issue 13 item 3's DP part is open).
    """
    protected = fake_member_attack(trials, civil_register=True)
    unprotected = fake_member_attack(trials, civil_register=False)
    differencing = differencing_attack(max(trials // 10, 50))
    return {
        "trials": trials,
        "cohort": "victim + 9 made-up pseudonyms, against a register node",
        "bronze_single_person_attack_success_rate": protected["success_rate"],
        "fake_member": protected,
        "fake_member_without_member_check": unprotected,
        "two_cohort_differencing_attack_success_rate": differencing["success_rate"],
        "differencing": differencing,
        "epsilon": None,
        "note": (
            "fake members are refused by the register node at bronze; no calibrated noise on cohort counts "
            "(counts are decrypted by the requester itself, so no party can add noise after the fact; "
            "see docs/PROTOCOL.md), so two cohorts differing in one person still reveal that person"
        ),
    }


def flooding_cost(repeats: int) -> dict[str, Any]:
    """The gateway's combine step for one 低保 check with and without noise flooding, interleaved."""
    import statistics
    import time

    from crypto.he import PublicContext, RequesterKeys
    from exchange.eligibility import combine_he

    dibao = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
    context = PublicContext(RequesterKeys.generate().public_context)
    out: dict[str, Any] = {"repeats": repeats}
    for n in (1, 4096):
        ps = _pseudonyms(n, "t")
        cts = {t.element: [context.load(context.encrypt([0] * n), n)] for t in dibao.elements()}
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for flood in (False, True):
                t0 = time.perf_counter()
                combine_he(dibao, ps, context, cts, KEY, 1, flood=flood)
                times[flood].append((time.perf_counter() - t0) * 1000)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        out[f"applicants_{n}"] = {
            "combine_ms_without_flooding": round(off, 1),
            "combine_ms_with_flooding": round(on, 1),
            "flooding_ms": round(on - off, 1),
        }
    return out


def run(quick: bool) -> dict[str, Any]:
    catalogue = load_catalogue()[0]
    dibao = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, catalogue).get("dibao")
    spans = {c.id: dibao.span(i) for i, c in enumerate(dibao.criteria)}
    income = spans["income_within_threshold"]
    n = 100_000 if quick else 1_000_000
    exact = exact_reveals(n, income)
    bits_full = extra_bits(n, MAX_ABS_DIFFERENCE, 1, spans["no_registered_business"])
    bits_dibao = extra_bits(n, income, 1, spans["no_registered_business"])
    silver = silver_identification(n // 2, spans)
    budget = failed_check_budget(9 if quick else 30)
    bronze = bronze_single_person(1000 if quick else 10_000)
    flooding = flooding_cost(3 if quick else 15)
    return {
        "benchmark": "privacy",
        "quick": quick,
        "exact_reveals_per_million": exact["exact_reveals_per_million"],
        "near_exact_reveals_per_million": exact["near_exact_reveals_per_million"],
        "exact": exact,
        "extra_bits_per_query": {"gold": bits_full["gold"], "silver": bits_full["silver_largest_magnitude"]},
        "extra_bits": {"full_admissible_range": bits_full, "dibao_income": bits_dibao},
        "silver_failed_criterion_identified_rate": silver["silver_failed_criterion_identified_rate"],
        "silver": silver,
        "bronze_single_person_attack_success_rate": bronze["bronze_single_person_attack_success_rate"],
        "bronze_epsilon": bronze["epsilon"],
        "two_cohort_differencing_attack_success_rate": bronze["two_cohort_differencing_attack_success_rate"],
        "bronze": bronze,
        "failed_check_budget_spent": budget["evaluations_charged"],
        "failed_checks": budget,
        "noise_flooding_cost": flooding,
        "goals": {
            "exact_reveals_per_million": 0,
            "extra_bits_per_query": 0.1,
            "silver": "chance",
            "failed_check_budget_spent": 0,
            "bronze_single_person_attack_success_rate": "within what epsilon allows",
            "two_cohort_differencing_attack_success_rate": "within what epsilon allows",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
