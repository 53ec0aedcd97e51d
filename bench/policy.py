"""Policy decisions per second: Cedar via PolicyEngine vs. a plain dict lookup of the same rule.

Two policy sets: the shipped baseline rules plus 1 agreement, and plus 200 generated realistic
agreements (consumer agency x data element x purpose x legal basis x tiers x hours). For each:
single decisions (`decide`), batched decisions (`decide_all` of a 5-element check), raw cedarpy
with the pre-parsed PolicySet, and raw cedarpy re-parsing the policy text on every call (what
passing text per call costs). The baseline is a dict keyed by the agreement's identity fields.

    python -m bench.policy [--quick]      -> bench/results/policy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy

from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
from policies.types import AccessRequest, check_requests

RESULTS = Path(__file__).parent / "results" / "policy.json"
AT = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 11:00 Asia/Shanghai
AGENCIES = ["civil_affairs", "tax", "hrss", "household", "medical"]
TIER_SETS = [["gold"], ["gold", "silver"], ["gold", "silver", "bronze"]]


def _agreement(
    i: int, consumer: str, element: str, purpose: str, basis: str, tiers: list[str], hours: tuple[int, int], budget: int
) -> str:
    tier_list = ", ".join(f'"{t}"' for t in tiers)
    return (
        f'@id("gen-{i:03d}")\n@agreement("DSA-GEN-{i:03d}")\n@provider("{element.split(".")[0]}")\n'
        f'@budget_max_checks("{budget}")\n@budget_window_days("30")\n'
        f'permit (principal, action == Action::"check", resource == DataElement::"{element}")\n'
        f'when {{\n  principal.agency == "{consumer}" && principal.role == "caseworker" &&\n'
        f"  [{tier_list}].contains(principal.tier) &&\n"
        f'  context.purpose == "{purpose}" && context.legal_basis == "{basis}" &&\n'
        f"  context.hour >= {hours[0]} && context.hour < {hours[1]}\n}};\n"
    )


def build_dir(
    tmp: Path, extra: int, seed: int = 7
) -> tuple[Path, dict[tuple[str, ...], tuple[frozenset[str], int, int]]]:
    """A policy directory with the baseline rules, the dibao income agreement and `extra` generated ones.

    Returns the directory and the same rules as a dict (the baseline's lookup table).
    """
    root = tmp / f"policies-{extra}"
    shutil.copytree(DEFAULT_POLICY_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__", "agreements"))
    (root / "agreements").mkdir()
    shutil.copy(DEFAULT_POLICY_DIR / "agreements" / "dibao-tax-monthly-income.cedar", root / "agreements")
    table = {
        ("civil_affairs", "caseworker", "tax.monthly_income", "dibao", "SAR-2014-art-12"): (
            frozenset({"gold", "silver"}),
            8,
            20,
        )
    }
    rng = random.Random(seed)
    elements = [
        line.split('"')[1]
        for line in (root / "data_elements.toml").read_text().splitlines()
        if line.startswith("id = ")
    ]
    purposes = [
        line.split('"')[1] for line in (root / "purposes.toml").read_text().splitlines() if line.startswith("id = ")
    ]
    combos = [(c, e, p) for c in AGENCIES for e in elements for p in purposes if not e.startswith(c)]
    rng.shuffle(combos)
    for i, (consumer, element, purpose) in enumerate(combos[:extra]):
        basis = f"REG-{rng.randint(2000, 2026)}-art-{rng.randint(1, 90)}"
        tiers = rng.choice(TIER_SETS)
        hours = (rng.choice([0, 6, 8]), rng.choice([18, 20, 24]))
        text = _agreement(i, consumer, element, purpose, basis, tiers, hours, rng.randint(1, 12))
        (root / "agreements" / f"gen-{i:03d}.cedar").write_text(text)
        table[(consumer, "caseworker", element, purpose, basis)] = (frozenset(tiers), *hours)
    return root, table


def _rate(fn: Callable[[], object], n: int, per_call: int = 1) -> float:
    fn()  # warm up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n * per_call / (time.perf_counter() - t0)


def bench_set(tmp: Path, extra: int, n: int) -> dict[str, Any]:
    root, table = build_dir(tmp, extra)
    engine = PolicyEngine.load(root)
    request = AccessRequest(
        principal="ca-caseworker-silver",
        action="check",
        resource="DataElement::tax.monthly_income",
        purpose="dibao",
        legal_basis="SAR-2014-art-12",
        case_id="C-1",
        program="dibao",
        requesting_agency="civil_affairs",
        at=AT,
    )
    assert engine.decide(request).allowed
    denied = replace(request, principal="ca-caseworker-bronze")
    assert not engine.decide(denied).allowed
    batch = check_requests(
        user="ca-caseworker-silver", agency="civil_affairs", program="dibao",
        elements=["tax.monthly_income"] * 4, purpose="dibao", legal_basis="SAR-2014-art-12", case_id="C-1", at=AT,
    )  # fmt: skip
    assert engine.decide_all(batch).allowed

    users = {"ca-caseworker-silver": ("civil_affairs", "caseworker", "silver")}

    def dict_lookup() -> bool:
        agency, role, tier = users[request.principal]
        hour = request.at.astimezone(engine.timezone).hour if request.at else 0
        rule = table.get((agency, role, "tax.monthly_income", request.purpose, request.legal_basis))
        return rule is not None and tier in rule[0] and rule[1] <= hour < rule[2]

    assert dict_lookup()
    cedar_request = engine._prepare(request).cedar  # the exact request Cedar sees
    assert cedar_request is not None
    policy_text = "\n".join(Path(p.file).read_text() for p in {p.file: p for p in engine.policies}.values())
    entities = engine._entities
    pre = engine._d.policy_set

    single = _rate(lambda: engine.decide(request), n)
    single_denied = _rate(lambda: engine.decide(denied), n)
    batched = _rate(lambda: engine.decide_all(batch), max(1, n // len(batch)), per_call=len(batch))
    raw_preparsed = _rate(lambda: cedarpy.is_authorized(cedar_request, pre, entities), n)
    raw_text = _rate(lambda: cedarpy.is_authorized(cedar_request, policy_text, entities), max(20, n // 20))
    baseline = _rate(dict_lookup, n * 5)
    load_t0 = time.perf_counter()
    PolicyEngine.load(root)
    load_ms = (time.perf_counter() - load_t0) * 1000
    return {
        "agreements": 1 + extra,
        "policies_total": len(engine.policies),
        "load_and_validate_ms": round(load_ms, 1),
        "decisions_per_s": {
            "engine_single_allow": round(single),
            "engine_single_deny": round(single_denied),
            "engine_batched_6": round(batched),
            "cedarpy_preparsed_policyset": round(raw_preparsed),
            "cedarpy_policy_text_per_call": round(raw_text),
            "baseline_python_dict": round(baseline),
        },
        "ratios": {
            "dict_over_engine_single": round(baseline / single, 1),
            "dict_over_engine_batched": round(baseline / batched, 1),
            "batched_over_single": round(batched / single, 2),
            "preparsed_over_text_per_call": round(raw_preparsed / raw_text, 1),
            "engine_single_over_raw_preparsed": round(single / raw_preparsed, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small iteration counts (smoke run)")
    args = parser.parse_args()
    n = 300 if args.quick else 5000
    with tempfile.TemporaryDirectory() as tmp:
        sets = [bench_set(Path(tmp), extra, n) for extra in (0, 199)]
    result = {
        "benchmark": "policy",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpu": platform.machine(), "cedarpy": "4.12"},
        "iterations": n,
        "target": ">= 5000 decisions/s with 200 agreements",
        "sets": sets,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
