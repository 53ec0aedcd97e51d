"""End to end over real processes: client -> gateway (HTTPS) -> five nodes (mTLS gRPC)."""

from __future__ import annotations

import base64
import random

import httpx
import numpy as np
import pytest

from app.demo import oracle
from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS
from client.sdk import GatewayError
from client.subjects import read_subjects
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from xgate.pseudonym import id_checksum

pytestmark = pytest.mark.integration
DIBAO = LEGAL_BASIS["dibao"]
PROGRAMS = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0])


def _random_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        birth = f"19{rng.randrange(50, 99)}0{rng.randrange(1, 10)}1{rng.randrange(10)}"
        body = f"65010{rng.randrange(10)}{birth}{rng.randrange(1000):03d}"
        out.add(body + id_checksum(body))
    return sorted(out)


@pytest.mark.parametrize("program", ["dibao", "pension_survival", "unemployment_subsidy"])
def test_he_verdicts_match_plaintext_oracle(federation, program):
    label = "caseworker" if program == "dibao" else "hrss_caseworker"
    ids = read_subjects(federation.applicants)[:150]
    with federation.client(label) as client:
        approval = DEV_APPROVAL_REF if program != "unemployment_subsidy" else ""
        result = client.check(
            program, ids, purpose=program, legal_basis=LEGAL_BASIS[program], case_id="case-1", approval_ref=approval
        )
    truth = oracle(federation, PROGRAMS.get(program), ids)
    for criterion, expected in truth.items():
        assert np.array_equal(result.passes[criterion], expected), criterion
        assert 0 < expected.sum() < len(ids), f"{criterion} should have passes and fails"


def test_plaintext_baseline_agrees_with_he(client, federation):
    ids = read_subjects(federation.applicants)[150:175]
    he = client.check("dibao", ids, "dibao", DIBAO, "case-2", approval_ref=DEV_APPROVAL_REF)
    plain = client.check("dibao", ids, "dibao", DIBAO, "case-2", approval_ref=DEV_APPROVAL_REF, mode="plaintext")
    for criterion in he.criteria:
        assert np.array_equal(he.passes[criterion], plain.passes[criterion])


def test_two_chunks_and_unknown_subjects(client, federation):
    """8,300 subjects span two ciphertexts; people unknown to an agency get the program's default."""
    known = read_subjects(federation.applicants)[175:225]
    ids = known + _random_ids(8300 - len(known), seed=3)
    result = client.check("dibao", ids, "dibao", DIBAO, "case-3", approval_ref=DEV_APPROVAL_REF)
    truth = oracle(federation, PROGRAMS.get("dibao"), ids)
    for criterion, expected in truth.items():
        assert np.array_equal(result.passes[criterion], expected)
    # unknown people are not resident per the household register: they fail that criterion
    assert not result.passes["alive_and_resident"][len(known) :].any()


def _payload(client, ids, **change):
    payload = {
        "program": "dibao",
        "purpose": "dibao",
        "legal_basis": DIBAO,
        "case_id": "case-4",
        "approval_ref": DEV_APPROVAL_REF,
        "pseudonyms": [client._pseudonymiser.pseudonym(i) for i in ids],
        "public_context": base64.b64encode(client.keys.public_context).decode(),
    }
    payload.update(change)
    return {k: v for k, v in payload.items() if v is not None}


def test_repeating_a_check_returns_identical_masked_values(client, federation):
    """Masks are keyed to (program, criterion, epoch, subject): a repeat reveals nothing new."""
    ids = read_subjects(federation.applicants)[225:230]
    first, _ = client._call("POST", "/v1/checks", json=federation.signed_check("caseworker", _payload(client, ids)))
    second, _ = client._call("POST", "/v1/checks", json=federation.signed_check("caseworker", _payload(client, ids)))
    # A small batch: every criterion in one packed ciphertext (one slot block each); the second
    # check takes the next window of the one-time pad batch, so its blocks follow the first's.
    assert len(first["packed_ciphertexts"]) == len(second["packed_ciphertexts"]) == 1
    k, n = len(first["criteria"]), len(ids)
    blocks_a, blocks_b = ([c["block"] for c in x["criteria"]] for x in (first, second))
    assert blocks_b == [b + blocks_a[-1] + 1 for b in blocks_a] and blocks_a == list(
        range(blocks_a[0], blocks_a[0] + k)
    )
    blob_a, blob_b = (base64.b64decode(x["packed_ciphertexts"][0]) for x in (first, second))
    assert blob_a != blob_b  # re-randomised ciphertexts ...
    masked_a, masked_b = (
        client.keys.decrypt_masked(blob, n * (blocks[-1] + 1)).reshape(-1, n)[blocks]
        for blob, blocks in ((blob_a, blocks_a), (blob_b, blocks_b))
    )
    assert np.array_equal(masked_a, masked_b)  # ... same masked values


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"program": "nope"}, 404, "program 'nope'"),
        ({"purpose": "fraud_hunting"}, 403, "purpose"),
        ({"legal_basis": ""}, 400, "legal_basis"),
        ({"case_id": None}, 400, "case_id"),
        ({"pseudonyms": []}, 400, "pseudonyms"),
        ({"pseudonyms": ["not-a-pseudonym"]}, 400, "pseudonyms"),
        ({"public_context": "!!!"}, 400, "base64"),
        ({"public_context": "aGVsbG8="}, 400, "malformed"),
        ({"mode": "telepathy"}, 400, "mode"),
        ({"unexpected": 1}, 400, "unexpected"),
    ],
)
def test_bad_requests_are_refused_with_clear_errors(client, change, status, fragment):
    payload = _payload(client, [], **change) | ({} if "pseudonyms" in change else {"pseudonyms": ["a" * 26]})
    with pytest.raises(GatewayError) as info:
        client._call("POST", "/v1/checks", json=payload)
    assert info.value.http_status == status
    assert fragment in info.value.message


def test_unauthenticated_and_malformed_bodies(federation):
    with httpx.Client(base_url=federation.gateway_url, verify=str(federation.ca_cert)) as http:
        assert http.post("/v1/checks", json={}).status_code == 401
        headers = {"Authorization": f"Bearer {federation.api_keys['caseworker']}", "Content-Type": "application/json"}
        bad = http.post("/v1/checks", content=b"{not json", headers=headers)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_input"
        huge = http.post("/v1/checks", content=b"x" * (17 * 1024 * 1024), headers=headers)
        assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"
        assert http.get("/healthz").json()["status"] == "ok"


def test_wrong_agency_may_not_request_program(federation):

    with (
        federation.client("hrss_caseworker") as client,
        pytest.raises(GatewayError) as info,
    ):
        client.check("dibao", read_subjects(federation.applicants)[230:233], "dibao", DIBAO, "case-6")
    assert info.value.http_status == 403 and "hrss" in info.value.message
