"""Attack (THREAT_MODEL I1b): a gateway operator names an HE context whose secret key it holds.

A node authenticates the gateway (mTLS, signed envelopes), and before requester-signed checks it
took the requester's identity and HE context on the gateway's word. So a gateway that made its own
`RequesterKeys` and named their public context in an `EncryptValues` call under a real
caseworker's identity, purpose and legal basis (which the node's own shipped policy allows)
decrypted the answer with its own secret key: every stored value, exactly, also through the
one-time pads of small checks (the pads travel as Enc(rho) under the named context beside x - rho).

Now every check carries the requesting user's statement (policies/check_statements.py), signed
with a key registered in the policy set's requesters.toml, over the question, the context
fingerprint and the subjects; the node verifies it against the context it is about to encrypt
under before it reads anything. The attacks below run with and without a genuine statement the
gateway relays (it sees every one the caseworker sends), and each would read every income if the
node skipped the check; the positive control shows the caseworker's own check is still answered.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from audit.alerts import AlertConfig, statement_reused
from audit.records import AuditRecord
from crypto.envelope import Envelopes, SigningKey
from crypto.he import PLAIN_MODULUS, PublicContext, RequesterKeys, context_fingerprint
from crypto.pads import new_batch_id
from nodes.policy import node_authorizer
from nodes.service import NodeService
from policies.check_statements import Question, sign_check
from policies.decision import DEFAULT_POLICY_DIR
from protos.xgate.v1 import node_pb2
from tests.unit.test_node_service import GATEWAY, INCOME, RING, SUBJECTS, TAX, Audit, _request, _store
from tests.unit.test_policy_support import DAYTIME, NIGHT
from xgate.errors import PolicyDenied

STORED_INCOMES = [500 * i for i in range(len(SUBJECTS))]  # tests/unit/test_node_service.py's store
CASEWORKER, AGENCY = "ca-caseworker-gold", "civil_affairs"
# Why the node refuses: no statement at all, or the caseworker's statement names another context.
REFUSED = {False: "carries no requester statement", True: "HE context named is not the one the requester signed"}


@pytest.fixture(scope="module")
def caseworker_key() -> SigningKey:
    return SigningKey.generate(AGENCY, "requester")


@pytest.fixture(scope="module")
def caseworker_keys() -> RequesterKeys:
    return RequesterKeys.generate()


@pytest.fixture
def node(tmp_path: Path, caseworker_key: SigningKey) -> NodeService:
    """The tax node on the shipped policy set, with the caseworker's signing key registered."""
    return _node(tmp_path, caseworker_key, DAYTIME)


def _node(tmp_path: Path, caseworker_key: SigningKey, now: datetime) -> NodeService:
    import base64

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies, ignore=shutil.ignore_patterns("__pycache__"))
    public = base64.b64encode(caseworker_key.public_raw).decode()
    (policies / "requesters.toml").write_text(
        f'[[requester]]\nuser = "{CASEWORKER}"\nagency = "{AGENCY}"\npublic_key = "{public}"\n'
    )
    return NodeService(
        agency="tax",
        store=_store(),  # type: ignore[arg-type]
        audit=Audit(),  # type: ignore[arg-type]
        envelopes=Envelopes(TAX, RING),
        authorize=node_authorizer("tax", policies, clock=lambda: now),
    )


def _check(public_context: bytes) -> node_pb2.EncryptRequest:
    """A check under the real caseworker, purpose and legal basis, naming `public_context`."""
    req = _request(
        SUBJECTS,
        ((INCOME, 0),),
        mode=node_pb2.EXCHANGE_MODE_HE,
        public_context=public_context,
        requester_user=CASEWORKER,
        legal_basis="SAR-2014-art-12",
    )
    req.context_fingerprint = context_fingerprint(public_context)
    req.value_tag_epoch = 1
    return req


def _statement(key: SigningKey, req: node_pb2.EncryptRequest, fingerprint: str) -> str:
    """What the caseworker signs for its own check (the gateway relays it and so holds it)."""
    return sign_check(key, Question.of_request(req, fingerprint), DAYTIME)


def _sent(node: NodeService, req: node_pb2.EncryptRequest) -> node_pb2.EncryptResponse:
    Envelopes(GATEWAY, RING).sign_request(req, "EncryptValues")
    return node.encrypt_values(req)


@pytest.mark.parametrize("relayed", [False, True], ids=["unsigned", "relays-the-caseworkers-statement"])
def test_a_gateway_naming_its_own_context_reads_no_value(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys, relayed: bool
) -> None:
    own = RequesterKeys.generate()  # made by the gateway operator
    req = _check(own.public_context)
    if relayed:
        genuine = context_fingerprint(caseworker_keys.public_context)
        req.context.requester_statement = _statement(caseworker_key, req, genuine)
    with pytest.raises(PolicyDenied, match=REFUSED[relayed]):
        _sent(node, req)
    # Nor does the refused context stay in the node's cache, pushing real requesters' contexts out.
    assert PublicContext.known(context_fingerprint(own.public_context)) is None


@pytest.mark.parametrize("relayed", [False, True], ids=["unsigned", "relays-the-caseworkers-statement"])
def test_a_gateway_naming_its_own_context_reads_no_value_through_the_pads(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys, relayed: bool
) -> None:
    own = RequesterKeys.generate()
    req = _check(own.public_context)
    req.pad_batch, req.pad_offset, req.pad_open = new_batch_id(), 0, True
    if relayed:
        genuine = context_fingerprint(caseworker_keys.public_context)
        req.context.requester_statement = _statement(caseworker_key, req, genuine)
    with pytest.raises(PolicyDenied, match=REFUSED[relayed]):
        _sent(node, req)
    assert len(node.pads) == 0, "the node drew pads for a check it refused"


def test_a_statement_signed_by_a_key_the_gateway_made_is_refused(node: NodeService) -> None:
    """The gateway signs for the caseworker with a key of its own: not the one requesters.toml registers."""
    own = RequesterKeys.generate()
    req = _check(own.public_context)
    forged = SigningKey.generate(AGENCY, "requester")
    req.context.requester_statement = _statement(forged, req, context_fingerprint(own.public_context))
    with pytest.raises(PolicyDenied, match="not signed by a registered signer"):
        _sent(node, req)


def test_positive_control_the_caseworkers_own_check_is_answered(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    """Without the protection the attacks above read this; with it, only the caseworker reads it."""
    req = _check(caseworker_keys.public_context)
    req.context.requester_statement = _statement(
        caseworker_key, req, context_fingerprint(caseworker_keys.public_context)
    )
    (element,) = _sent(node, req).elements
    read = [int(v) for v in caseworker_keys.decrypt_masked(element.ciphertexts[0], len(SUBJECTS))]
    assert read == STORED_INCOMES
    assert (
        PublicContext.known(context_fingerprint(caseworker_keys.public_context)) is not None
    )  # named by fingerprint next


def test_the_node_decides_by_its_own_clock_office_hours_included(
    tmp_path: Path, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    """Every part of the node's decision takes one time from its clock: the shipped policies allow
    this check in office hours only, so at 22:30 local it is refused, whatever the real time (the
    Cedar decision once read the real clock, so the positive control above failed in the evening)."""
    night = _node(tmp_path, caseworker_key, NIGHT)
    req = _check(caseworker_keys.public_context)
    fingerprint = context_fingerprint(caseworker_keys.public_context)
    req.context.requester_statement = sign_check(caseworker_key, Question.of_request(req, fingerprint), NIGHT)
    with pytest.raises(PolicyDenied, match="no permit matched"):
        _sent(night, req)


def test_the_nodes_log_names_the_context_and_the_statement_it_answered(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    """A security officer can tell from the node's own entry which context an answer was encrypted
    under and which signed statement asked, also when the gateway named the context by fingerprint
    only (the entry recorded the digest of the empty bytes before)."""
    fingerprint = context_fingerprint(caseworker_keys.public_context)
    for attached in (True, False):
        req = _check(caseworker_keys.public_context if attached else b"")
        req.context_fingerprint = fingerprint
        req.context.requester_statement = _statement(caseworker_key, req, fingerprint)
        _sent(node, req)
        event = node.audit.events[-1]  # type: ignore[union-attr]
        assert event["context_sha256"] == fingerprint.removeprefix("sha256:"), attached
        statement = req.context.requester_statement.encode()
        assert event["requester_statement_sha256"] == hashlib.sha256(statement).hexdigest()


def test_positive_control_pads_are_read_by_the_caseworker_alone(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    req = _check(caseworker_keys.public_context)
    req.pad_batch, req.pad_offset, req.pad_open = new_batch_id(), 0, True
    req.context.requester_statement = _statement(
        caseworker_key, req, context_fingerprint(caseworker_keys.public_context)
    )
    (element,) = _sent(node, req).elements
    rho = caseworker_keys.decrypt_masked(element.pad_ciphertext, 8192)
    read = [(int(p) + int(r)) % PLAIN_MODULUS for p, r in zip(element.padded_values, rho, strict=False)]
    assert read == STORED_INCOMES


def test_a_gateway_stating_another_tier_than_the_users_is_refused(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    """The tier is not in the statement (the requester need not know it), so the node takes it from
    the CA-signed principals registry: a gateway calling a gold caseworker's signed check "bronze"
    would make the civil register check the members and answer, by refusing or not, whether every
    signed subject is a registered person (second review of 2026-12-07)."""
    node.civil_register = True
    req = _check(caseworker_keys.public_context)
    req.context.requester_tier = "bronze"
    req.context.requester_statement = _statement(
        caseworker_key, req, context_fingerprint(caseworker_keys.public_context)
    )
    with pytest.raises(PolicyDenied, match="another role or tier than the principals registry"):
        _sent(node, req)
    req.context.requester_tier = "gold"  # positive control: the registered tier is served
    (element,) = _sent(node, req).elements
    assert len(element.ciphertexts) == 1


def test_a_replayed_statement_is_answered_but_the_nodes_log_raises_an_alert(
    node: NodeService, caseworker_key: SigningKey, caseworker_keys: RequesterKeys
) -> None:
    """What is left of I1b: within its 15 minutes a statement is answered again under a request id
    the gateway makes up (for the caseworker's key alone: the gateway still reads nothing). The
    node's own log shows one statement answered under two request ids, and the officer's alert rule
    over it (`audit.alerts.statement_reused`) names the user and both entries."""
    fingerprint = context_fingerprint(caseworker_keys.public_context)
    first = _check(caseworker_keys.public_context)
    first.context.requester_statement = _statement(caseworker_key, first, fingerprint)
    replay = node_pb2.EncryptRequest()
    replay.CopyFrom(first)
    replay.context.request_id = "replayed-by-the-gateway"
    _sent(node, first)
    _sent(node, replay)
    log = [(i, AuditRecord.from_event(e)) for i, e in enumerate(node.audit.events[-2:])]  # type: ignore[union-attr]
    (alert,) = statement_reused(log, AlertConfig())
    assert (alert.user, alert.count, alert.entry_indices) == (CASEWORKER, 2, (0, 1))
    # Positive control: the caseworker's next check is a statement of its own, and no alert.
    again = _check(caseworker_keys.public_context)
    again.context.request_id, again.context.case_id = "the-caseworkers-next-check", "C-next"
    again.context.requester_statement = _statement(caseworker_key, again, fingerprint)
    _sent(node, again)
    log = [(i, AuditRecord.from_event(e)) for i, e in enumerate([node.audit.events[-3], node.audit.events[-1]])]  # type: ignore[union-attr]
    assert statement_reused(log, AlertConfig()) == []
