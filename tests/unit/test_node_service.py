"""nodes/service.py NodeService, the node's transport-free handler, with a fake store.

Every refusal is shown to happen before the node reads a value or writes its audit entry, and
the envelope check before anything else (an unsigned request gets no validation feedback).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from audit.records import AuditRecord
from crypto.envelope import Envelopes, Keyring, SigningKey
from crypto.he import HE_PARAMS_ID, SLOTS
from nodes.service import NodeService
from nodes.store import StoredElement
from policies.catalogue import DataElement
from protos.xgate.v1 import node_pb2
from xgate.errors import CryptoError, IntegrityError, InvalidInput, PayloadTooLarge, PolicyDenied, XgateError

INCOME, BUSINESSES = "tax.monthly_income", "tax.registered_businesses"


def pseudo(i: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digits = []
    for _ in range(26):
        digits.append(alphabet[i % 32])
        i //= 32
    return "".join(digits)


class FakeStore:
    """The NodeStore calls NodeService makes; records every read."""

    def __init__(self, values: dict[str, dict[str, int]], ranges: dict[str, tuple[int, int]]) -> None:
        self.values, self.ranges = values, ranges
        self.reads: list[str] = []

    def elements(self) -> list[StoredElement]:
        return [
            StoredElement(
                DataElement(id=e, agency="tax", type="int", unit="CNY", min=lo, max=hi, classification="important"),
                dataset="tax_2026",
                records=len(self.values.get(e, {})),
                sealed=False,
            )
            for e, (lo, hi) in self.ranges.items()
        ]

    def values_for(self, element: str, pseudonyms: Sequence[str], if_missing: int) -> np.ndarray:
        self.reads.append(element)
        return np.asarray([self.values[element].get(p, if_missing) for p in pseudonyms], dtype=np.int64)

    def lookup(self, element: str, pseudonyms: Sequence[str]) -> dict[str, int]:
        self.reads.append(element)
        return {p: self.values[element][p] for p in pseudonyms if p in self.values.get(element, {})}

    def value_tag_key(self) -> bytes:
        return b"\x0b" * 32

    def subject_count(self) -> int:
        return len({p for v in self.values.values() for p in v})


SUBJECTS = [pseudo(i) for i in range(5)]


def _store() -> FakeStore:
    return FakeStore(
        {INCOME: {p: 500 * i for i, p in enumerate(SUBJECTS)}, BUSINESSES: {SUBJECTS[1]: 1}},
        {INCOME: (0, 1_000_000), BUSINESSES: (0, 100)},
    )


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def __call__(self, event: dict[str, object]) -> tuple[bytes, int]:
        AuditRecord.from_event(event)  # a record the node's real audit log accepts
        self.events.append(event)
        return b"\x07" * 32, len(self.events) - 1


def _node(store: FakeStore | None = None, **kw: Any) -> tuple[NodeService, FakeStore, Audit]:
    store = store or _store()
    audit = Audit()
    kw.setdefault("allow_plaintext_mode", True)
    return NodeService(agency="tax", store=store, audit=audit, **kw), store, audit  # type: ignore[arg-type]


def _request(
    subjects: Sequence[str] = SUBJECTS,
    elements: Sequence[tuple[str, int]] = ((INCOME, 0),),
    mode: int = node_pb2.EXCHANGE_MODE_PLAINTEXT,
    public_context: bytes = b"",
    **context: str,
) -> node_pb2.EncryptRequest:
    ctx = {
        "request_id": "req-1",
        "requester_agency": "civil_affairs",
        "requester_user": "ca-caseworker",
        "requester_role": "caseworker",
        "requester_tier": "gold",
        "purpose": "dibao",
        "legal_basis": "reg:1",
        "case_id": "case-1",
        "program_id": "dibao",
        **context,
    }
    return node_pb2.EncryptRequest(
        context=node_pb2.RequestContext(**ctx),
        mode=mode,  # type: ignore[arg-type]
        pseudonyms=list(subjects),
        elements=[node_pb2.ElementQuery(element=e, if_missing=m) for e, m in elements],
        public_context=public_context,
        he_params_id=HE_PARAMS_ID if mode == node_pb2.EXCHANGE_MODE_HE else "",
    )


def _clamped(
    clamp: int | None,
    mode: int = node_pb2.EXCHANGE_MODE_PLAINTEXT,
    public_context: bytes = b"",
    floor: int | None = None,
) -> Any:
    request = _request(mode=mode, public_context=public_context)
    if clamp is not None:
        request.elements[0].clamp_at = clamp
    if floor is not None:
        request.elements[0].floor_at = floor
    return request


def test_plaintext_baseline_answers_stored_values_and_logs_its_own_entry() -> None:
    node, _, audit = _node()
    response = node.encrypt_values(_request(elements=[(INCOME, 0), (BUSINESSES, 0)]))
    assert (response.agency, response.request_id) == ("tax", "req-1")
    got = {e.element: list(e.plain_values) for e in response.elements}
    assert got == {INCOME: [0, 500, 1000, 1500, 2000], BUSINESSES: [0, 1, 0, 0, 0]}
    assert response.node_audit_index == 0 and response.node_audit_leaf_hash == b"\x07" * 32
    [event] = audit.events
    assert event["kind"] == "node_response" and event["subjects"] == SUBJECTS
    assert event["elements"] == [INCOME, BUSINESSES] and event["actor_agency"] == "civil_affairs"


def test_he_mode_encrypts_each_chunk_with_a_digest(requester_keys: Any) -> None:
    import hashlib

    node, _, audit = _node()
    subjects = [pseudo(i) for i in range(SLOTS + 3)]  # two chunks
    response = node.encrypt_values(
        _request(subjects, mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    )
    [element] = response.elements
    assert len(element.ciphertexts) == 2 and not element.plain_values
    for blob, digest in zip(element.ciphertexts, element.ciphertext_sha256, strict=True):
        assert hashlib.sha256(blob).digest() == digest
    tail = requester_keys.decrypt_masked(element.ciphertexts[1], 3)
    assert list(tail) == [0, 0, 0]  # subjects the store does not hold: if_missing
    head = requester_keys.decrypt_masked(element.ciphertexts[0], SLOTS)
    assert list(head[:5]) == [0, 500, 1000, 1500, 2000]
    assert audit.events[0]["response_sha256"] == [d.hex() for d in element.ciphertext_sha256]


def test_padded_mode_answers_x_minus_rho_and_sends_the_pads_only_when_opening(requester_keys: Any) -> None:
    import hashlib

    from crypto.he import PLAIN_MODULUS
    from crypto.pads import new_batch_id

    node, _, audit = _node()
    batch = new_batch_id()

    def padded_request(offset: int, open_: bool) -> node_pb2.EncryptRequest:
        request = _request(
            SUBJECTS[:2], ((INCOME, 0), (BUSINESSES, 0)), node_pb2.EXCHANGE_MODE_HE, requester_keys.public_context
        )
        request.replicas, request.pad_batch, request.pad_offset, request.pad_open = 3, batch, offset, open_
        return request

    opened = node.encrypt_values(padded_request(0, True))
    pads = {}
    for element in opened.elements:
        assert hashlib.sha256(element.pad_ciphertext).digest() == element.pad_ciphertext_sha256
        assert not element.ciphertexts and len(element.padded_values) == 2 * 3
        pads[element.element] = requester_keys.decrypt_masked(element.pad_ciphertext, SLOTS)
    later = node.encrypt_values(padded_request(6, False))
    stored = {INCOME: [0, 500] * 3, BUSINESSES: [0, 1] * 3}
    for response, start in ((opened, 0), (later, 6)):
        for element in response.elements:
            rho = pads[element.element][start : start + 6]
            got = [(int(y) + int(p)) % PLAIN_MODULUS for y, p in zip(element.padded_values, rho, strict=True)]
            assert got == stored[element.element]
    assert not any(e.pad_ciphertext for e in later.elements)
    first, second = audit.events  # both validate as the node's audit records
    assert first["pad_open"] and first["pad_offset"] == 0 and len(first["response_sha256"]) == 2
    assert not second["pad_open"] and second["pad_offset"] == 6 and second["response_sha256"] == []
    assert first["pad_batch"] == second["pad_batch"] == batch.hex() and len(second["padded_sha256"]) == 2


def test_pad_fields_are_refused_outside_a_padded_he_request(requester_keys: Any) -> None:
    node, store, audit = _node()
    plain = _request()
    plain.pad_batch = b"\x01" * 16
    with pytest.raises(InvalidInput, match="HE exchange mode only"):
        node.encrypt_values(plain)
    orphan = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    orphan.pad_offset = 3
    with pytest.raises(InvalidInput, match="need a pad_batch"):
        node.encrypt_values(orphan)
    assert not store.reads and not audit.events


REFUSALS = [
    ("no request id", _request(request_id=""), InvalidInput, "lacks request_id"),
    ("no legal basis", _request(legal_basis="", case_id=""), InvalidInput, "lacks legal_basis, case_id"),
    ("no subjects", _request(subjects=[]), InvalidInput, "no subjects"),
    ("malformed pseudonym", _request(subjects=["NOT-A-PSEUDONYM"]), InvalidInput, "26 lower-case"),
    ("repeated subject", _request(subjects=[SUBJECTS[0], SUBJECTS[0]]), InvalidInput, "repeats a subject"),
    ("no elements", _request(elements=[]), InvalidInput, "no data elements"),
    ("repeated element", _request(elements=[(INCOME, 0), (INCOME, 0)]), InvalidInput, "repeats a data element"),
    ("unknown element", _request(elements=[("tax.other", 0)]), InvalidInput, "offers no data element 'tax.other'"),
    ("if_missing out of range", _request(elements=[(BUSINESSES, 101)]), InvalidInput, "outside its range"),
    ("unknown mode", _request(mode=node_pb2.EXCHANGE_MODE_UNSPECIFIED), InvalidInput, "HE or PLAINTEXT"),
    ("floor above clamp", _clamped(1101, floor=1102), InvalidInput, "floor_at for 'tax.monthly_income' is above"),
]


@pytest.mark.parametrize(("label", "request_", "error", "match"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_malformed_requests_are_refused_before_any_read(
    label: str, request_: node_pb2.EncryptRequest, error: type[XgateError], match: str
) -> None:
    node, store, audit = _node()
    with pytest.raises(error, match=match):
        node.encrypt_values(request_)
    assert store.reads == [] and audit.events == []


def test_oversized_request_is_413() -> None:
    node, store, audit = _node(max_subjects=4)
    with pytest.raises(PayloadTooLarge, match="5 subjects exceed this node's limit 4") as info:
        node.encrypt_values(_request())
    assert info.value.http_status == 413 and info.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert store.reads == [] and audit.events == []


def test_plaintext_mode_is_refused_unless_configured() -> None:
    node, store, audit = _node(allow_plaintext_mode=False)
    with pytest.raises(PolicyDenied, match="plaintext exchange mode is disabled"):
        node.encrypt_values(_request())
    assert store.reads == [] and audit.events == []


def test_foreign_he_parameters_are_refused(requester_keys: Any) -> None:
    node, store, audit = _node()
    request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    request.he_params_id = "bfv-n4096"
    with pytest.raises(InvalidInput, match="unsupported HE parameters"):
        node.encrypt_values(request)
    assert store.reads == [] and audit.events == []


def test_the_nodes_own_policy_decides_before_any_read() -> None:
    asked: list[str] = []

    def deny(request: node_pb2.EncryptRequest) -> None:
        asked.append(request.context.request_id)
        raise PolicyDenied("access denied: no permit matched (deny by default)")

    node, store, audit = _node(authorize=deny)
    with pytest.raises(PolicyDenied, match="no permit matched"):
        node.encrypt_values(_request())
    assert asked == ["req-1"] and store.reads == [] and audit.events == []


def test_stored_values_outside_the_declared_range_are_refused_not_encrypted() -> None:
    store = _store()
    store.values[BUSINESSES][SUBJECTS[2]] = 101  # over the declared max 100: would break the masking bound
    node, _, audit = _node(store)
    with pytest.raises(IntegrityError, match="fall outside the declared range"):
        node.encrypt_values(_request(elements=[(BUSINESSES, 0)]))
    assert audit.events == []


GATEWAY = SigningKey.generate("gateway", "gateway")
TAX = SigningKey.generate("tax", "node")
HRSS = SigningKey.generate("hrss", "node")
RING = Keyring.of(GATEWAY, TAX, HRSS)


def _signed_node(**kw: Any) -> tuple[NodeService, FakeStore, Audit]:
    return _node(envelopes=Envelopes(TAX, RING), **kw)


def test_unsigned_request_is_refused_before_validation() -> None:
    node, store, audit = _signed_node()
    with pytest.raises(CryptoError):
        node.encrypt_values(_request(subjects=[]))  # malformed too: the envelope is checked first
    assert store.reads == [] and audit.events == []


def test_request_signed_by_another_party_than_the_gateway_is_refused() -> None:
    node, store, audit = _signed_node()
    request = _request()
    Envelopes(HRSS, RING).sign_request(request, "EncryptValues")  # a node's key, not the gateway's
    with pytest.raises(CryptoError):
        node.encrypt_values(request)
    assert store.reads == [] and audit.events == []


def test_tampered_or_replayed_request_is_refused() -> None:
    node, store, audit = _signed_node()
    gateway = Envelopes(GATEWAY, RING)
    tampered = _request()
    gateway.sign_request(tampered, "EncryptValues")
    tampered.pseudonyms.append(pseudo(99))
    with pytest.raises(CryptoError):
        node.encrypt_values(tampered)
    good = _request()
    digest = gateway.sign_request(good, "EncryptValues")
    response = node.encrypt_values(good)
    gateway.verify_response(response, "EncryptValues", digest, agency="tax")  # signed and bound
    with pytest.raises(CryptoError):
        node.encrypt_values(good)  # the same signed request again
    assert len(audit.events) == 1 and store.reads == [INCOME]  # only the good request was served


def test_a_node_that_is_not_a_witness_refuses_to_cosign() -> None:
    node, _, _ = _node()
    with pytest.raises(PolicyDenied, match="does not witness"):
        node.cosign(node_pb2.CosignRequest(checkpoint=b"note", old_size=0))


def test_health_and_describe_report_without_values() -> None:
    node, store, _ = _node()
    assert node.health().subjects == 5 and node.health().agency == "tax"
    described = node.describe()
    assert sorted(e.id for e in described.elements) == [INCOME, BUSINESSES]
    assert described.he_params_id == HE_PARAMS_ID and store.reads == []


def test_a_context_named_by_fingerprint_alone_is_asked_for_until_its_bytes_came(requester_keys: Any) -> None:
    from crypto.he import RequesterKeys, context_fingerprint
    from xgate.errors import ContextUnknown

    node, store, audit = _node()
    fresh = RequesterKeys.generate()  # in no process cache yet
    ref = context_fingerprint(fresh.public_context)
    by_name = _request(mode=node_pb2.EXCHANGE_MODE_HE)
    by_name.context_fingerprint = ref
    with pytest.raises(ContextUnknown) as info:
        node.encrypt_values(by_name)
    assert info.value.grpc_status == "NOT_FOUND" and info.value.details["context_fingerprint"] == ref
    assert store.reads == [] and audit.events == []
    with_bytes = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=fresh.public_context)
    with_bytes.context_fingerprint = ref
    node.encrypt_values(with_bytes)
    answer = node.encrypt_values(by_name)  # cached by fingerprint now
    assert fresh.decrypt_masked(answer.elements[0].ciphertexts[0], len(SUBJECTS)).tolist()[:2] == [0, 500]


def test_bytes_that_do_not_match_their_fingerprint_are_refused(requester_keys: Any) -> None:
    """Context substitution: the bytes sent must hash to the fingerprint the check names."""
    from crypto.he import RequesterKeys, context_fingerprint

    node, store, audit = _node()
    request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=RequesterKeys.generate().public_context)
    request.context_fingerprint = context_fingerprint(requester_keys.public_context)
    with pytest.raises(CryptoError, match="does not match its context_fingerprint"):
        node.encrypt_values(request)
    assert store.reads == [] and audit.events == []


def test_he_mode_without_any_context_is_refused() -> None:
    node, store, audit = _node()
    with pytest.raises(InvalidInput, match="public_context or its context_fingerprint"):
        node.encrypt_values(_request(mode=node_pb2.EXCHANGE_MODE_HE))
    assert store.reads == [] and audit.events == []


def test_replicas_repeat_each_subjects_values_in_one_ciphertext(requester_keys: Any) -> None:
    node, _, _ = _node()
    request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    request.replicas = 3
    [element] = node.encrypt_values(request).elements
    assert len(element.ciphertexts) == 1
    values = requester_keys.decrypt_masked(element.ciphertexts[0], 3 * len(SUBJECTS)).tolist()
    assert values == [0, 500, 1000, 1500, 2000] * 3


def test_replicas_beyond_the_slots_are_refused_before_any_read(requester_keys: Any) -> None:
    node, store, audit = _node()
    request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    request.replicas = SLOTS
    with pytest.raises(InvalidInput, match="replicas"):
        node.encrypt_values(request)
    assert store.reads == [] and audit.events == []


def test_a_clamped_element_is_encoded_within_its_clamp_and_says_so(requester_keys: Any) -> None:
    node, _, _ = _node()
    [plain] = node.encrypt_values(_clamped(1101)).elements
    assert list(plain.plain_values) == [0, 500, 1000, 1101, 1101] and plain.clamped_at == 1101
    assert not plain.HasField("floored_at")
    [sign_only] = node.encrypt_values(_clamped(1001, floor=1000)).elements
    assert list(sign_only.plain_values) == [1000, 1000, 1000, 1001, 1001]
    assert (sign_only.floored_at, sign_only.clamped_at) == (1000, 1001)
    [whole] = node.encrypt_values(_clamped(None)).elements
    assert list(whole.plain_values) == [0, 500, 1000, 1500, 2000]
    assert not whole.HasField("clamped_at") and not whole.HasField("floored_at")
    [he] = node.encrypt_values(_clamped(1101, node_pb2.EXCHANGE_MODE_HE, requester_keys.public_context)).elements
    assert list(requester_keys.decrypt_masked(he.ciphertexts[0], 5)) == [0, 500, 1000, 1101, 1101]
    assert he.clamped_at == 1101


def test_value_tags_follow_the_values_and_only_come_with_he(requester_keys: Any) -> None:
    node, store, _ = _node()
    plain = _request()
    plain.value_tag_epoch = 3
    with pytest.raises(InvalidInput, match="value tags are for the HE exchange mode only"):
        node.encrypt_values(plain)

    def tags() -> bytes:
        request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
        request.value_tag_epoch = 3
        (element,) = node.encrypt_values(request).elements
        return element.value_tags

    first = tags()
    assert len(first) == 8 * len(SUBJECTS) and tags() == first
    store.values[INCOME][SUBJECTS[2]] += 1  # one subject's value changes: its tag alone
    moved = tags()
    assert [moved[i : i + 8] != first[i : i + 8] for i in range(0, len(first), 8)] == [False, False, True, False, False]
    request = _request(mode=node_pb2.EXCHANGE_MODE_HE, public_context=requester_keys.public_context)
    assert not node.encrypt_values(request).elements[0].value_tags  # not asked: none sent


def test_value_tags_answer_no_threshold_question_and_follow_the_nodes_own_period(requester_keys: Any) -> None:
    """A curious gateway asked with clamps [t, t + 1] at two times and compared the tags: with tags
    of the clamped values, a changed tag said the value had crossed t (review 2026-12-06, a grid of
    51 probes read old and new values to 50 CNY). Tags now cover the stored value, whatever the
    clamp, and the node's own 30-day period, whatever epoch the gateway names."""
    now = [1_000.0]
    node, _, _ = _node(clock=lambda: now[0])

    def tags(clamp: int | None, epoch: int = 3) -> bytes:
        request = _clamped(clamp, node_pb2.EXCHANGE_MODE_HE, requester_keys.public_context)
        request.value_tag_epoch = epoch
        (element,) = node.encrypt_values(request).elements
        return element.value_tags

    probes = {tags(t) for t in (None, 100, 499, 500, 501, 1_500, 10_000)}
    assert len(probes) == 1  # the clamps asked for tell nothing: one tag for every probe
    now[0] += 30 * 86400  # the node's next period: the gateway cannot hold an epoch still
    assert tags(None) not in probes and tags(None, epoch=3) == tags(None)


def test_value_tags_say_nothing_of_whom_the_node_holds_whatever_default_is_named(requester_keys: Any) -> None:
    """Third review: a tag of the default a missing subject is encrypted with let a gateway asking
    with two defaults read whom the node holds (the tags of held subjects stayed, the others moved)."""
    node, _, _ = _node()

    def tags(if_missing: int) -> list[bytes]:
        request = _request(
            elements=((BUSINESSES, if_missing),), mode=node_pb2.EXCHANGE_MODE_HE,
            public_context=requester_keys.public_context,
        )  # fmt: skip
        request.value_tag_epoch = 3
        (element,) = node.encrypt_values(request).elements
        return [element.value_tags[i : i + 8] for i in range(0, len(element.value_tags), 8)]

    assert tags(0) == tags(1)  # held or not, one tag whatever default the gateway names
