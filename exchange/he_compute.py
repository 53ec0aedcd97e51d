"""Where a check's homomorphic arithmetic runs: the port, the job it is given, and the inline runner.

TenSEAL holds the GIL for the whole of each operation (measured: a thread multiplying BFV vectors
left a pure-Python loop in another thread 19 % of its speed). Run in the gateway's threads, the HE
combine of the checks in flight starved its event loop: under 1,000 clients a refusal took 6 s to
go out. So the arithmetic is a picklable job (`CombineJob`) handed to an `HeCompute`: inline
(`InlineHeCompute`, threads, for unit tests and tools) or in worker processes
(gateway/he_workers.py), where the event loop only moves bytes.

A job carries the requester's public context as bytes; a worker validates it once per distinct
context (`PublicContext.cached`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crypto.he import Ciphertext, FloodTerm, PublicContext
from exchange.eligibility import (
    CriterionOutcome,
    combine_cohort_he,
    combine_he,
    combine_he_packed,
    validate_he_response,
    validate_padded_response,
    value_tags_of,
)
from exchange.types import View
from policies.programs import Program
from protos.xgate.v1 import node_pb2
from xgate.errors import NodeProtocolError, XgateError


@dataclass(frozen=True)
class CohortSecrets:
    """The cohort view's per-criterion subject orders and the slots whose sign is flipped."""

    orders: tuple[tuple[str, ...], ...]
    flips: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class CombineJob:
    """Everything the combine step needs, nothing that cannot cross a process boundary.

    `plans`/`answers`: per fan-out (one, or one per criterion in the cohort view) the request sent
    to each agency and its answer. `floods`: flood terms prepared during the fan-out, or None to
    flood inside the combine.
    """

    program: Program
    context_data: bytes
    mask_key: bytes
    epoch: int
    plans: tuple[Mapping[str, node_pb2.EncryptRequest], ...]
    answers: tuple[Mapping[str, node_pb2.EncryptResponse], ...]
    pseudonyms: tuple[str, ...] = ()
    view: View = "per_criterion"
    cohort: CohortSecrets | None = None
    floods: tuple[FloodTerm, ...] | None = None
    # A one-time-padded small check (exchange/pads.py): each element's pad ciphertext, and the
    # first slot of the check's window in the batch.
    pads: Mapping[str, bytes] | None = None
    pad_offset: int = 0


def _combine_padded(
    job: CombineJob, context: PublicContext, pads: Mapping[str, bytes]
) -> tuple[list[CriterionOutcome], bytes]:
    """A padded check: Enc(rho) per element (`pads`) plus the nodes' x - rho, in one product."""
    (plan,) = job.plans
    (responses,) = job.answers
    n = len(job.pseudonyms)
    first_block = job.pad_offset // n
    total = (first_block + len(job.program.criteria)) * n
    padded: dict[str, np.ndarray] = {}
    ciphertexts: dict[str, list[Ciphertext]] = {}
    for agency, response in responses.items():
        values = validate_padded_response(agency, plan[agency], response)
        for element in values:
            try:
                ciphertexts[element] = [context.load_pad(pads[element], total)]
            except KeyError:
                raise NodeProtocolError(agency, f"answered for '{element}', which the batch has no pad for") from None
            except XgateError as exc:
                reason = f"sent an invalid ciphertext as its pad for '{element}': {exc.message}"
                raise NodeProtocolError(agency, reason) from exc
        padded.update(values)
    floods = list(job.floods) if job.floods is not None else None
    return combine_he_packed(
        job.program,
        list(job.pseudonyms),
        context,
        ciphertexts,
        job.mask_key,
        job.epoch,
        job.view == "overall",
        flood=floods[0] if floods else True,
        padded=padded,
        first_block=first_block,
        tags=value_tags_of(plan, responses),
    )


def combine(job: CombineJob) -> tuple[list[CriterionOutcome], bytes]:
    """The criteria's masked outcomes, and the one shared ciphertext when the batch was packed (else b"").
    Every node answer is validated against its request first (sizes, counts, parameters)."""
    context = PublicContext.cached(job.context_data)
    if job.pads is not None:
        return _combine_padded(job, context, job.pads)
    loaded = []
    for plan, responses in zip(job.plans, job.answers, strict=True):
        ciphertexts = {}
        for agency, response in responses.items():
            ciphertexts.update(validate_he_response(agency, plan[agency], response, context))
        loaded.append(ciphertexts)
    floods = list(job.floods) if job.floods is not None else None
    if job.cohort is not None:
        outcomes = combine_cohort_he(
            job.program, job.cohort.orders, context, loaded, job.mask_key, job.epoch, job.cohort.flips, floods
        )
        return outcomes, b""
    (ciphertexts,) = loaded
    tags = value_tags_of(job.plans[0], job.answers[0])
    args = (job.program, list(job.pseudonyms), context, ciphertexts, job.mask_key, job.epoch, job.view == "overall")
    if any(r.replicas > 1 for r in job.plans[0].values()):
        return combine_he_packed(*args, flood=floods[0] if floods else True, tags=tags)
    return combine_he(*args, floods=floods, tags=tags), b""


def prepare_floods(context_data: bytes, counts: Sequence[int]) -> list[FloodTerm]:
    """Flood terms for result ciphertexts of these slot counts (they depend on the public key only)."""
    return PublicContext.cached(context_data).flood_terms(counts)


class HeCompute(Protocol):
    """Runs a check's HE steps somewhere other than the event loop."""

    async def floods(self, context_data: bytes, counts: Sequence[int]) -> list[FloodTerm]: ...

    async def combine(self, job: CombineJob) -> tuple[list[CriterionOutcome], bytes]: ...

    def close(self) -> None: ...


class InlineHeCompute:
    """In this process's threads: fine where nothing else waits on the event loop (tests, tools)."""

    async def floods(self, context_data: bytes, counts: Sequence[int]) -> list[FloodTerm]:
        return await asyncio.to_thread(prepare_floods, context_data, counts)

    async def combine(self, job: CombineJob) -> tuple[list[CriterionOutcome], bytes]:
        return await asyncio.to_thread(combine, job)

    def close(self) -> None:
        """Nothing is held between jobs."""


__all__ = ["CohortSecrets", "CombineJob", "HeCompute", "InlineHeCompute", "combine", "prepare_floods"]
