"""Regenerate the golden envelope and checkpoint files in tests/vectors/golden/.

    PYTHONPATH=. python -m tests.vectors.make_golden      # from the repository root

Every input is fixed here: Ed25519 signing is deterministic (RFC 8032), the envelope's clock and
nonce are injected, so the same code always writes the same bytes. The keys are derived from
public labels: they are test keys, never used anywhere else.

Run it only when a format changes on purpose (a new version string): tests/unit/test_golden_formats.py
compares what the current code produces against the committed files, and a silently regenerated
file would hide exactly the change those tests exist to catch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from Crypto.Signature import eddsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoints import Checkpoint, Cosigner, Signer, add_cosignature, raw_public
from crypto.envelope import SigningKey, method_name, request_digest, sign_message
from protos.xgate.v1 import node_pb2 as pb

GOLDEN = Path(__file__).resolve().parent / "golden"
REQUEST_FILE = "envelope_request.binpb"
RESPONSE_FILE = "envelope_response.binpb"
CHECKPOINT_FILE = "checkpoint.note"
KEYS_FILE = "keys.json"


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"xgate golden vectors/1: {label}".encode()).digest()


GATEWAY_SEED = _seed("gateway envelope key")
NODE_SEED = _seed("tax node envelope key")
LOG_SEED = _seed("audit log key")
WITNESS_SEED = _seed("tax witness key")

RPC = "EncryptValues"
REQUEST_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RESPONSE_TIME_MS = REQUEST_TIME_MS + 250
REQUEST_NONCE = bytes(range(16))
RESPONSE_NONCE = bytes(range(16, 32))

LOG_ORIGIN = "xgate.local/audit"
WITNESS_NAME = "witness.tax.example"
COSIGN_TIME = 1_767_225_660  # seconds, one minute after the request
LEAVES = [f"golden audit entry {i}".encode() for i in range(5)]


def gateway_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(GATEWAY_SEED), "gateway", "gateway")


def node_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(NODE_SEED), "tax", "node")


def envelope_messages() -> tuple[pb.EncryptRequest, pb.EncryptResponse]:
    """A signed EncryptValues request and the node's signed response bound to it."""
    request = pb.EncryptRequest(
        context=pb.RequestContext(
            request_id="golden-0001",
            requester_agency="civil_affairs",
            requester_user="caseworker-7",
            requester_role="caseworker",
            requester_tier="standard",
            purpose="dibao eligibility",
            legal_basis="social assistance regulation art. 11",
            case_id="case-42",
            program_id="dibao",
            program_version="1",
            consent_ref="consent-9",
            policy_set_hash="00" * 32,
        ),
        mode=pb.EXCHANGE_MODE_PLAINTEXT,
        pseudonyms=["abcdefghijklmnopqrstuvwxyz", "234567abcdefghijklmnopqrst"],
        elements=[pb.ElementQuery(element="tax.monthly_income", if_missing=0)],
    )
    sign_message(
        request,
        method_name(RPC),
        gateway_key(),
        now_ms=lambda: REQUEST_TIME_MS,
        nonce=lambda n: REQUEST_NONCE[:n],
    )
    response = pb.EncryptResponse(
        agency="tax",
        request_id="golden-0001",
        elements=[pb.ElementValues(element="tax.monthly_income", plain_values=[1200, -5])],
        node_audit_leaf_hash=merkle.leaf_hash(b"golden node entry"),
        node_audit_index=3,
    )
    sign_message(
        response,
        method_name(RPC),
        node_key(),
        request_digest(request),
        now_ms=lambda: RESPONSE_TIME_MS,
        nonce=lambda n: RESPONSE_NONCE[:n],
    )
    return request, response


def checkpoint_note() -> str:
    """A log checkpoint of a 5-entry tree, signed by the log and cosigned by one witness."""
    log = Signer(LOG_ORIGIN, eddsa.import_private_key(LOG_SEED))
    witness = Cosigner(WITNESS_NAME, eddsa.import_private_key(WITNESS_SEED))
    checkpoint = Checkpoint(LOG_ORIGIN, len(LEAVES), merkle.root_of([merkle.leaf_hash(x) for x in LEAVES]))
    return add_cosignature(log.sign(checkpoint), witness.cosign(checkpoint, COSIGN_TIME)).text()


def keys() -> dict[str, Any]:
    """The public half of everything a verifier needs (the tests verify from this file alone)."""
    return {
        "_about": "Public keys and fixed inputs of the golden files; written by make_golden.py.",
        "envelope": {
            "method": method_name(RPC),
            "request_time_ms": REQUEST_TIME_MS,
            "response_time_ms": RESPONSE_TIME_MS,
            "gateway": {"key_id": gateway_key().key_id, "public_key": gateway_key().public_raw.hex()},
            "node": {"key_id": node_key().key_id, "public_key": node_key().public_raw.hex()},
        },
        "checkpoint": {
            "log": {"name": LOG_ORIGIN, "public_key": raw_public(eddsa.import_private_key(LOG_SEED)).hex()},
            "witness": {"name": WITNESS_NAME, "public_key": raw_public(eddsa.import_private_key(WITNESS_SEED)).hex()},
            "cosign_time": COSIGN_TIME,
        },
    }


def outputs() -> dict[str, bytes]:
    """Every golden file's exact bytes, by file name."""
    request, response = envelope_messages()
    return {
        REQUEST_FILE: request.SerializeToString(deterministic=True),
        RESPONSE_FILE: response.SerializeToString(deterministic=True),
        CHECKPOINT_FILE: checkpoint_note().encode(),
        KEYS_FILE: (json.dumps(keys(), indent=1) + "\n").encode(),
    }


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, data in outputs().items():
        (GOLDEN / name).write_bytes(data)
        sys.stdout.write(f"wrote {GOLDEN / name} ({len(data)} bytes)\n")


if __name__ == "__main__":
    main()
