"""`make demo`: a whole federation on loopback, one 低保 check end to end, checked by an oracle."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from app.devfed import (
    DEV_APPROVAL_REF,
    LEGAL_BASIS,
    DevFederation,
    prepare,
    start_gateway,
    start_nodes,
    write_gateway_config,
)
from app.launcher import Supervisor
from client.sdk import CheckResult
from client.subjects import read_subjects
from exchange.eligibility import evaluate_plain
from nodes.config import load_node_config
from nodes.store import open_node_store
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, Program, ProgramRegistry
from xgate.pseudonym import Pseudonymiser, load_key


def _say(step: str, text: str) -> None:
    print(f"  [{step}] {text}", flush=True)


def oracle(fed: DevFederation, program: Program, national_ids: list[str]) -> dict[str, np.ndarray]:
    """Plaintext verdicts computed straight from the node databases (never from the gateway)."""
    pseudonymiser = Pseudonymiser(load_key(fed.pseudonym_key))
    pseudonyms = [pseudonymiser.pseudonym(i) for i in national_ids]
    values: dict[str, np.ndarray] = {}
    for agency, terms in program.elements_by_agency().items():
        config = load_node_config(fed.node_config(agency))
        store = open_node_store(config.node, read_only=True)
        try:
            for term in terms:
                values[term.element] = store.values_for(term.element, pseudonyms, term.if_missing)
        finally:
            store.close()
    return {criterion.id: evaluate_plain(criterion, values) for criterion in program.criteria}


def print_result(result: CheckResult, elapsed_s: float) -> None:
    width = max(len(c) for c in result.criteria) + 2
    print(f"\n    {'criterion':<{width}}{'pass':>7}{'fail':>7}   meaning")
    for criterion in result.criteria:
        passed = int(result.passes[criterion].sum())
        print(
            f"    {criterion:<{width}}{passed:>7}{len(result.subjects) - passed:>7}   {result.descriptions[criterion]}"
        )
    eligible = int(result.overall.sum())
    print(f"    {'eligible (all criteria)':<{width}}{eligible:>7}{len(result.subjects) - eligible:>7}\n")
    t = result.timings_ms
    print(
        f"    end to end {elapsed_s * 1000:.0f} ms for {len(result.subjects)} applicants "
        f"(gateway: fan-out {t.get('fanout', 0):.0f} ms, combine+mask {t.get('combine', 0):.0f} ms); "
        f"{result.wire_bytes / 1e6:.1f} MB on the wire between client and gateway"
    )


def run_demo(root: Path, people: int = 100_000, applicants: int = 1000, keep: bool = False) -> int:
    print("xgate demo: minimum living allowance (低保) means test across five agencies\n")
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    fed = prepare(root, people=people, applicants=applicants, tls=True)
    _say(
        "1/5",
        f"synthetic federation of {people:,} people, PKI (federation CA, mTLS certs), keys; "
        f"5 node stores loaded and sealed ({time.perf_counter() - t0:.1f} s)",
    )
    catalogue, _ = load_catalogue()
    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, catalogue).get("dibao")
    national_ids = read_subjects(fed.applicants)
    with Supervisor(log_dir=fed.log_dir) as supervisor:
        start_nodes(fed, supervisor)
        write_gateway_config(fed)
        url = start_gateway(fed, supervisor)
        _say("2/5", f"started {len(fed.agencies)} agency nodes (gRPC, mTLS) and the gateway at {url}")
        print(
            "        policies: shipped Cedar agreements, decided at the gateway and again at every node;\n"
            "        dev federation only: office-hour windows widened to 24 h so the demo runs at any time"
        )
        client = fed.client("caseworker", url)  # signed with the key registered in the policy set
        with client:
            client.keys  # noqa: B018 - generate the BFV key pair before timing the check
            _say(
                "3/5",
                f"caseworker at civil_affairs checks {len(national_ids):,} applicants "
                f"(program dibao v{program.version}, BFV N=8192; only pseudonyms and ciphertexts leave the client)",
            )
            print(
                "        the check is signed with the caseworker's registered key: every node verifies it names"
                " this question,\n        these applicants and the caseworker's own HE key before reading anything"
            )
            t1 = time.perf_counter()
            result = client.check(
                "dibao",
                national_ids,
                purpose="dibao",
                legal_basis=LEGAL_BASIS["dibao"],
                case_id="DEMO-0001",
                approval_ref=DEV_APPROVAL_REF,  # household data is core-class: needs an approval
            )
            elapsed = time.perf_counter() - t1
        print_result(result, elapsed)
        truth = oracle(fed, program, national_ids)
        checked = sum(len(v) for v in truth.values())
        agree = sum(int((truth[c] == result.passes[c]).sum()) for c in truth)
        _say(
            "4/5", f"oracle: recomputed every verdict in plaintext from the node databases: {agree:,}/{checked:,} agree"
        )
        _say("5/5", f"stopping {len(supervisor.children)} processes")
    if not keep:
        shutil.rmtree(root / "data", ignore_errors=True)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; logs in {fed.log_dir}")
    return 0 if agree == checked else 1
