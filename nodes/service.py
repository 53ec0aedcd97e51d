"""The node's transport-free request handler: validate, decide, look up, range-check, encrypt.

The gRPC servicer only translates; everything a node promises happens here: it answers only
for data elements it offers, refuses values outside their declared range before encrypting
(the masking bound depends on it), refuses the plaintext mode unless configured for the
benchmark, and lets its own policy hook decide before touching data (the provider decides).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from crypto.he import HE_PARAMS_ID, SLOTS, PublicContext, centered, chunks, context_fingerprint
from crypto.masks import epoch_of
from crypto.pads import padded
from crypto.value_tags import NODE_PERIOD_S, value_tags
from exchange.cohort import COHORT_MEMBER_UNKNOWN
from exchange.eligibility import echo_clamp, query_clamp
from exchange.events import node_served
from nodes.pads import PadBook
from nodes.store import NodeStore
from protos.xgate.v1 import node_pb2
from xgate import __version__
from xgate.errors import (
    ContextUnknown,
    CryptoError,
    IntegrityError,
    InvalidInput,
    PayloadTooLarge,
    PolicyDenied,
    RequestCancelled,
)
from xgate.logging import get_logger
from xgate.pseudonym import validate_pseudonym

if TYPE_CHECKING:
    from crypto.envelope import Envelopes

log = get_logger("xgate.node")

REQUIRED_CONTEXT = ("request_id", "requester_agency", "purpose", "legal_basis", "case_id", "program_id")

# Hooks a deployment plugs in (policy decision, audit, envelope checks); defaults are no-ops
# only where the feature is optional, never for validation.
Authorizer = Callable[[node_pb2.EncryptRequest], None]
Auditor = Callable[[dict[str, object]], tuple[bytes, int]]


@dataclass
class NodeService:
    agency: str
    store: NodeStore
    max_subjects: int = 100_000
    allow_plaintext_mode: bool = False
    authorize: Authorizer | None = None
    audit: Auditor | None = None
    cosigner: Callable[[node_pb2.CosignRequest], node_pb2.CosignResponse] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    envelopes: Envelopes | None = None  # signed envelopes (required whenever TLS is on)
    gateway_agency: str = "gateway"
    # This store is the federation's register of people (the household/civil register): at the
    # bronze (cohort) tier it refuses a cohort naming anyone it does not know, without saying whom.
    civil_register: bool = False
    pads: PadBook = field(default_factory=PadBook)
    _offered: dict[str, tuple[int, int]] = field(default_factory=dict)
    _tag_key: bytes | None = field(default=None, repr=False)  # the store's value-tag key, read once
    clock: Callable[[], float] = time.time  # the node's own period for value tags

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self._offered = {s.element.id: (s.element.min, s.element.max) for s in self.store.elements()}

    def health(self) -> node_pb2.HealthResponse:
        return node_pb2.HealthResponse(
            agency=self.agency, status="serving", version=__version__, subjects=self.store.subject_count()
        )

    def describe(self) -> node_pb2.DescribeResponse:
        elements = [
            node_pb2.DataElement(
                id=s.element.id,
                type=s.element.type.value,
                unit=s.element.unit,
                min=s.element.min,
                max=s.element.max,
                classification=s.element.classification.value,
                description=s.element.description,
                records=s.records,
            )
            for s in self.store.elements()
        ]
        return node_pb2.DescribeResponse(
            agency=self.agency,
            elements=elements,
            computations=[f"he-encrypt/{HE_PARAMS_ID}", "he-pads/1", "flower-client/1"],
            he_params_id=HE_PARAMS_ID,
        )

    def cosign(self, request: node_pb2.CosignRequest) -> node_pb2.CosignResponse:
        """Witness the gateway's checkpoint (envelope first, then the witness's own checks)."""
        if self.envelopes is not None:
            self.envelopes.verify_request(request, "CosignCheckpoint", agency=self.gateway_agency, kinds={"gateway"})
        if self.cosigner is None:
            raise PolicyDenied("this node does not witness the gateway's log")
        response = self.cosigner(request)
        if self.envelopes is not None:
            self.envelopes.sign_response(response, "CosignCheckpoint", request)
        return response

    def _context(self, request: node_pb2.EncryptRequest) -> PublicContext:
        """The requester's public context: from the request's bytes (checked against its
        fingerprint, then cached), or from this process's cache by fingerprint alone; else
        ContextUnknown, and the gateway sends the bytes (a restarted node asks again)."""
        if request.he_params_id != HE_PARAMS_ID:
            raise InvalidInput(f"unsupported HE parameters '{request.he_params_id}', expected {HE_PARAMS_ID}")
        ref = request.context_fingerprint
        if request.public_context:
            if ref and context_fingerprint(request.public_context) != ref:
                raise CryptoError("public_context does not match its context_fingerprint")
            # Kept in the process's cache only once the request is authorized (encrypt_values).
            context = PublicContext.cached(request.public_context, remember=False)
            log.info("context_received", context=context.ref, bytes=len(request.public_context))
            return context
        if not ref:
            raise InvalidInput("HE mode needs the requester's public_context or its context_fingerprint")
        known = PublicContext.known(ref)
        if known is None:
            raise ContextUnknown("this node does not hold that HE context: send its bytes", context_fingerprint=ref)
        return known

    def _validate(self, request: node_pb2.EncryptRequest) -> None:
        ctx = request.context
        missing = [name for name in REQUIRED_CONTEXT if not getattr(ctx, name)]
        if missing:
            raise InvalidInput(f"request context lacks {', '.join(missing)}")
        if not request.pseudonyms:
            raise InvalidInput("request names no subjects")
        if len(request.pseudonyms) > self.max_subjects:
            raise PayloadTooLarge(f"{len(request.pseudonyms)} subjects exceed this node's limit {self.max_subjects}")
        for pseudonym in request.pseudonyms:
            validate_pseudonym(pseudonym)
        if len(set(request.pseudonyms)) != len(request.pseudonyms):
            raise InvalidInput("request repeats a subject")
        if request.replicas > 1 and len(request.pseudonyms) * request.replicas > SLOTS:
            raise InvalidInput(
                f"{request.replicas} replicas of {len(request.pseudonyms)} subjects exceed {SLOTS} slots"
            )
        if not request.elements:
            raise InvalidInput("request names no data elements")
        self._validate_he_options(request)
        names = [q.element for q in request.elements]
        if len(set(names)) != len(names):
            raise InvalidInput("request repeats a data element")
        for query in request.elements:
            if query.element not in self._offered:
                raise InvalidInput(f"this node offers no data element '{query.element}'")
            low, high = self._offered[query.element]
            if not low <= query.if_missing <= high:
                raise InvalidInput(f"if_missing for '{query.element}' is outside its range")
            if query.HasField("clamp_at") and query.HasField("floor_at") and query.floor_at > query.clamp_at:
                raise InvalidInput(f"floor_at for '{query.element}' is above its clamp_at")

    @staticmethod
    def _validate_he_options(request: node_pb2.EncryptRequest) -> None:
        if (request.pad_open or request.pad_offset) and not request.pad_batch:
            raise InvalidInput("pad_offset and pad_open need a pad_batch")
        if request.pad_batch and request.mode != node_pb2.EXCHANGE_MODE_HE:
            raise InvalidInput("one-time pads are for the HE exchange mode only")
        if request.HasField("value_tag_epoch") and request.mode != node_pb2.EXCHANGE_MODE_HE:
            raise InvalidInput("value tags are for the HE exchange mode only")

    def _stored(self, query: node_pb2.ElementQuery, pseudonyms: Sequence[str]) -> tuple[np.ndarray, list[int | None]]:
        """The element's values in request order, unclamped (its if_missing default for a subject
        without a record), and what is stored (None where nothing is)."""
        found = self.store.lookup(query.element, pseudonyms)
        held = [found.get(p) for p in pseudonyms]
        values = np.fromiter(
            (query.if_missing if v is None else v for v in held), dtype=np.int64, count=len(pseudonyms)
        )
        low, high = self._offered[query.element]
        if values.size and (values.min() < low or values.max() > high):
            # Stored data outside the declared range would break the masking bound: refuse. The
            # fault is this node's data, not the request (IntegrityError: the requester is not charged).
            raise IntegrityError(
                f"stored values of '{query.element}' fall outside the declared range;"
                " the node's operator must fix the data"
            )
        return values, held

    def _answer_for(
        self,
        response: node_pb2.EncryptResponse,
        request: node_pb2.EncryptRequest,
        query: node_pb2.ElementQuery,
    ) -> tuple[node_pb2.ElementValues, list[int]]:
        """The element's entry in the answer, echoing the clamp it applied, with the values' tags
        when the gateway asks (it masks a changed value afresh: crypto/value_tags.py), and the
        clamped values to send. The tags cover the stored values, not the clamped ones: clamps are
        the gateway's choice, and tags of clamped values would answer its threshold questions; nor
        the default a subject without a record is encrypted with, which the gateway names too (two
        defaults would tell it whom this node holds)."""
        stored, held = self._stored(query, request.pseudonyms)
        out = echo_clamp(response.elements.add(element=query.element), query)
        if request.HasField("value_tag_epoch"):
            if self._tag_key is None:
                self._tag_key = self.store.value_tag_key()
            period = epoch_of(self.clock(), NODE_PERIOD_S)  # the node's own: the gateway cannot hold it still
            out.value_tags = value_tags(
                self._tag_key, request.value_tag_epoch, period, query.element, request.pseudonyms, held
            )
        return out, [int(x) for x in query_clamp(query).apply_all(stored)]

    def _verify_members(self, pseudonyms: Sequence[str]) -> None:
        """Cohort members must be registered people: made-up members would carry predictable defaults."""
        if self.store.known(pseudonyms) != len(pseudonyms):
            log.info("cohort_unknown_member", subject_count=len(pseudonyms))
            raise PolicyDenied(
                "cohort refused: not every member is a person known to the civil register",
                refusal=COHORT_MEMBER_UNKNOWN,
            )

    def _answer_padded(
        self,
        request: node_pb2.EncryptRequest,
        context: PublicContext,
        pseudonyms: Sequence[str],
        response: node_pb2.EncryptResponse,
    ) -> None:
        """x - rho mod t for the request's window of its pad batch (each slot answered once), and
        Enc(rho) over every slot when the request opens the batch. No per-check encryption."""
        copies = max(1, request.replicas)
        elements = [q.element for q in request.elements]
        window = self.pads.take(
            request.pad_batch,
            context.ref,
            elements,
            request.pad_offset,
            len(pseudonyms) * copies,
            open_=request.pad_open,
        )
        for query in request.elements:
            out, own = self._answer_for(response, request, query)
            out.padded_values.extend(padded(own * copies, window.window(query.element)))
            if request.pad_open:
                blob = context.encrypt(centered(window.full(query.element)))
                out.pad_ciphertext = blob
                out.pad_ciphertext_sha256 = hashlib.sha256(blob).digest()

    def _authorize(self, request: node_pb2.EncryptRequest, context: PublicContext | None) -> None:
        """The node's own decision (the requester's statement first); a context that came with its
        bytes is kept for later checks naming it only once the request it came with is authorized."""
        if self.authorize is not None:
            self.authorize(request)
        if context is not None and request.public_context:
            PublicContext.remember(context)

    def encrypt_values(
        self, request: node_pb2.EncryptRequest, cancelled: Callable[[], bool] | None = None
    ) -> node_pb2.EncryptResponse:
        """`cancelled()` says the caller has gone (gRPC cancellation or deadline): the node then
        stops between ciphertexts instead of finishing work nobody will read."""
        started = time.perf_counter()

        def stop_if_cancelled() -> None:
            if cancelled is not None and cancelled():
                log.info("encrypt_cancelled", request_id=request.context.request_id)
                raise RequestCancelled("the gateway cancelled this request")

        if self.envelopes is not None:
            # Before anything else: only the federation gateway's fresh signature gets a node to work.
            self.envelopes.verify_request(request, "EncryptValues", agency=self.gateway_agency, kinds={"gateway"})
        self._validate(request)
        # Before the policy: a context this node does not hold is asked for, not decided on.
        context = self._context(request) if request.mode == node_pb2.EXCHANGE_MODE_HE else None
        stop_if_cancelled()
        self._authorize(request, context)
        pseudonyms = list(request.pseudonyms)
        if self.civil_register and request.context.requester_tier == "bronze":
            self._verify_members(pseudonyms)
        response = node_pb2.EncryptResponse(agency=self.agency, request_id=request.context.request_id)
        if request.mode == node_pb2.EXCHANGE_MODE_PLAINTEXT:
            if not self.allow_plaintext_mode:
                raise PolicyDenied("plaintext exchange mode is disabled on this node")
            for query in request.elements:
                out, values = self._answer_for(response, request, query)
                out.plain_values.extend(values)
        elif context is not None and request.pad_batch:
            self._answer_padded(request, context, pseudonyms, response)
        elif context is not None:
            copies = max(1, request.replicas)  # small batches: one slot block per criterion
            for query in request.elements:
                out, own = self._answer_for(response, request, query)
                for chunk in chunks(own * copies, SLOTS):
                    stop_if_cancelled()
                    blob = context.encrypt(chunk)
                    out.ciphertexts.append(blob)
                    out.ciphertext_sha256.append(hashlib.sha256(blob).digest())
        else:
            raise InvalidInput("exchange mode must be HE or PLAINTEXT")
        stop_if_cancelled()
        if self.audit is not None:
            leaf, index = self.audit(node_served(request, response))
            response.node_audit_leaf_hash = leaf
            response.node_audit_index = index
        if self.envelopes is not None:
            # Binds the answer to this request and makes the ciphertext digests non-repudiable.
            self.envelopes.sign_response(response, "EncryptValues", request)
        log.info(
            "encrypt_values",
            request_id=request.context.request_id,
            program=request.context.program_id,
            subject_count=len(pseudonyms),
            elements=len(request.elements),
            mode=node_pb2.ExchangeMode.Name(request.mode),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response
