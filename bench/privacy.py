"""What a curious requester can learn beyond the verdicts, measured with the real mask code.

Writes bench/results/privacy.json:

* exact_reveals_per_million / near_exact_reveals_per_million: 10^6 subjects at and near a
  threshold (d = T - S in -2..2), masked with crypto.masks.derive_masks; a masked value is an exact
  reveal when only one difference is consistent with it given the published mask range (r between
  its lower and upper bound, 0 <= s' < r), near-exact when the consistent differences span at most
  10 units. The previous design (log-uniform r from 1 to 2^32) is measured the same way.
* extra_bits_per_query: mutual information between floor(log2 |d|) and the masked value's
  magnitude at half-bit resolution (as bench/masking_leakage.py), gold (one criterion's value: the
  largest over the shipped programs' criteria, each over its clamped span, policies/programs.py)
  and silver (the largest magnitude among the permuted positions, the attacker's best single
  feature, with the overall view's shaped masks for the passing single terms). `extra_bits` also keeps a
  criterion that cannot be clamped and whose span reaches the masking bound (the linear mask's floor).
* silver_failed_criterion_identified_rate: the synthetic federation's people failing exactly one
  低保 criterion, clamped and masked by the gateway's own code (exchange.eligibility
  criterion_masks, the overall view); gradient-boosted trees trained on half guess which criterion
  failed, scored on the other half against chance (1/3) (balanced accuracy: per criterion, then
  averaged), from the failing position's magnitude and from every position's sign and magnitude;
  the headline is the larger. The same for plain masks and for the design before them.
* bronze_single_person_attack_success_rate (the two-cohort differencing attack against the cohort
  view's randomized response, or the fake-member attack if higher), with bronze_epsilon_per_query
  and the bound e^eps/(1+e^eps) per criterion it must respect (bronze_single_person_bound), and
  bronze_magnitude_aware_attack_success_rate (the same guess with |v|, given the victim's slot):
  see bronze_single_person; failed_check_budget_spent: evaluations charged after failed checks run
  through the real decision point, budget store and check service (must be 0).

Run: python -m bench.privacy [--quick] [--only-bronze | --only-silver]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from crypto.he import MAX_ABS_DIFFERENCE
from crypto.masks import MIN_MASK_LOG2, derive_masks, derive_sign_masks, mask_bound
from crypto.value_tags import tag_table
from exchange.eligibility import criterion_masks
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, NO_CLAMP, Program, ProgramRegistry
from policies.types import DEFAULT_COHORT_EPSILON

RESULTS = Path(__file__).resolve().parent / "results" / "privacy.json"
KEY = bytes(range(32))
TAG_KEY = bytes(range(32, 64))  # a node's value-tag key
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


def extra_bits(
    n: int, span: int, flag_span: int, count_span: int, look: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """Gold: what |v| tells of floor(log2|d|) for one criterion. Silver: the same through the
    largest of the permuted positions' magnitudes, the two others passing single terms (d = 0),
    masked as plain (r, s') or, with `look`, shaped like the sum (crypto.masks.derive_sign_masks)."""
    rng = np.random.default_rng(17)
    log_d = rng.uniform(0, math.log2(span), n)
    d = np.floor(np.exp2(log_d)).astype(np.int64)
    cls = np.floor(log_d).astype(int)
    r, s = derive_masks(KEY, "bench:bits", 1, _pseudonyms(n, "b"), span)
    gold = _mutual_information(cls, _bins(r * d + s))
    if look is None:
        _, s2 = derive_masks(KEY, "bench:bits-flag", 1, _pseudonyms(n, "f"), flag_span)
        _, s3 = derive_masks(KEY, "bench:bits-count", 1, _pseudonyms(n, "c"), count_span)
    else:
        _, s2 = derive_sign_masks(KEY, "bench:bits-flag", 1, _pseudonyms(n, "f"), *look)
        _, s3 = derive_sign_masks(KEY, "bench:bits-count", 1, _pseudonyms(n, "c"), *look)
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


def shipped_criteria_bits(n: int) -> dict[str, Any]:
    """Gold extra bits of every shipped criterion whose catalogue span leaves more than the sign,
    once per question, over its clamped span (a single term's is 1: d in {-1, 0}) and before."""
    registry = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0])
    out: dict[str, Any] = {}
    for program in registry.all():
        for index, criterion in enumerate(program.criteria):
            span = program.clamped_span(index)
            if program.span(index) > 1 and criterion.question not in {v["question"] for v in out.values()}:
                # a clamped span of 1 leaves d in {-1, 0}: no magnitude to measure beyond the sign
                bits = extra_bits(n, span, 1, 1) if span > 1 else {"gold": 0.0}
                out[f"{program.id}.{criterion.id}"] = {
                    "question": criterion.question,
                    "catalogue_span": program.span(index),
                    "clamped_span": span,
                    "gold": bits["gold"],
                    "gold_before_clamping": extra_bits(n, program.span(index), 1, 1)["gold"],
                }
    return out


def silver_identification_population(people: int) -> dict[str, Any]:
    """The overall (silver) view of 低保 over the synthetic federation's people (app/synth.py), for
    those failing exactly one criterion: each criterion's d from the real values as the nodes
    clamp them, masked by the gateway's own `criterion_masks` (the overall view), positions
    shuffled. Two attackers (gradient-boosted trees, balanced classes): one sees the failing
    position's magnitude, one every position's sign and magnitude. Measured the same way: the
    sign-only criteria masked as plain (r, s') (no `overall_look`), and the design before it (whole
    sums in the overall view, plain masks)."""
    from app.synth import generate

    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
    population = generate(people, 20261206)
    clamped = silver_attack(program, population, KEY)
    plain = dataclasses.replace(program, sign_only=())
    sign_only = {c.terms[0].element for c, alone in zip(program.criteria, program.sign_only, strict=True) if alone}
    sign_only_clamps = tuple((e, c) for e, c in program.clamps if e in sign_only)
    before = dataclasses.replace(
        program,
        sign_only=(),
        clamps=sign_only_clamps,
        clamped_spans=tuple(1 if program.sign_only[i] else program.span(i) for i in range(len(program.criteria))),
    )
    return {
        "people": people,
        "balanced_accuracy": clamped,
        "silver_failed_criterion_identified_rate": max(clamped["failing_position"], clamped["every_position"]),
        "chance_rate": round(1 / len(program.criteria), 4),
        "sign_only_criteria_masked_plainly": silver_attack(plain, population, KEY),
        # fresh masks each epoch, the same data: evidence accumulates (a year of 30-day epochs)
        "over_epochs": {str(e): silver_attack(program, population, KEY, epochs=e) for e in (3, 12)},
        "before_whole_sums_and_plain_masks": silver_attack(before, population, KEY),
    }


def silver_attack(program: Program, population: Any, key: bytes, epochs: int = 1) -> dict[str, Any]:
    """Balanced accuracy of naming the failing criterion among people failing exactly one, from
    the overall view's masked values (program's clamps and masks), half to train, half to score.
    With `epochs` > 1 the attacker holds one result per epoch for each person (fresh masks and
    order each epoch, the same data) and reads them all."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clamps = program.element_clamps()
    people = len(next(iter(population.present.values())))
    d = []
    encoded: dict[str, np.ndarray] = {}  # each element as its node encrypts it (default, clamp)
    for criterion in program.criteria:
        total = np.zeros(people, dtype=np.int64)
        for term in criterion.terms:
            agency, column = term.element.split(".")
            values = np.where(population.present[agency], population.columns[agency][column], term.if_missing)
            encoded[term.element] = clamps.get(term.element, NO_CLAMP).apply_all(values.astype(np.int64))
            total += encoded[term.element]
        d.append(criterion.direction * (total - criterion.bound))
    failing = np.stack([x < 0 for x in d])
    rows = np.flatnonzero(failing.sum(axis=0) == 1)
    truth = failing[:, rows].argmax(axis=0)
    failing_bins, every = [], []
    pseudonyms = _pseudonyms(len(rows), "p")
    for epoch in range(1, epochs + 1):
        # The nodes' value tags for this epoch, over the same data (crypto/value_tags.py).
        tags = tag_table(TAG_KEY, epoch, {e: v[rows].tolist() for e, v in encoded.items()}, pseudonyms)
        masks = criterion_masks(program, key, epoch, pseudonyms, hide_order=True, tags=tags)
        masked = [
            r.astype(object) * x[rows].astype(object) + s.astype(object) for (r, s), x in zip(masks, d, strict=True)
        ]
        v = np.array(masked, dtype=object).T.astype(np.float64)
        bins = np.floor(np.log2(np.abs(v) + 1) * 2)
        negative = v < 0
        failing_bin = np.where(negative, bins, -1).max(axis=1)
        passing_bins = np.sort(np.where(negative, np.inf, bins), axis=1)[:, :2]
        failing_bins.append(failing_bin)
        every.append(np.column_stack([failing_bin, passing_bins]))
    half = len(rows) // 2
    scores: dict[str, Any] = {"subjects_failing_one": len(rows)}
    for name, x in (
        ("failing_position", np.column_stack(failing_bins)),
        ("every_position", np.hstack(every)),
    ):
        model = HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=0)
        guess = model.fit(x[:half], truth[:half]).predict(x[half:])
        tested = truth[half:]
        scores[name] = round(float(np.mean([(guess[tested == c] == c).mean() for c in range(len(d))])), 4)
    return scores


class _FailingNodes:
    """A fan-out port that fails the way real ones do: node down, late, refusing."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    async def encrypt_all(self, requests: Any, deadline_s: float, public_context: bytes = b"") -> dict[str, Any]:
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
        approvers={key.key_id: Approver(signer, ("civil_affairs",), ("case_supervisor",))},
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
    """Two cohorts of registered people differing in the victim, read at the register node: the
    counts' difference is the victim's value. This is what the nodes hand the gateway (exact
    values); the cohort view's randomized response at the gateway is what stops it
    (`differencing_attack_rr`)."""
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


# --- the cohort view's randomized response, with the gateway's own pure functions -----------------


def income_population(
    n: int = 20_000, seed: int = 20261123, ceiling: int | None = None
) -> tuple[Any, np.ndarray, np.ndarray]:
    """target_discovery's income criterion over the synthetic federation's people (app/synth.py):
    the program, each person's income sum as the cohort view's nodes encode it (each term clamped
    at the criterion's mirror ceiling, 2T + 1), and the whole sum (tax + pension + benefits, 0
    where no record), which decides the verdict.

    `ceiling`: each term clamped there instead (0: not at all), for designs measured and not built."""
    from app.synth import generate

    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("target_discovery")
    criterion = program.criteria[0]
    clamps = dict(program.cohort_clamps)
    population = generate(n, seed)
    encoded = np.zeros(n, dtype=np.int64)
    whole = np.zeros(n, dtype=np.int64)
    for term in criterion.terms:
        agency, column = term.element.split(".")
        values = np.where(population.present[agency], population.columns[agency][column], term.if_missing)
        values = values.astype(np.int64)
        whole += values
        if ceiling is None:
            encoded += clamps.get(term.element, NO_CLAMP).apply_all(values)
        else:
            encoded += np.minimum(values, ceiling) if ceiling else values
    return program, encoded, whole


def masked_slots(
    program: Any,
    index: int,
    sums: np.ndarray,
    epsilon: float | None,
    rng: np.random.Generator,
    salt: str,
    span: int | None = None,
) -> np.ndarray:
    """What the requester decrypts for one criterion of one cohort query: v per slot, computed with
    the gateway's own functions (crypto.masks.derive_masks with a fresh epoch, exchange.cohort
    flip_masks with flips drawn at p = 1/(1+e^eps)) in exact integers, as BFV computes them (no
    wrap-around: |v| < t/2). `epsilon=None`: no randomized response (the design before it)."""
    from exchange.cohort import flip_masks, flip_probability

    criterion = program.criteria[index]
    n = len(sums)
    span = span or program.cohort_span(index)
    r, s = derive_masks(KEY, criterion.question, int(rng.integers(1 << 62)), _pseudonyms(n, salt), span)
    flips = rng.random(n) < flip_probability(epsilon) if epsilon is not None else np.zeros(n, dtype=bool)
    weight, offset = flip_masks(criterion.direction, criterion.bound, r, s, flips)
    return np.asarray(weight.astype(object) * sums.astype(object) + offset, dtype=object)


def differencing_attack_rr(trials: int, epsilon: float | None, cohort: int = 10, seed: int = 31) -> dict[str, Any]:
    """Two cohorts of registered people differing in the victim (S and S + victim, |S| = cohort),
    against the cohort view's randomized response. The attacker knows every verdict in S, sees
    both noisy counts, and guesses the victim's verdict by exact likelihood (the noisy count of
    S + victim given c_S + 1 passes against c_S; the count of S alone is independent noise). The
    victim passes or fails with probability 1/2 (the prior DP's bound assumes)."""
    from exchange.cohort import attack_bound, flip_probability, noisy_count_pmf

    program, sums, whole = income_population()  # sums as the cohort view's nodes encode them
    criterion = program.criteria[0]
    passes = (whole <= criterion.bound) if criterion.direction < 0 else (whole >= criterion.bound)
    groups = [np.flatnonzero(~passes), np.flatnonzero(passes)]
    rng = np.random.default_rng(seed)
    p = flip_probability(epsilon) if epsilon is not None else 0.0
    success = 0
    for t in range(trials):
        truth = int(rng.integers(2))
        victim = int(rng.choice(groups[truth]))
        drawn = rng.choice(len(sums), cohort + 1, replace=False)
        others = [int(i) for i in drawn if i != victim][:cohort]
        c_s = int(passes[others].sum())
        with_victim = masked_slots(program, 0, sums[[*others, victim]], epsilon, rng, f"a{t}")
        _ = masked_slots(program, 0, sums[others], epsilon, rng, f"b{t}")  # asked too; independent noise
        observed = int(sum(1 for v in with_victim if v >= 0))
        if p == 0.0:
            guess = observed - c_s
        else:
            like_fail = noisy_count_pmf(c_s, cohort + 1, p)[observed]
            like_pass = noisy_count_pmf(c_s + 1, cohort + 1, p)[observed]
            guess = int(like_pass > like_fail) if like_pass != like_fail else int(rng.integers(2))
        success += guess == truth
    rate = success / trials
    bound = attack_bound(epsilon) if epsilon is not None else 1.0
    return {
        "trials": trials,
        "epsilon_per_criterion": epsilon,
        "cohort": f"{cohort} registered people, and the same plus the victim",
        "success_rate": round(rate, 4),
        "bound": round(bound, 4),
        "margin_3_sigma": round(3 * math.sqrt(bound * (1 - bound) / trials), 4),
    }


def magnitude_attack(
    samples: int,
    epsilon: float,
    seed: int = 37,
    bits: float = 0.5,
    ceiling: int | None = None,
    failing_sum: int | None = None,
    failing_terms: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """A magnitude-aware attacker against the randomized response, given far more than it has: the
    victim's slot itself (a real attacker cannot tell it apart among shuffled slots). It sees the
    slot's noisy sign and |v| (log2 bins of `bits`) and guesses the verdict with a Bayes classifier
    trained on half the samples (victims drawn half passing, half failing, from the synthetic
    population's income sums), tested on the other half. A count-only attacker is bounded by
    e^eps/(1+e^eps); |v| = r*|d| (+1) carries the order of magnitude of |d|, and failing incomes
    are far larger than passing ones, so this can do better.

    `failing_sum`: one person's two worlds instead of the population's: failing with this income
    sum (carried by one term), or passing with a passing person's sum (what ε per person must
    bound whatever the sum). `failing_terms`: the failing sum carried by several terms instead,
    each clamped at the mirror ceiling (a sum of k clamped terms fails by up to k(2T + 1) - T).
    `ceiling`: the terms clamped there instead of at the mirror ceiling (0: whole sums, the design
    before), the masks fitted to what that leaves."""
    from exchange.cohort import attack_bound

    program, encoded, whole = income_population(ceiling=ceiling)
    criterion = program.criteria[0]
    passes = (whole <= criterion.bound) if criterion.direction < 0 else (whole >= criterion.bound)
    if failing_terms is not None:
        encoded = np.append(encoded, sum(min(x, criterion.mirror_ceiling) for x in failing_terms))
        failing = np.array([len(encoded) - 1])
    elif failing_sum is not None:
        top = criterion.mirror_ceiling if ceiling is None else (ceiling or failing_sum)
        encoded = np.append(encoded, min(failing_sum, top))
        failing = np.array([len(encoded) - 1])
    else:
        failing = np.flatnonzero(~passes)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, samples)
    pick = np.where(truth == 1, rng.choice(np.flatnonzero(passes), samples), rng.choice(failing, samples))
    terms = len(criterion.terms)
    span = None if ceiling is None else (terms * ceiling - criterion.bound if ceiling else program.span(0))
    v = masked_slots(program, 0, encoded[pick], epsilon, rng, "m", span)
    sign = np.array([x >= 0 for x in v], dtype=int)
    magnitude = np.floor(np.log2(np.array([abs(int(x)) + 1 for x in v], dtype=np.float64)) / bits).astype(int)
    feature = magnitude * 2 + sign
    half = samples // 2
    counts = np.zeros((2, feature.max() + 1))
    np.add.at(counts, (truth[:half], feature[:half]), 1)
    guess = counts.argmax(axis=0)[feature[half:]]
    sign_only = sign[half:]  # the count-only attacker's best: believe the noisy sign
    bound = attack_bound(epsilon)
    tested = samples - half
    return {
        "samples": samples,
        "epsilon_per_criterion": epsilon,
        "victim_slot_known": True,
        "magnitude_aware_success_rate": round(float((guess == truth[half:]).mean()), 4),
        "sign_only_success_rate": round(float((sign_only == truth[half:]).mean()), 4),
        "bound": round(bound, 4),
        "margin_3_sigma": round(3 * math.sqrt(bound * (1 - bound) / tested), 4),
    }


def slot_linkage(trials: int, cohort: int = 10) -> dict[str, Any]:
    """How often slot j of one criterion and slot j of another hold the same person, with the orders
    the check service draws (exchange/service.py _CohortPlan, the OS CSPRNG); chance is 1/cohort."""
    from exchange.service import SystemRandomness, _CohortPlan
    from exchange.types import CheckRequest
    from policies.types import PolicyOutcome

    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("target_discovery")
    request = CheckRequest("target_discovery", "target_discovery", "x", "c", tuple(_pseudonyms(cohort, "l")))
    same = pairs = 0
    for _ in range(trials):
        plan = _CohortPlan.draw(program, request, PolicyOutcome("cohort"), SystemRandomness())
        for a in range(len(plan.secrets.orders)):
            for b in range(a + 1, len(plan.secrets.orders)):
                same += sum(x == y for x, y in zip(plan.secrets.orders[a], plan.secrets.orders[b], strict=True))
                pairs += cohort
    rate = same / pairs
    return {
        "trials": trials,
        "cohort": cohort,
        "same_person_rate": round(rate, 4),
        "chance_rate": round(1 / cohort, 4),
        "margin_3_sigma": round(3 * math.sqrt((1 / cohort) * (1 - 1 / cohort) / pairs), 4),
    }


def _random_pseudonym(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(alphabet[int(i)] for i in rng.integers(0, 32, 26))


def bronze_single_person(trials: int, epsilon: float = DEFAULT_COHORT_EPSILON) -> dict[str, Any]:
    """The bronze tier against one person.

    fake-member: refused since cohort members must be registered people (`civil_register`), on a
    real register node; the positive control runs the same attack against a node that does not
    check membership. two-cohort differencing: bounded by the cohort view's randomized response
    (eps per criterion and query); the raw node counts (no randomized response) are the positive
    control. Magnitude-aware: the same guess with |v| too, given the victim's slot.
    """
    from exchange.cohort import attack_bound

    protected = fake_member_attack(trials, civil_register=True)
    unprotected = fake_member_attack(trials, civil_register=False)
    randomized = differencing_attack_rr(max(trials // 2, 500), epsilon)
    exact = differencing_attack_rr(max(trials // 20, 100), None)
    magnitude = magnitude_attack(max(trials * 20, 20_000), epsilon)
    whole = magnitude_attack(max(trials * 20, 20_000), epsilon, ceiling=0)
    clipped = magnitude_attack(max(trials * 20, 20_000), epsilon, ceiling=1_101)
    by_epsilon = {f"{eps:g}": magnitude_attack(max(trials * 20, 20_000), eps, seed=47) for eps in (0.5, 1.0, 2.0, 3.0)}
    by_sum = {
        str(total): magnitude_attack(max(trials * 12, 12_000), epsilon, seed=53, failing_sum=total)
        for total in (1_101, 2_000, 20_000, 100_000, 2**20, 2**24 - 1)
    }
    # A sum failing through several terms (review of 2026-12-06): each term is clamped at the
    # mirror ceiling, so the sum's failing distance reaches past what a passing one can.
    by_terms = {
        "+".join(str(x) for x in terms): magnitude_attack(
            max(trials * 12, 12_000), epsilon, seed=53, failing_terms=terms
        )
        for terms in ((1_500, 1_500), (2_500, 2_500), (1_400, 1_400, 1_400), (3_000, 3_000, 3_000))
    }
    return {
        "trials": trials,
        "bronze_epsilon_per_criterion": epsilon,
        "bronze_single_person_attack_success_rate": max(randomized["success_rate"], protected["success_rate"]),
        "bound": round(attack_bound(epsilon), 4),
        "fake_member": protected,
        "fake_member_without_member_check": unprotected,
        "two_cohort_differencing": randomized,
        "two_cohort_differencing_without_randomized_response": exact,
        "two_cohort_differencing_node_counts": differencing_attack(max(trials // 10, 50)),
        "magnitude_aware": magnitude,
        "magnitude_aware_by_epsilon": {
            eps: {k: m[k] for k in ("magnitude_aware_success_rate", "sign_only_success_rate", "bound")}
            for eps, m in by_epsilon.items()
        },
        "magnitude_aware_by_failing_sum": {
            total: {k: m[k] for k in ("magnitude_aware_success_rate", "sign_only_success_rate", "bound")}
            for total, m in by_sum.items()
        },
        "magnitude_aware_by_failing_terms": {
            terms: {
                k: m[k] for k in ("magnitude_aware_success_rate", "sign_only_success_rate", "bound", "margin_3_sigma")
            }
            for terms, m in by_terms.items()
        },
        "magnitude_aware_with_whole_sums": {
            **whole,
            "note": "the design before: the income terms not clamped, the masks fitted to the catalogue span",
        },
        "magnitude_aware_if_terms_were_clipped_at_the_threshold": {
            **clipped,
            "note": "not built: terms clipped at threshold + 1 (the per-criterion view's ceiling); most "
            "failing people then sit at d = -1 while passing ones stay up to T away, so magnitudes separate "
            "them more; the mirror ceiling 2T + 1 puts failing |d| in [1, T + 1] as passing |d| is in [0, T]",
        },
        "slot_linkage_across_criteria": slot_linkage(max(trials // 5, 200)),
        "note": (
            "fake members are refused by the register node at bronze; cohort counts are randomized per slot "
            "(randomized response at the gateway, eps per criterion and query), so two cohorts differing in one "
            "person reveal that person's verdict no better than e^eps/(1+e^eps); the magnitude-aware figure "
            "gives the attacker the victim's slot, which it cannot single out among shuffled slots"
        ),
    }


class _InProcessNodes:
    """The check service's node port over real NodeService objects (no gRPC), called concurrently."""

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes
        self.calls = 0

    async def encrypt_all(self, requests: Any, deadline_s: float, public_context: bytes = b"") -> dict[str, Any]:
        import asyncio

        self.calls += len(requests)
        for request in requests.values():  # in process the context's bytes cost nothing: always attach them
            request.public_context = request.public_context or public_context
        answers = await asyncio.gather(
            *(asyncio.to_thread(self.nodes[a].encrypt_values, r) for a, r in requests.items())
        )
        return dict(zip(requests, answers, strict=True))


class _ViewPolicy:
    def __init__(self, view: str) -> None:
        self.view = view

    def authorize_check(self, principal: Any, program: Any, request: Any) -> Any:
        from policies.types import PolicyOutcome

        return PolicyOutcome(self.view)


def bronze_check_cost(sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """One target_discovery check through the real check service and real node handlers (in
    process, no network), the cohort view as built (one fan-out per criterion, randomized
    response) against one fan-out for all criteria (the previous bronze path, which the
    per-criterion view still takes), interleaved; medians in ms."""
    import asyncio
    import statistics
    import tempfile
    import time

    from crypto.he import RequesterKeys
    from exchange.service import CheckService
    from exchange.types import CheckRequest
    from nodes.service import NodeService
    from nodes.store import NodeStore
    from xgate.principal import Principal

    catalogue = load_catalogue()[0]
    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, catalogue).get("target_discovery")
    keys = RequesterKeys.generate()
    rng = np.random.default_rng(43)
    out: dict[str, Any] = {"repeats": repeats, "program": program.id, "transport": "in process (no gRPC)"}
    with tempfile.TemporaryDirectory() as tmp:
        people = list(dict.fromkeys(_random_pseudonym(rng) for _ in range(max(sizes))))
        nodes: dict[str, Any] = {}
        for agency, terms in program.elements_by_agency().items():
            store = NodeStore.open(Path(tmp) / f"{agency}.sqlite")
            elements = [catalogue.get(t.element) for t in terms]
            rows = [(e.id, p, int(rng.integers(e.min, min(e.max, 3000) + 1))) for e in elements for p in people]
            store.replace_dataset(f"{agency}-bench", "0" * 64, [(e, False) for e in elements], rows, "2026-03-01")
            nodes[agency] = NodeService(agency=agency, store=store)
        principal = Principal("cw-bench", "civil_affairs", "caseworker", "bronze")
        for n in sizes:
            request = CheckRequest(
                "target_discovery", "target_discovery", "x", "c", tuple(people[:n]), public_context=keys.public_context
            )
            times: dict[str, list[float]] = {"cohort": [], "per_criterion": []}
            calls: dict[str, int] = {}
            for _ in range(repeats + 1):  # the first round warms caches and is dropped
                for view in times:
                    port = _InProcessNodes(nodes)
                    service = CheckService(programs=ProgramRegistry({program.id: program}), nodes=port,
                                           mask_key=KEY, policy=_ViewPolicy(view))  # fmt: skip
                    t0 = time.perf_counter()
                    asyncio.run(service.run(principal, request))
                    times[view].append((time.perf_counter() - t0) * 1000)
                    calls[view] = port.calls
            old, new = statistics.median(times["per_criterion"][1:]), statistics.median(times["cohort"][1:])
            out[f"subjects_{n}"] = {
                "one_fan_out_ms": round(old, 1),
                "per_criterion_fan_out_ms": round(new, 1),
                "node_calls": {"one_fan_out": calls["per_criterion"], "per_criterion_fan_out": calls["cohort"]},
                "ratio": round(new / old, 2),
            }
        for node in nodes.values():
            node.store.close()
    return out


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
        tags = tag_table(TAG_KEY, 1, {t.element: [0] * n for t in dibao.elements()}, ps)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for flood in (False, True):
                t0 = time.perf_counter()
                combine_he(dibao, ps, context, cts, KEY, 1, flood=flood, tags=tags)
                times[flood].append((time.perf_counter() - t0) * 1000)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        out[f"applicants_{n}"] = {
            "combine_ms_without_flooding": round(off, 1),
            "combine_ms_with_flooding": round(on, 1),
            "flooding_ms": round(on - off, 1),
        }
    return out


GOALS = {
    "exact_reveals_per_million": 0,
    "extra_bits_per_query": 0.1,
    "silver": "chance",
    "failed_check_budget_spent": 0,
    "bronze_single_person_attack_success_rate": "at most e^eps/(1+e^eps) per criterion (+ 3 sigma)",
    "two_cohort_differencing_attack_success_rate": "at most e^eps/(1+e^eps) per criterion (+ 3 sigma)",
}


def run_bronze(quick: bool) -> dict[str, Any]:
    """The bronze (cohort view) measurements and their top-level keys."""
    catalogue = load_catalogue()[0]
    bronze = bronze_single_person(1000 if quick else 10_000)
    criteria = len(ProgramRegistry.load(DEFAULT_PROGRAM_DIR, catalogue).get("target_discovery").criteria)
    return {
        "bronze_single_person_attack_success_rate": bronze["bronze_single_person_attack_success_rate"],
        "bronze_epsilon_per_criterion": bronze["bronze_epsilon_per_criterion"],
        "bronze_epsilon_per_query": bronze["bronze_epsilon_per_criterion"] * criteria,
        "bronze_single_person_bound": bronze["bound"],
        "bronze_magnitude_aware_attack_success_rate": bronze["magnitude_aware"]["magnitude_aware_success_rate"],
        "two_cohort_differencing_attack_success_rate": bronze["two_cohort_differencing"]["success_rate"],
        "bronze": bronze,
        "bronze_check_cost": bronze_check_cost((10, 1000) if quick else (10, 1000, 8192), 3 if quick else 15),
    }


def _dibao() -> Program:
    return ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")


def run(quick: bool) -> dict[str, Any]:
    dibao = _dibao()
    income = dibao.clamped_span(0)
    n = 100_000 if quick else 1_000_000
    # The per-criterion and overall views' masks are fitted to the clamped span; a sum that
    # cannot be clamped keeps the catalogue's.
    exact_clamped = exact_reveals(n, income)
    exact_whole = exact_reveals(n, dibao.span(0))
    exact = max(
        exact_clamped, exact_whole, key=lambda e: (e["exact_reveals_per_million"], e["near_exact_reveals_per_million"])
    )
    bits_full = extra_bits(n, MAX_ABS_DIFFERENCE, 1, 1)
    bits_silver = extra_bits(n, income, 1, 1, look=dibao.overall_look(1))
    shipped = shipped_criteria_bits(n)
    silver_population = silver_identification_population(100_000 if quick else 400_000)
    budget = failed_check_budget(9 if quick else 30)
    flooding = flooding_cost(3 if quick else 15)
    return {
        "benchmark": "privacy",
        "quick": quick,
        "exact_reveals_per_million": exact["exact_reveals_per_million"],
        "near_exact_reveals_per_million": exact["near_exact_reveals_per_million"],
        "exact": {"clamped_span": exact_clamped, "unclamped_sum_catalogue_span": exact_whole},
        "extra_bits_per_query": {
            "gold": max(c["gold"] for c in shipped.values()),
            "silver": bits_silver["silver_largest_magnitude"],
            "gold_unclamped_criterion_at_the_masking_bound": bits_full["gold"],
            "silver_unclamped_criterion_at_the_masking_bound": bits_full["silver_largest_magnitude"],
        },
        "extra_bits": {
            "shipped_criteria_clamped": shipped,
            "dibao_overall_view": bits_silver,
            "unclamped_criterion_at_the_masking_bound": bits_full,
        },
        "silver_failed_criterion_identified_rate": silver_population["silver_failed_criterion_identified_rate"],
        "silver_population": silver_population,
        **run_bronze(quick),
        "failed_check_budget_spent": budget["evaluations_charged"],
        "failed_checks": budget,
        "noise_flooding_cost": flooding,
        "goals": GOALS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller samples; prints, writes nothing")
    parser.add_argument(
        "--only-silver",
        action="store_true",
        help="only the silver (overall view) identification, merged into the existing results file",
    )
    parser.add_argument(
        "--only-bronze",
        action="store_true",
        help="only the bronze (cohort view) measurements, merged into the existing results file",
    )
    args = parser.parse_args()
    if args.only_silver:
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "privacy", "quick": False}
        population = silver_identification_population(100_000 if args.quick else 400_000)
        result.pop("silver", None)  # the stylised thirds of earlier runs
        result.update(
            silver_population=population,
            silver_failed_criterion_identified_rate=population["silver_failed_criterion_identified_rate"],
        )
    elif args.only_bronze:
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "privacy", "quick": False}
        result.update(run_bronze(args.quick))
        result["goals"] = {**result.get("goals", {}), **GOALS}
    else:
        result = run(args.quick)
    print(json.dumps(result, indent=2))
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
