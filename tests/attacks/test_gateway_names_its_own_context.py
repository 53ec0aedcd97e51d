"""Attack (open, THREAT_MODEL I1b): a gateway operator names an HE context whose secret key it holds.

A node authenticates the gateway (mTLS, signed envelopes) and checks the requester's consent and
approval artefacts, but the requester's identity and its HE context come on the gateway's word:
no requester signature binds a context to a certified user. So a gateway that makes its own
`RequesterKeys`, names their public context in an `EncryptValues` call under a real caseworker's
identity, purpose and legal basis (which the node's own shipped policy allows), decrypts the
answer with its own secret key: every stored value, exactly, also through the one-time pads of
small checks (the pads travel as Enc(rho) under the named context beside x - rho).

Found by the thirteenth session's review; not fixed yet. Closing it takes requester-signed checks:
a signing key per requesting user in the CA-signed policy set, a signed statement over the
context fingerprint, the question and a digest of the subjects, forwarded by the gateway and
verified by every node before it reads anything. These tests assert the protection and are
expected to fail until then (strict: they start failing the suite once the protection holds, so
the marker and the threat model's status are updated with the fix).
"""

from __future__ import annotations

import pytest

from crypto.envelope import Envelopes
from crypto.he import PLAIN_MODULUS, RequesterKeys, context_fingerprint
from crypto.pads import new_batch_id
from nodes.policy import node_authorizer
from nodes.service import NodeService
from protos.xgate.v1 import node_pb2
from tests.unit.test_node_service import GATEWAY, INCOME, RING, SUBJECTS, TAX, Audit, _request, _store
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import XgateError

STORED_INCOMES = [500 * i for i in range(len(SUBJECTS))]  # tests/unit/test_node_service.py's store
OPEN = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="open (THREAT_MODEL I1b): nodes take the requester's HE context on the gateway's word",
)


def _node() -> NodeService:
    return NodeService(
        agency="tax",
        store=_store(),  # type: ignore[arg-type]
        audit=Audit(),  # type: ignore[arg-type]
        envelopes=Envelopes(TAX, RING),
        authorize=node_authorizer("tax", None, clock=lambda: DAYTIME),  # the shipped policy set
    )


def _request_under_own_key(keys: RequesterKeys) -> node_pb2.EncryptRequest:
    """A check as the gateway could make it up: a real caseworker, purpose and legal basis; its own context."""
    req = _request(
        SUBJECTS,
        ((INCOME, 0),),
        mode=node_pb2.EXCHANGE_MODE_HE,
        public_context=keys.public_context,
        requester_user="ca-caseworker-gold",
        legal_basis="SAR-2014-art-12",
    )
    req.context_fingerprint = context_fingerprint(keys.public_context)
    req.value_tag_epoch = 1
    return req


@OPEN
def test_a_gateway_naming_its_own_context_reads_no_value() -> None:
    keys = RequesterKeys.generate()  # made by the gateway operator
    req = _request_under_own_key(keys)
    Envelopes(GATEWAY, RING).sign_request(req, "EncryptValues")
    try:
        resp = _node().encrypt_values(req)
    except XgateError:
        return  # refused before reading: the protection holds
    (element,) = resp.elements
    read = [int(v) for v in keys.decrypt_masked(element.ciphertexts[0], len(SUBJECTS))]
    assert read != STORED_INCOMES, "the gateway decrypted every stored income"


@OPEN
def test_a_gateway_naming_its_own_context_reads_no_value_through_the_pads() -> None:
    keys = RequesterKeys.generate()
    req = _request_under_own_key(keys)
    req.pad_batch, req.pad_offset, req.pad_open = new_batch_id(), 0, True
    Envelopes(GATEWAY, RING).sign_request(req, "EncryptValues")
    try:
        resp = _node().encrypt_values(req)
    except XgateError:
        return
    (element,) = resp.elements
    rho = keys.decrypt_masked(element.pad_ciphertext, 8192)
    read = [(int(p) + int(r)) % PLAIN_MODULUS for p, r in zip(element.padded_values, rho, strict=False)]
    assert read != STORED_INCOMES, "the gateway read every stored income as (x - rho) + rho"
