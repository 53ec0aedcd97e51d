"""What transport security costs an eligibility check: mTLS + signed envelopes vs. neither, in one run.

Two federations with the same synthetic population run side by side on loopback:

* secure:   HTTPS client->gateway, mTLS gRPC gateway->nodes (peer checks incl. CRL), Ed25519
            envelopes on every request and response (sign, verify, replay cache, request binding);
* insecure: the same processes started with --insecure: plaintext HTTP and gRPC, no envelopes.

Everything else is identical (programs, policies at gateway and nodes, BFV parameters, data).
For a single applicant (median of N) and a 10,000-applicant batch (median of a few) we time the
whole check as the requester sees it, alternating secure/insecure runs so machine noise hits both
alike, and report secure/insecure ratios, plus the gateway's own fan-out time (gRPC hop) and the
rest (REST hop + client work). The PLAINTEXT exchange mode is measured too: there the check itself
is cheap, so it bounds the relative overhead from above. Envelope CPU for messages of the real
sizes is measured in-process to attribute the cost.

    python -m bench.transport_overhead [--quick]   -> bench/results/transport_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from client.sdk import CheckResult, GatewayClient
from client.subjects import read_subjects
from crypto.he import RequesterKeys
from xgate.pseudonym import Pseudonymiser, id_checksum, load_key

RESULTS = Path(__file__).resolve().parent / "results" / "transport_overhead.json"
BENCH_BUDGET = 1_000_000  # repeats re-check the same people: probing budgets raised for these federations only


def _pad_ids(known: list[str], n: int, seed: int) -> list[str]:
    """`n` distinct valid national ids: the applicants first, then random ones nobody holds."""
    rng = random.Random(seed)
    out = list(dict.fromkeys(known))[:n]
    seen = set(out)
    while len(out) < n:
        body = f"65{rng.randrange(10**15):015d}"
        candidate = body + id_checksum(body)
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


class Side:
    """One running federation (secure or insecure) and a client bound to it."""

    def __init__(self, name: str, fed: DevFederation, supervisor: Supervisor, keys: RequesterKeys) -> None:
        self.name = name
        self.fed = fed
        start_nodes(fed, supervisor)
        write_gateway_config(fed, rate_per_s=10_000.0, rate_burst=10_000.0)
        url = start_gateway(fed, supervisor)
        verify: str | bool = str(fed.ca_cert) if fed.tls else False
        self.client = GatewayClient(
            url, fed.api_keys["caseworker"], Pseudonymiser(load_key(fed.pseudonym_key)), keys, verify=verify,
            signer=fed.signer("caseworker"), identity=fed.identity("caseworker"),
        )  # fmt: skip
        self.times: dict[str, list[float]] = {}
        self.fanout: dict[str, list[float]] = {}
        self.edge: dict[str, list[float]] = {}  # requester wall time minus the gateway's own total

    def check(self, label: str, ids: list[str], mode: str, record: bool = True) -> CheckResult:
        t0 = time.perf_counter()
        result = self.client.check(
            "dibao", ids, "dibao", LEGAL_BASIS["dibao"], f"BENCH-{label}", approval_ref=DEV_APPROVAL_REF, mode=mode
        )
        elapsed = (time.perf_counter() - t0) * 1000
        if len(result.subjects) != len(ids):
            raise RuntimeError(f"{self.name}: answered for {len(result.subjects)} of {len(ids)} subjects")
        if record:
            self.times.setdefault(label, []).append(elapsed)
            self.fanout.setdefault(label, []).append(float(result.timings_ms.get("fanout", 0.0)))
            self.edge.setdefault(label, []).append(elapsed - float(result.timings_ms.get("total", 0.0)))
        return result


def _alternate(
    secure: Side, insecure: Side, label: str, ids_for: Callable[[int], list[str]], mode: str, n: int
) -> None:
    secure.check(label, ids_for(-1), mode, record=False)  # warm-up: channels, handshakes, caches
    insecure.check(label, ids_for(-1), mode, record=False)
    for i in range(n):
        pair = (secure, insecure) if i % 2 == 0 else (insecure, secure)
        for side in pair:
            side.check(label, ids_for(i), mode)


def _summary(secure: Side, insecure: Side, label: str, applicants: int, mode: str) -> dict[str, Any]:
    def stats(side: Side) -> dict[str, float]:
        t, f, e = side.times[label], side.fanout[label], side.edge[label]
        return {
            "median_ms": round(statistics.median(t), 1),
            "min_ms": round(min(t), 1),
            "fanout_median_ms": round(statistics.median(f), 1),
            "rest_and_client_median_ms": round(statistics.median(e), 1),
            "repeats": len(t),
        }

    s, i = stats(secure), stats(insecure)
    return {
        "case": label,
        "mode": mode,
        "applicants": applicants,
        "secure": s,
        "insecure": i,
        "ratio_secure_over_insecure": round(s["median_ms"] / i["median_ms"], 3),
        "overhead_ms": round(s["median_ms"] - i["median_ms"], 1),
        "fanout_ratio": round(s["fanout_median_ms"] / i["fanout_median_ms"], 3) if i["fanout_median_ms"] else None,
    }


def envelope_cost(keys: RequesterKeys, n: int) -> dict[str, float]:
    """Envelope CPU per message of the sizes a single-applicant check really sends (in-process).

    Explains the single-applicant overhead: every request carries the requester's ~0.5 MB public
    context, every response one ~0.4 MB ciphertext per element, and each is serialised
    deterministically and hashed on both sides, besides the Ed25519 sign/verify.
    """
    from crypto.envelope import Envelopes, Keyring, SigningKey
    from crypto.he import PublicContext
    from crypto.replay import ReplayGuard
    from protos.xgate.v1 import node_pb2

    gateway, node = SigningKey.generate("gateway", "gateway"), SigningKey.generate("tax", "node")
    ring = Keyring.of(gateway, node)
    blob = PublicContext(keys.public_context).encrypt([1])

    def timed(fn: Callable[[], object]) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(samples), 2)

    request = node_pb2.EncryptRequest(pseudonyms=["a" * 26], public_context=keys.public_context)
    response = node_pb2.EncryptResponse(agency="tax", request_id="r")
    response.elements.add(element="tax.monthly_income", ciphertexts=[blob])
    gw, nd = Envelopes(gateway, ring), Envelopes(node, ring)

    def sign_request() -> None:
        gw.sign_request(request, "EncryptValues")

    def verify_request() -> None:
        gw.sign_request(request, "EncryptValues")
        nd.replay_guard = ReplayGuard()
        nd.verify_request(request, "EncryptValues", agency="gateway", kinds={"gateway"})

    def sign_response() -> None:
        nd.sign_response(response, "EncryptValues", request)

    def verify_response() -> None:
        nd.sign_response(response, "EncryptValues", request)
        gw.replay_guard = ReplayGuard()
        gw.verify_response(response, "EncryptValues", request_digest(request), agency="tax")

    from crypto.envelope import request_digest

    sign_req, sign_resp = timed(sign_request), timed(sign_response)
    return {
        "request_bytes": request.ByteSize(),
        "response_bytes_per_element": response.ByteSize(),
        "sign_request_ms": sign_req,
        "verify_request_ms": round(timed(verify_request) - sign_req, 2),
        "sign_response_ms": sign_resp,
        "verify_response_ms": round(timed(verify_response) - sign_resp, 2),
    }


def run(quick: bool) -> dict[str, Any]:
    people = 3000 if quick else 20_000
    batch = 200 if quick else 10_000
    n_single = 5 if quick else 31
    n_batch = 2 if quick else 5
    keys = RequesterKeys.generate()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xgate-transport-") as tmp:
        t0 = time.perf_counter()
        feds = {
            tls: prepare(
                Path(tmp) / ("secure" if tls else "insecure"),
                people=people,
                applicants=min(batch, people),
                tls=tls,
                plaintext_baseline=True,
                budget_max_checks=BENCH_BUDGET,
            )
            for tls in (True, False)
        }
        setup_s = time.perf_counter() - t0
        known = read_subjects(feds[True].applicants)  # same seed: both federations hold the same people
        big = _pad_ids(known, batch, seed=7)
        singles = known[: n_single + 1]
        rows = []
        with Supervisor(log_dir=feds[True].log_dir) as sup_secure, Supervisor(log_dir=feds[False].log_dir) as sup_plain:
            secure = Side("secure", feds[True], sup_secure, keys)
            insecure = Side("insecure", feds[False], sup_plain, keys)
            try:
                plan = [
                    ("single_he", 1, "he", lambda i: [singles[i % len(singles)]], n_single),
                    (f"batch_{batch}_he", batch, "he", lambda i: big, n_batch),
                    ("single_plaintext", 1, "plaintext", lambda i: [singles[i % len(singles)]], n_single),
                    (f"batch_{batch}_plaintext", batch, "plaintext", lambda i: big, n_batch),
                ]
                for label, applicants, mode, ids_for, n in plan:
                    _alternate(secure, insecure, label, ids_for, mode, n)
                    rows.append(_summary(secure, insecure, label, applicants, mode))
                    r = rows[-1]
                    print(
                        f"{label:>22}: secure {r['secure']['median_ms']:>8.1f} ms, insecure "
                        f"{r['insecure']['median_ms']:>8.1f} ms -> ratio {r['ratio_secure_over_insecure']:.3f} "
                        f"(+{r['overhead_ms']} ms; fan-out ratio {r['fanout_ratio']})",
                        flush=True,
                    )
            finally:
                secure.client.close()
                insecure.client.close()
    envelopes = envelope_cost(keys, 5 if quick else 31)
    print(f"envelope cost per real-size message: {envelopes}", flush=True)
    return {
        "benchmark": "transport_overhead",
        "question": "cost of mTLS + signed envelopes on an eligibility check, as a ratio to the same check without",
        "program": "dibao (3 criteria over 4 agencies)",
        "secure": "HTTPS client->gateway; mTLS gRPC gateway->nodes with CRL/kind/agency peer checks; "
        "Ed25519 envelopes on requests and responses (sign, verify, replay cache, request binding)",
        "insecure": "same processes with --insecure: plaintext HTTP and gRPC, no envelopes",
        "method": "median wall time seen by the requester; secure and insecure runs alternate; one warm-up each",
        "people": people,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # shared machine: ratios below ~1.1 are within run-to-run noise when load exceeds the cores
            "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "quick": quick,
        "setup_s": round(setup_s, 1),
        "cases": rows,
        "envelope_cost_single_check_messages": envelopes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small population and batch (smoke run)")
    args = parser.parse_args()
    result = run(args.quick)
    out = RESULTS.with_name("transport_overhead.quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
