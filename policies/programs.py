"""Eligibility programs: versioned files of criteria over agency data elements (pure).

A program fixes its thresholds; a request names only the program. Loading checks every
criterion against the federation catalogue, including the HE masking bound: the largest
possible |threshold - sum| must stay within MAX_ABS_DIFFERENCE, or the masked sign could wrap.

It also works out the **clamps** of the per-criterion view: when every term of a criterion is
non-negative, a term above the threshold decides the verdict alone, so each node may encode
min(x, c) for any c >= `Criterion.clamp_floor` without changing it (`clamp_keeps_verdict`). The
masked value then carries nothing of how far above the threshold a value lies, and the criterion's
span, hence the range its masks are fitted to (crypto.masks.mask_bound), shrinks from the catalogue
range to a few times the threshold: 2,298,900 to 2,203 CNY for the 低保 income sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crypto.he import MAX_ABS_DIFFERENCE
from policies.catalogue import AgencyId, Catalogue, ElementId, ElementType
from xgate.errors import ConfigError, NotFound
from xgate.tomlfile import load_model

DEFAULT_PROGRAM_DIR = Path(__file__).resolve().parent / "programs"
Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]


class CriterionKind(StrEnum):
    SUM_AT_MOST = "sum_at_most"
    SUM_AT_LEAST = "sum_at_least"
    VALUE_AT_MOST = "value_at_most"
    VALUE_AT_LEAST = "value_at_least"
    IN_REGISTER = "in_register"
    NOT_IN_REGISTER = "not_in_register"
    COUNT_ZERO = "count_zero"


class Term(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    element: ElementId
    if_missing: int = 0


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Ident
    kind: CriterionKind
    description: str = ""
    threshold: int | None = None
    terms: tuple[Term, ...] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _shape(self) -> Criterion:
        needs_threshold = self.kind in _THRESHOLD_KINDS
        if needs_threshold and self.threshold is None:
            raise ValueError(f"criterion '{self.id}' of kind {self.kind} needs a threshold")
        if not needs_threshold and self.threshold is not None:
            raise ValueError(f"criterion '{self.id}' of kind {self.kind} takes no threshold")
        if self.kind not in (CriterionKind.SUM_AT_MOST, CriterionKind.SUM_AT_LEAST) and len(self.terms) != 1:
            raise ValueError(f"criterion '{self.id}' of kind {self.kind} takes exactly one term")
        return self

    @property
    def direction(self) -> int:
        """-1: passes when sum <= bound; +1: passes when sum >= bound."""
        return +1 if self.kind in _AT_LEAST_KINDS else -1

    @property
    def bound(self) -> int:
        """The comparison bound after reducing every kind to `sum <= bound` or `sum >= bound`."""
        if self.kind is CriterionKind.IN_REGISTER:
            return 1
        if self.kind in (CriterionKind.NOT_IN_REGISTER, CriterionKind.COUNT_ZERO):
            return 0
        assert self.threshold is not None
        return self.threshold

    @property
    def question(self) -> str:
        """What is compared, independent of the program asking: the masks are keyed to this.

        Two criteria with the same terms (and defaults), direction and bound compute the same
        comparison, so they get the same masks and a second program adds no fresh sample.
        """
        terms = ",".join(sorted(f"{t.element}={t.if_missing}" for t in self.terms))
        return f"{'ge' if self.direction > 0 else 'le'}:{self.bound}:{terms}"

    @property
    def clamp_floor(self) -> int:
        """The smallest clamp that keeps this criterion's verdict when its terms are non-negative:
        a sum at most T fails as soon as one term exceeds T (so T + 1 suffices), a sum at least T
        passes as soon as one term reaches T (so T). Never below 1 (0 on the wire means none)."""
        return max(1, self.bound + 1 if self.direction < 0 else self.bound)

    def passes(self, total: int) -> bool:
        """The plaintext meaning of this criterion (used by the oracle and the baseline)."""
        return total >= self.bound if self.direction > 0 else total <= self.bound


_THRESHOLD_KINDS = {
    CriterionKind.SUM_AT_MOST,
    CriterionKind.SUM_AT_LEAST,
    CriterionKind.VALUE_AT_MOST,
    CriterionKind.VALUE_AT_LEAST,
}
_AT_LEAST_KINDS = {CriterionKind.SUM_AT_LEAST, CriterionKind.VALUE_AT_LEAST, CriterionKind.IN_REGISTER}


class ProgramHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Ident
    version: str = Field(pattern=r"^[0-9A-Za-z.\-]{1,32}$")
    title: str
    requester_agencies: tuple[AgencyId, ...] = Field(min_length=1)
    purposes: tuple[Ident, ...] = Field(min_length=1)
    epoch_days: int = Field(default=30, ge=1, le=366)
    # bronze (cohort view) overrides of policies/settings.toml [tiers]: eps per criterion and query,
    # and per (requesting agency, program) and epoch
    bronze_epsilon_per_criterion: float | None = Field(default=None, gt=0, le=20)
    bronze_epsilon_per_period: float | None = Field(default=None, gt=0, le=1_000_000)


class ProgramFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    program: ProgramHeader
    criteria: tuple[Criterion, ...] = Field(min_length=1, max_length=32)


@dataclass(frozen=True)
class Program:
    """A loaded, catalogue-checked program."""

    header: ProgramHeader
    criteria: tuple[Criterion, ...]
    sha256: str
    source: str
    # Per criterion: the largest |threshold - sum| over the declared element ranges (>= 1); the
    # masks' range is fitted to it (crypto.masks.mask_bound).
    spans: tuple[int, ...] = ()
    # The per-criterion view's clamps (element -> c: nodes encode min(x, c)) and each criterion's
    # span over the clamped ranges; elements without a clamp are absent.
    clamps: tuple[tuple[str, int], ...] = ()
    clamped_spans: tuple[int, ...] = ()

    def span(self, index: int, clamped: bool = False) -> int:
        if clamped and self.clamped_spans:
            return self.clamped_spans[index]
        return self.spans[index] if self.spans else MAX_ABS_DIFFERENCE

    def clamp(self, element: str) -> int:
        """The per-criterion view's clamp of `element`, 0 for none."""
        return dict(self.clamps).get(element, 0)

    def clamp_label(self, index: int) -> str:
        """The clamps of one criterion's terms, for keying its per-criterion masks: the same
        question clamped differently (by another program reading one element in two criteria) is
        another comparison, and must not share masks with it."""
        return ",".join(sorted(f"{t.element}<={self.clamp(t.element)}" for t in self.criteria[index].terms))

    @property
    def id(self) -> str:
        return self.header.id

    @property
    def version(self) -> str:
        return self.header.version

    @property
    def epoch_seconds(self) -> int:
        return self.header.epoch_days * 86400

    def elements(self) -> list[Term]:
        """Every distinct (element, if_missing) the program reads, in first-use order."""
        seen: dict[str, Term] = {}
        for criterion in self.criteria:
            for term in criterion.terms:
                seen.setdefault(term.element, term)
        return list(seen.values())

    def elements_by_agency(self) -> dict[str, list[Term]]:
        grouped: dict[str, list[Term]] = {}
        for term in self.elements():
            grouped.setdefault(term.element.split(".")[0], []).append(term)
        return grouped


def clamp_keeps_verdict(criterion: Criterion, values: Iterable[int], clamps: Iterable[int]) -> bool:
    """Whether clamping each non-negative term at its clamp (0: none) leaves the verdict as it was.
    True whenever every clamp is at least `criterion.clamp_floor` (tests/unit/test_clamps.py)."""
    values = list(values)
    clamped = [min(x, c) if c > 0 else x for x, c in zip(values, clamps, strict=True)]
    return criterion.passes(sum(values)) == criterion.passes(sum(clamped))


def clamps_for(criteria: Iterable[Criterion], catalogue: Catalogue) -> dict[str, int]:
    """Each element's clamp in the per-criterion view: the largest floor among the criteria that
    read it, and none if one of those has a term that can be negative (it could offset a large one)."""
    floors: dict[str, int] = {}
    unclamped: set[str] = set()
    for criterion in criteria:
        clampable = all(catalogue.get(t.element).min >= 0 for t in criterion.terms)
        for term in criterion.terms:
            if clampable:
                floors[term.element] = max(floors.get(term.element, 0), criterion.clamp_floor)
            else:
                unclamped.add(term.element)
    return {element: c for element, c in floors.items() if element not in unclamped}


def _worst_difference(criterion: Criterion, catalogue: Catalogue, clamps: Mapping[str, int]) -> int:
    low = high = 0
    for term in criterion.terms:
        element = catalogue.get(term.element)
        clamp = clamps.get(term.element, 0)
        low += min(element.min, clamp) if clamp else element.min
        high += min(element.max, clamp) if clamp else element.max
    return max(abs(criterion.bound - low), abs(criterion.bound - high))


def check_against_catalogue(parsed: ProgramFile, catalogue: Catalogue, source: str) -> tuple[int, ...]:
    """Raise ConfigError unless every criterion fits the catalogue; return each criterion's span."""
    spans: list[int] = []
    ids = [c.id for c in parsed.criteria]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"program {source}: criterion ids must be unique")
    missing_defaults: dict[str, int] = {}
    for criterion in parsed.criteria:
        for term in criterion.terms:
            try:
                element = catalogue.get(term.element)
            except NotFound as exc:
                raise ConfigError(f"program {source}: criterion '{criterion.id}': {exc.message}") from exc
            if not element.min <= term.if_missing <= element.max:
                raise ConfigError(
                    f"program {source}: criterion '{criterion.id}': if_missing {term.if_missing} is outside "
                    f"the range {element.min}..{element.max} of '{term.element}'"
                )
            previous = missing_defaults.setdefault(term.element, term.if_missing)
            if previous != term.if_missing:
                raise ConfigError(f"program {source}: element '{term.element}' has conflicting if_missing values")
            registers = (CriterionKind.IN_REGISTER, CriterionKind.NOT_IN_REGISTER)
            if criterion.kind in registers and element.type is not ElementType.FLAG:
                raise ConfigError(
                    f"program {source}: criterion '{criterion.id}' needs a flag element, "
                    f"'{term.element}' is {element.type}"
                )
            if criterion.kind is CriterionKind.COUNT_ZERO and element.min < 0:
                raise ConfigError(f"program {source}: criterion '{criterion.id}' needs a non-negative count")
            if element.type is ElementType.CATEGORY:
                raise ConfigError(f"program {source}: category element '{term.element}' cannot be compared")
        worst = _worst_difference(criterion, catalogue, {})
        if worst > MAX_ABS_DIFFERENCE:
            raise ConfigError(
                f"program {source}: criterion '{criterion.id}': |threshold - sum| can reach {worst}, "
                f"above the HE masking bound {MAX_ABS_DIFFERENCE}; narrow the element ranges or split it"
            )
        spans.append(max(1, worst))
    return tuple(spans)


def load_program(path: Path, catalogue: Catalogue) -> Program:
    parsed, raw = load_model(path, ProgramFile, "program")
    spans = check_against_catalogue(parsed, catalogue, str(path))
    clamps = clamps_for(parsed.criteria, catalogue)
    clamped_spans = tuple(max(1, _worst_difference(c, catalogue, clamps)) for c in parsed.criteria)
    return Program(
        parsed.program,
        parsed.criteria,
        hashlib.sha256(raw).hexdigest(),
        str(path),
        spans,
        tuple(sorted(clamps.items())),
        clamped_spans,
    )


def _check_shared_questions(programs: Iterable[Program]) -> None:
    """Programs asking the same question must share its masking epoch, or each would draw fresh masks."""
    seen: dict[str, tuple[int, str]] = {}
    for program in programs:
        for criterion in program.criteria:
            days, where = seen.setdefault(criterion.question, (program.header.epoch_days, program.source))
            if days != program.header.epoch_days:
                raise ConfigError(
                    f"program {program.source}: criterion '{criterion.id}' asks the same question as a criterion of "
                    f"{where} with epoch_days {days}; programs asking one question must use the same epoch_days"
                )


class ProgramRegistry:
    """All programs of a directory, keyed by id (one version in force per id)."""

    def __init__(self, programs: dict[str, Program]) -> None:
        self._programs = programs

    @classmethod
    def load(cls, directory: Path, catalogue: Catalogue) -> ProgramRegistry:
        programs: dict[str, Program] = {}
        files = sorted(directory.glob("*.toml"))
        if not files:
            raise ConfigError(f"program directory {directory}: no *.toml program files")
        for path in files:
            program = load_program(path, catalogue)
            if program.id in programs:
                raise ConfigError(f"program {path}: id '{program.id}' also defined in {programs[program.id].source}")
            programs[program.id] = program
        _check_shared_questions(programs.values())
        return cls(programs)

    def get(self, program_id: str) -> Program:
        try:
            return self._programs[program_id]
        except KeyError:
            raise NotFound(f"program '{program_id}' is not defined") from None

    def all(self) -> list[Program]:
        return [self._programs[k] for k in sorted(self._programs)]
