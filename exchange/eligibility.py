"""The gateway's eligibility core (no I/O): plan the fan-out, validate node answers, combine.

The gateway sees pseudonyms, ciphertexts and sizes. It never holds the HE secret key or the
pseudonym key, and it derives the masks itself, so neither the nodes nor the requester can
choose them. In the PLAINTEXT baseline mode the same pipeline runs on raw values, as agencies
exchange data today; it exists only to measure what HE costs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crypto.he import HE_PARAMS_ID, PLAIN_MODULUS, SLOTS, Ciphertext, FloodTerm, PublicContext, chunk_count
from crypto.masks import derive_masks, derive_permutations, derive_sign_masks
from crypto.value_tags import split_tags
from exchange.cohort import flip_masks
from policies.programs import NO_CLAMP, Clamp, Criterion, Program, Term
from protos.xgate.v1 import node_pb2
from xgate.errors import NodeProtocolError, XgateError


@dataclass(frozen=True)
class CheckScope:
    """Who asks and why; copied into every fan-out call."""

    request_id: str
    requester_agency: str
    requester_user: str
    requester_role: str
    requester_tier: str
    purpose: str
    legal_basis: str
    case_id: str
    consent_ref: str = ""
    approval_ref: str = ""
    policy_set_hash: str = ""
    consent_artefact: str = ""
    approval_artefact: str = ""
    requester_statement: str = ""  # the requesting user's signed statement (policies/check_statements.py)


@dataclass(frozen=True)
class CriterionOutcome:
    criterion: str
    ciphertexts: tuple[bytes, ...] = ()  # HE mode: masked, one per chunk
    passes: tuple[bool, ...] = ()  # PLAINTEXT baseline only
    block: int | None = None  # packed HE result: this criterion's slot block in the one shared ciphertext


def _request_context(program: Program, scope: CheckScope) -> node_pb2.RequestContext:
    return node_pb2.RequestContext(
        request_id=scope.request_id,
        requester_agency=scope.requester_agency,
        requester_user=scope.requester_user,
        requester_role=scope.requester_role,
        requester_tier=scope.requester_tier,
        purpose=scope.purpose,
        legal_basis=scope.legal_basis,
        case_id=scope.case_id,
        program_id=program.id,
        program_version=program.version,
        consent_ref=scope.consent_ref,
        approval_ref=scope.approval_ref,
        policy_set_hash=scope.policy_set_hash,
        consent_artefact=scope.consent_artefact,
        approval_artefact=scope.approval_artefact,
        requester_statement=scope.requester_statement,
    )


def _requests_for(
    grouped: Mapping[str, Sequence[Term]],
    context: node_pb2.RequestContext,
    pseudonyms: Sequence[str],
    mode: node_pb2.ExchangeMode,
    context_fingerprint: str,
    replicas: int = 0,
    clamps: Mapping[str, Clamp] | None = None,
    value_tag_epoch: int | None = None,
) -> dict[str, node_pb2.EncryptRequest]:
    clamps = clamps or {}
    he = mode == node_pb2.EXCHANGE_MODE_HE
    return {
        agency: node_pb2.EncryptRequest(
            context=context,
            mode=mode,
            pseudonyms=list(pseudonyms),
            elements=[_query(t, clamps.get(t.element, NO_CLAMP)) for t in terms],
            he_params_id=HE_PARAMS_ID if he else "",
            context_fingerprint=context_fingerprint if he else "",
            replicas=replicas if he else 0,
            value_tag_epoch=value_tag_epoch if he else None,
        )
        for agency, terms in grouped.items()
    }


def _query(term: Term, clamp: Clamp) -> node_pb2.ElementQuery:
    query = node_pb2.ElementQuery(element=term.element, if_missing=term.if_missing)
    if clamp.ceiling is not None:
        query.clamp_at = clamp.ceiling
    if clamp.floor is not None:
        query.floor_at = clamp.floor
    return query


def build_requests(
    program: Program,
    scope: CheckScope,
    pseudonyms: Sequence[str],
    mode: node_pb2.ExchangeMode,
    context_fingerprint: str,
    replicas: int = 0,
    epoch: int | None = None,
) -> dict[str, node_pb2.EncryptRequest]:
    """One EncryptRequest per agency whose data elements the program reads. HE requests name the
    requester's context by fingerprint only; the fan-out attaches its bytes for a node that asks.
    `replicas`: a small batch's values repeated once per criterion (see combine_he_packed).
    Each element goes with its clamp (policies/programs.py; the same in the per-criterion and
    overall views): single terms to the sign alone, sums' terms just past their thresholds.
    HE requests ask for value tags of the masking `epoch` (required there: see `value_tags_of`)."""
    if mode == node_pb2.EXCHANGE_MODE_HE and epoch is None:
        raise ValueError("an HE check names its masking epoch: the nodes tag their values for it")
    context = _request_context(program, scope)
    clamps = program.element_clamps()
    grouped = program.elements_by_agency()
    return _requests_for(grouped, context, pseudonyms, mode, context_fingerprint, replicas, clamps, epoch)


def build_cohort_requests(
    program: Program,
    scope: CheckScope,
    orders: Sequence[Sequence[str]],
    context_fingerprint: str,
) -> list[dict[str, node_pb2.EncryptRequest]]:
    """The cohort view's fan-out: per criterion, one EncryptRequest per agency holding one of its
    terms, with the subjects in that criterion's own order (only the gateway knows the orders).

    Slot j of one criterion and slot j of another then belong to unrelated people: no slot
    links a person's verdicts across criteria. An element read by two criteria is encrypted
    once per criterion; the shipped programs read each element once, so the nodes encrypt as
    much as before and only the number of calls grows (one per criterion and agency).
    """
    if len(orders) != len(program.criteria):
        raise ValueError("one subject order per criterion")
    context = _request_context(program, scope)
    clamps = dict(program.cohort_clamps)  # single terms sign-only, sums at their mirror ceilings
    plans = []
    for criterion, order in zip(program.criteria, orders, strict=True):
        grouped: dict[str, list[Term]] = {}
        for term in criterion.terms:
            grouped.setdefault(term.element.split(".")[0], []).append(term)
        plans.append(_requests_for(grouped, context, order, node_pb2.EXCHANGE_MODE_HE, context_fingerprint, 0, clamps))
    return plans


def _check_envelope(agency: str, request: node_pb2.EncryptRequest, response: node_pb2.EncryptResponse) -> None:
    if response.agency != agency:
        raise NodeProtocolError(agency, f"answered as agency '{response.agency}'")
    if response.request_id != request.context.request_id:
        raise NodeProtocolError(agency, "answered another request")
    asked = [q.element for q in request.elements]
    got = [e.element for e in response.elements]
    if sorted(asked) != sorted(got) or len(set(got)) != len(got):
        raise NodeProtocolError(agency, "answered for other data elements than asked")
    asked_clamps = {q.element: query_clamp(q) for q in request.elements}
    for element in response.elements:
        clamp = asked_clamps[element.element]
        if _answered_clamp(element) != clamp:
            # A node that predates clamping ignores the clamp and sends whole values, which can pass
            # the span the masks were fitted to (the masked sign would wrap): refuse the answer.
            raise NodeProtocolError(
                agency,
                f"did not clamp '{element.element}' to {clamp.label} as asked "
                "(a node that predates clamping: upgrade it)",
            )


def query_clamp(query: node_pb2.ElementQuery) -> Clamp:
    """The clamp a request asks a node to apply to one element (NO_CLAMP when it names none)."""
    return Clamp(
        query.floor_at if query.HasField("floor_at") else None, query.clamp_at if query.HasField("clamp_at") else None
    )


def echo_clamp(element: node_pb2.ElementValues, query: node_pb2.ElementQuery) -> node_pb2.ElementValues:
    """A node's answer for one element says which clamp it applied (checked by `_check_envelope`)."""
    if query.HasField("clamp_at"):
        element.clamped_at = query.clamp_at
    if query.HasField("floor_at"):
        element.floored_at = query.floor_at
    return element


def _answered_clamp(element: node_pb2.ElementValues) -> Clamp:
    return Clamp(
        element.floored_at if element.HasField("floored_at") else None,
        element.clamped_at if element.HasField("clamped_at") else None,
    )


def validate_he_response(
    agency: str,
    request: node_pb2.EncryptRequest,
    response: node_pb2.EncryptResponse,
    context: PublicContext,
) -> dict[str, list[Ciphertext]]:
    """Every chunk present, digest-consistent, and a valid ciphertext of the right size."""
    _check_envelope(agency, request, response)
    subjects = len(request.pseudonyms) * max(1, request.replicas)
    expected = chunk_count(subjects)
    sizes = [min(SLOTS, subjects - i * SLOTS) for i in range(expected)]
    out: dict[str, list[Ciphertext]] = {}
    for element in response.elements:
        if len(element.ciphertexts) != expected or len(element.ciphertext_sha256) != expected:
            raise NodeProtocolError(agency, f"sent {len(element.ciphertexts)} chunks for '{element.element}'")
        loaded = []
        for blob, digest, size in zip(element.ciphertexts, element.ciphertext_sha256, sizes, strict=True):
            if hashlib.sha256(blob).digest() != digest:
                raise NodeProtocolError(agency, f"ciphertext digest mismatch for '{element.element}'")
            try:
                loaded.append(context.load(blob, size))
            except XgateError as exc:
                raise NodeProtocolError(
                    agency, f"sent an invalid ciphertext for '{element.element}': {exc.message}"
                ) from exc
        out[element.element] = loaded
    return out


def value_tags_of(
    plan: Mapping[str, node_pb2.EncryptRequest], responses: Mapping[str, node_pb2.EncryptResponse]
) -> dict[str, list[bytes]]:
    """Each element's value tags, one per subject in request order (crypto/value_tags.py), from
    answers to requests that asked for them; a node that sent none, or the wrong number, is named."""
    out: dict[str, list[bytes]] = {}
    for agency, response in responses.items():
        request = plan[agency]
        if not request.HasField("value_tag_epoch"):
            continue
        for element in response.elements:
            if not element.value_tags:
                raise NodeProtocolError(
                    agency,
                    f"sent no value tags for '{element.element}' (a node that predates value tags: upgrade it)",
                )
            try:
                out[element.element] = split_tags(element.value_tags, len(request.pseudonyms))
            except ValueError as exc:
                raise NodeProtocolError(agency, f"value tags for '{element.element}': {exc}") from None
    return out


def _subject_data(tags: Mapping[str, Sequence[bytes]], elements: Sequence[str], subjects: int) -> list[bytes]:
    """Per subject, the tags of `elements` (sorted, so programs listing the same terms in another
    order agree): what the masks of a comparison over those elements are keyed to."""
    ordered = sorted(set(elements))
    missing = [e for e in ordered if e not in tags]
    if missing:
        raise ValueError(f"no value tags for {', '.join(missing)}")
    return [b"".join(tags[e][j] for e in ordered) for j in range(subjects)]


def attach_pads(requests: Mapping[str, node_pb2.EncryptRequest], batch: bytes, offset: int, opens: bool) -> None:
    """Point a small packed check's requests at its window of a one-time pad batch (exchange/pads.py)."""
    for request in requests.values():
        request.pad_batch = batch
        request.pad_offset = offset
        request.pad_open = opens


def _refuse_unpadded(agency: str, element: node_pb2.ElementValues) -> None:
    """A node not yet upgraded ignores the pad fields and answers with fresh ciphertexts: say so."""
    if element.ciphertexts and not element.padded_values:
        raise NodeProtocolError(
            agency,
            f"answered '{element.element}' with ciphertexts, not padded values: the node predates one-time "
            "pads (upgrade it, or set one_time_pads = false at the gateway)",
        )


def collect_pads(
    requests: Mapping[str, node_pb2.EncryptRequest], responses: Mapping[str, node_pb2.EncryptResponse]
) -> dict[str, bytes]:
    """The pad ciphertexts the nodes opened a batch with, one per element, digest-checked. (They
    are loaded and checked as ciphertexts where they are used: PublicContext.load_pad.)"""
    out: dict[str, bytes] = {}
    for agency, response in responses.items():
        _check_envelope(agency, requests[agency], response)
        for element in response.elements:
            _refuse_unpadded(agency, element)
            if not element.pad_ciphertext:
                raise NodeProtocolError(agency, f"opened the pad batch without a pad for '{element.element}'")
            if hashlib.sha256(element.pad_ciphertext).digest() != element.pad_ciphertext_sha256:
                raise NodeProtocolError(agency, f"pad ciphertext digest mismatch for '{element.element}'")
            out[element.element] = element.pad_ciphertext
    return out


def validate_padded_response(
    agency: str, request: node_pb2.EncryptRequest, response: node_pb2.EncryptResponse
) -> dict[str, np.ndarray]:
    """Each element's x - rho mod t for the request's window: one value per slot, each in (-t/2, t/2]."""
    _check_envelope(agency, request, response)
    expected = len(request.pseudonyms) * max(1, request.replicas)
    half = PLAIN_MODULUS // 2
    out: dict[str, np.ndarray] = {}
    for element in response.elements:
        values = element.padded_values
        _refuse_unpadded(agency, element)
        if len(values) != expected:
            raise NodeProtocolError(agency, f"sent {len(values)} padded values for '{element.element}', not {expected}")
        if any(not -half <= v <= half for v in values):
            raise NodeProtocolError(agency, f"sent a padded value for '{element.element}' outside the plaintext ring")
        out[element.element] = np.asarray(list(values), dtype=object)
    return out


def validate_plain_response(
    agency: str, request: node_pb2.EncryptRequest, response: node_pb2.EncryptResponse
) -> dict[str, np.ndarray]:
    _check_envelope(agency, request, response)
    out: dict[str, np.ndarray] = {}
    for element in response.elements:
        if len(element.plain_values) != len(request.pseudonyms):
            raise NodeProtocolError(agency, f"sent {len(element.plain_values)} values for '{element.element}'")
        out[element.element] = np.asarray(element.plain_values, dtype=np.int64)
    return out


def _chunk_terms(criterion: Criterion, ciphertexts: Mapping[str, list[Ciphertext]], chunk: int) -> list[Ciphertext]:
    return [ciphertexts[t.element][chunk] for t in criterion.terms]


def criterion_masks(
    program: Program,
    mask_key: bytes,
    epoch: int,
    pseudonyms: Sequence[str],
    hide_order: bool,
    *,
    tags: Mapping[str, Sequence[bytes]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each criterion's (r, s') per subject. Keyed to the question, so a second program asking it
    gets the same values, no fresh sample; except in the overall view (`hide_order`), where the
    program is keyed in too: there, values equal across two programs would let the requester pair
    up the criteria they share and so name the one left over, i.e. which criterion failed. For the
    same reason a sign-only criterion's value there is shaped like the program's sum
    (`Program.overall_look`, crypto.masks.derive_sign_masks).

    Keyed to the values compared as well (`tags`, the nodes' value tags): a value that changed
    within the epoch gets fresh masks, or two checks around the change would give r and so the
    exact difference. Per criterion its own terms' tags; in the overall view every term's, since
    positions whose values stayed put would otherwise be matched across the two results, naming
    the one that moved."""
    view = f"\x00overall-view\x00{program.id}" if hide_order else ""
    n = len(pseudonyms)
    everything = _subject_data(tags, [t.element for t in program.elements()], n) if hide_order else None
    masks = []
    for i, c in enumerate(program.criteria):
        # Fitted to the span the clamps leave (build_requests), keyed with those clamps.
        question = f"{c.question}{view}\x00clamped\x00{program.clamp_label(i)}"
        data = everything if everything is not None else _subject_data(tags, [t.element for t in c.terms], n)
        look = program.overall_look(i) if hide_order else None
        if look is None:
            masks.append(derive_masks(mask_key, question, epoch, pseudonyms, program.clamped_span(i), data))
        else:
            masks.append(derive_sign_masks(mask_key, question, epoch, pseudonyms, *look, data=data))
    return masks


def _order(
    program: Program, mask_key: bytes, epoch: int, pseudonyms: Sequence[str], tags: Mapping[str, Sequence[bytes]]
) -> np.ndarray:
    """The overall view's per-subject order of the criteria, drawn afresh when any value changes."""
    data = _subject_data(tags, [t.element for t in program.elements()], len(pseudonyms))
    return derive_permutations(mask_key, program.id, epoch, pseudonyms, len(program.criteria), data)


def combine_he(
    program: Program,
    pseudonyms: Sequence[str],
    context: PublicContext,
    ciphertexts: Mapping[str, list[Ciphertext]],
    mask_key: bytes,
    epoch: int,
    hide_order: bool = False,
    flood: bool = True,
    floods: Sequence[FloodTerm] | None = None,
    *,
    tags: Mapping[str, Sequence[bytes]],
) -> list[CriterionOutcome]:
    """Per criterion: Enc(r*d + s') per chunk, masks keyed to (question, epoch, subject, value tags).

    The question is what the criterion compares (Criterion.question), not the program: two
    programs asking it in the same epoch get the same masked values, never a fresh sample (in the
    overall view the program is keyed in as well, see `criterion_masks`).

    With `hide_order` (the "overall verdict" view) output position i of subject j holds criterion
    order[j][i] instead of criterion i: the requester learns the verdict and how many criteria
    failed, not which. The permutation is folded into the masking product (see masked_combination).
    `floods` are flood terms prepared ahead (see flood_counts), one per result ciphertext in
    criterion-major, chunk-minor order; without them each result is flooded here.
    `flood=False` skips noise flooding: only for measuring what flooding costs (bench/privacy.py).
    `tags`: the nodes' value tags per element (`value_tags_of`), folded into the masks.
    """
    masks = criterion_masks(program, mask_key, epoch, pseudonyms, hide_order, tags=tags)
    k = len(program.criteria)
    order = _order(program, mask_key, epoch, pseudonyms, tags) if hide_order and k > 1 else None
    outcomes = []
    prepared = iter(floods) if floods is not None else None
    if floods is not None and len(floods) != len(flood_counts(program, len(pseudonyms))):
        raise ValueError("one prepared flood term per result ciphertext")
    for i, criterion in enumerate(program.criteria):
        masked = []
        for chunk, start in enumerate(range(0, len(pseudonyms), SLOTS)):
            window = slice(start, start + SLOTS)
            noise: bool | FloodTerm = next(prepared) if prepared is not None else flood
            if order is None:
                r, s = masks[i]
                terms = _chunk_terms(criterion, ciphertexts, chunk)
                masked.append(
                    context.mask_criterion(
                        terms, criterion.direction, criterion.bound, r[window], s[window], flood=noise
                    )
                )
                continue
            picks = order[window, i]
            groups, weights = [], []
            offset = np.zeros(len(picks), dtype=object)  # Python integers: r*bound may pass 64 bits
            for m, other in enumerate(program.criteria):
                chosen = picks == m
                r, s = (x[window] for x in masks[m])
                weights.append(np.where(chosen, other.direction * r, 0))
                offset += np.where(chosen, s.astype(object) - other.direction * r.astype(object) * other.bound, 0)
                groups.append(_chunk_terms(other, ciphertexts, chunk))
            masked.append(context.masked_combination(groups, weights, offset, flood=noise))
        name = criterion.id if order is None else f"position_{i + 1}"
        outcomes.append(CriterionOutcome(name, ciphertexts=tuple(masked)))
    return outcomes


def combine_cohort_he(
    program: Program,
    orders: Sequence[Sequence[str]],
    context: PublicContext,
    ciphertexts: Sequence[Mapping[str, list[Ciphertext]]],
    mask_key: bytes,
    epoch: int,
    flips: Sequence[np.ndarray],
    floods: Sequence[FloodTerm] | None = None,
) -> list[CriterionOutcome]:
    """The cohort view: criterion i's slots in orders[i], each slot's sign flipped where flips[i] says.

    `ciphertexts[i]` holds criterion i's terms as the nodes encrypted them in orders[i]; the masks
    are derived for that order (a fresh `epoch` per query), and a flipped slot masks the negated
    comparison (exchange/cohort.py flip_masks), so its decrypted sign is the opposite verdict.
    """
    n = len(orders[0]) if orders else 0
    if not (len(orders) == len(ciphertexts) == len(flips) == len(program.criteria)):
        raise ValueError("one order, one set of ciphertexts and one flip vector per criterion")
    if any(len(o) != n for o in orders) or any(len(f) != n for f in flips):
        raise ValueError("every criterion's order and flips cover the same subjects")
    if floods is not None and len(floods) != len(flood_counts(program, n)):
        raise ValueError("one prepared flood term per result ciphertext")
    prepared = iter(floods) if floods is not None else None
    outcomes = []
    for i, criterion in enumerate(program.criteria):
        r, s = derive_masks(mask_key, criterion.question, epoch, orders[i], program.cohort_span(i))
        weight, offset = flip_masks(criterion.direction, criterion.bound, r, s, flips[i])
        masked = []
        for chunk, start in enumerate(range(0, n, SLOTS)):
            window = slice(start, start + SLOTS)
            noise: bool | FloodTerm = next(prepared) if prepared is not None else True
            terms = _chunk_terms(criterion, ciphertexts[i], chunk)
            masked.append(context.masked_combination([terms], [weight[window]], offset[window], flood=noise))
        outcomes.append(CriterionOutcome(criterion.id, ciphertexts=tuple(masked)))
    return outcomes


def packing(program: Program, subjects: int) -> int:
    """How many slot blocks a small batch packs into one result ciphertext (one per criterion),
    or 0 when the batch is too large for that (or there is one criterion): then one result
    ciphertext per criterion and chunk (combine_he)."""
    k = len(program.criteria)
    return k if k > 1 and subjects * k <= SLOTS else 0


def combine_he_packed(
    program: Program,
    pseudonyms: Sequence[str],
    context: PublicContext,
    ciphertexts: Mapping[str, list[Ciphertext]],
    mask_key: bytes,
    epoch: int,
    hide_order: bool = False,
    flood: bool | FloodTerm = True,
    padded: Mapping[str, np.ndarray] | None = None,
    first_block: int = 0,
    *,
    tags: Mapping[str, Sequence[bytes]],
) -> tuple[list[CriterionOutcome], bytes]:
    """combine_he for a small batch, all criteria in ONE result ciphertext.

    The nodes sent each element's values repeated once per criterion (`replicas`), so slot block
    b holds every subject's values. Block b of the result is Enc(r*d + s') of criterion b (or, with
    `hide_order`, subject j's block b holds criterion order[j][b]): the same masks, the same single
    plaintext product (masked_combination), k times fewer result bytes. Returns the outcomes
    (each naming its block, no ciphertexts of its own) and the shared ciphertext.

    With one-time pads (`padded`, exchange/pads.py) `ciphertexts` are the batch's pads Enc(rho),
    re-labelled to (first_block + k) * n slots, and `padded[element]` the nodes' x - rho for the
    window from slot first_block * n on: w * x = w * Enc(rho) + w * (x - rho), the second term a
    plaintext folded into the offset, so the product stays one deep. The criteria then sit in blocks
    first_block .. first_block + k - 1; the slots before them decrypt to 0 (their weight is 0).
    """
    n, k = len(pseudonyms), len(program.criteria)
    if packing(program, n) != k:
        raise ValueError("this batch does not pack into one ciphertext")
    if first_block and padded is None:
        raise ValueError("only a one-time-padded check starts past the first slot block")
    masks = criterion_masks(program, mask_key, epoch, pseudonyms, hide_order, tags=tags)
    order = _order(program, mask_key, epoch, pseudonyms, tags) if hide_order else None
    total = (first_block + k) * n
    window = slice(first_block * n, total)
    groups, weights = [], []
    offset = np.zeros(total, dtype=object)  # Python integers: r*bound may pass 64 bits
    for m, criterion in enumerate(program.criteria):
        r, s = masks[m]
        weight = np.zeros(total, dtype=np.int64)
        for b in range(k):
            chosen = order[:, b] == m if order is not None else np.full(n, b == m)
            block = slice((first_block + b) * n, (first_block + b + 1) * n)
            weight[block] = np.where(chosen, criterion.direction * r, 0)
            offset[block] += np.where(
                chosen, s.astype(object) - criterion.direction * r.astype(object) * criterion.bound, 0
            )
        if padded is not None:
            offset[window] += weight[window].astype(object) * sum(padded[t.element] for t in criterion.terms)
        weights.append(weight)
        groups.append([ciphertexts[t.element][0] for t in criterion.terms])
    packed = context.masked_combination(groups, weights, offset, flood=flood)
    names = [c.id if order is None else f"position_{b + 1}" for b, c in enumerate(program.criteria)]
    return [CriterionOutcome(name, block=first_block + b) for b, name in enumerate(names)], packed


def flood_counts(program: Program, subjects: int, packed: bool = False, first_block: int = 0) -> list[int]:
    """Slot counts of a check's result ciphertexts, in the order combine_he consumes flood terms."""
    if packed:
        return [(first_block + len(program.criteria)) * subjects]
    sizes = [min(SLOTS, subjects - start) for start in range(0, subjects, SLOTS)]
    return [size for _ in program.criteria for size in sizes]


def evaluate_plain(criterion: Criterion, values: Mapping[str, np.ndarray]) -> np.ndarray:
    total = sum((values[t.element] for t in criterion.terms), start=np.zeros_like(next(iter(values.values()))))
    return total >= criterion.bound if criterion.direction > 0 else total <= criterion.bound


def combine_plain(program: Program, values: Mapping[str, np.ndarray]) -> list[CriterionOutcome]:
    return [CriterionOutcome(c.id, passes=tuple(bool(x) for x in evaluate_plain(c, values))) for c in program.criteria]
