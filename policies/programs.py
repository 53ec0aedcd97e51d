"""Eligibility programs: versioned files of criteria over agency data elements (pure).

A program fixes its thresholds; a request names only the program. Loading checks every
criterion against the federation catalogue, including the HE masking bound: the largest
possible |threshold - sum| must stay within MAX_ABS_DIFFERENCE, or the masked sign could wrap.

It also works out the **clamps** the nodes apply before encrypting, each keeping every verdict
(`clamp_keeps_verdict`, tests/unit/test_clamps.py) while the masked value carries less:

* **Sign-only, every view.** A criterion with one term, whose element no other criterion of the
  program reads, is decided by that value alone: the node encodes it clamped to [T, T + 1] (at
  most T) or [T - 1, T] (at least T), so d is 0 or -1 and |v| is distributed alike whatever the
  verdict (`Criterion.sign_only_clamp`).
* **Past the threshold, per-criterion and overall views.** When every term of a sum is
  non-negative, one term past the threshold decides it alone, so each may be encoded min(x, c)
  for any c >= `Criterion.least_ceiling`: nothing of how far past the threshold a value lies
  reaches the requester. In the overall view a sign-only criterion's masks are then shaped like
  the sum's (`Program.overall_look`), so no magnitude names the failing criterion.
* **Mirrored, cohort view.** There each slot's sign is randomized and |v| must not tell a flipped
  one: each term of a sum is clamped at `Criterion.mirror_ceiling` (2T + 1 at most, 2T at least),
  so a failing single term's |d| lies in [1, T + 1] as a passing one's lies in [0, T], however far
  past the threshold it was.

Each criterion's span, hence the range its masks are fitted to (crypto.masks.mask_bound), is taken
over the clamped ranges: 2,298,900 to 2,203 CNY for the 低保 income sum, 1 for a single term.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
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
    def least_ceiling(self) -> int:
        """The smallest ceiling that keeps this criterion's verdict when its terms are non-negative:
        a sum at most T fails as soon as one term exceeds T (so T + 1 suffices), a sum at least T
        passes as soon as one term reaches T (so T)."""
        return self.bound + 1 if self.direction < 0 else self.bound

    @property
    def mirror_ceiling(self) -> int:
        """A ceiling as far past the threshold as 0 is before it: a sum at most T fails by 1..T+1
        when clamped at 2T + 1, and passes by 0..T; at least T, by 1..T and 0..T at 2T."""
        # Never below the least ceiling (at most -1: 2T + 1 would be -1, a negative ceiling).
        return max(2 * self.bound, self.bound) + 1 if self.direction < 0 else max(2 * self.bound, self.bound)

    @property
    def sign_only_clamp(self) -> Clamp:
        """For a single term: the two values either side of the threshold, so that d = T - x (at
        most) or x - T (at least) is 0 when it passes and -1 when it fails."""
        if self.direction < 0:
            return Clamp(self.bound, self.bound + 1)
        return Clamp(self.bound - 1, self.bound)

    def passes(self, total: int) -> bool:
        """The plaintext meaning of this criterion (used by the oracle and the baseline)."""
        return total >= self.bound if self.direction > 0 else total <= self.bound


@dataclass(frozen=True)
class Clamp:
    """What a node encodes instead of x: min(max(x, floor), ceiling), either side open when None."""

    floor: int | None = None
    ceiling: int | None = None

    def apply(self, x: int) -> int:
        if self.floor is not None:
            x = max(x, self.floor)
        return x if self.ceiling is None else min(x, self.ceiling)

    def apply_all(self, values: np.ndarray) -> np.ndarray:
        """`apply` over an array (what a node encodes for a column)."""
        return values if self.floor is None and self.ceiling is None else np.clip(values, self.floor, self.ceiling)

    @property
    def label(self) -> str:
        return f"[{'' if self.floor is None else self.floor},{'' if self.ceiling is None else self.ceiling}]"


NO_CLAMP = Clamp()


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
    # The clamps the nodes apply in the per-criterion and overall views (element -> Clamp;
    # unclamped elements absent), and each criterion's span over the clamped ranges.
    clamps: tuple[tuple[str, Clamp], ...] = ()
    clamped_spans: tuple[int, ...] = ()
    # Per criterion: whether its one term is clamped to the sign alone (d is 0 or -1), and the
    # largest passing and failing |d| its clamped ranges allow (each within the clamped span).
    sign_only: tuple[bool, ...] = ()
    passing_reaches: tuple[int, ...] = ()
    failing_reaches: tuple[int, ...] = ()
    # The cohort view's: sign-only clamps, and sums' terms at their mirror ceilings.
    cohort_clamps: tuple[tuple[str, Clamp], ...] = ()
    cohort_spans: tuple[int, ...] = ()
    # The other programs of the registry linked to this one by shared questions (directly or
    # through others; sorted ids, this one excluded): at silver, verdicts of two of them on one
    # subject would tell which shared criterion failed (ProgramRegistry.load).
    overlaps: tuple[str, ...] = ()

    @property
    def claim_identity(self) -> str:
        """The program as a silver claim names it: its id and a digest of the questions it asks, so
        that a new version asking other questions is another program to the claims."""
        asked = "\n".join(sorted(c.question for c in self.criteria))
        return f"{self.id}@{hashlib.sha256(asked.encode()).hexdigest()[:16]}"

    def span(self, index: int) -> int:
        """Over the catalogue's ranges, no clamp."""
        return self.spans[index] if self.spans else MAX_ABS_DIFFERENCE

    def clamped_span(self, index: int) -> int:
        """Over the ranges the clamps leave: the span the masks are fitted to."""
        return self.clamped_spans[index] if self.clamped_spans else self.span(index)

    def cohort_span(self, index: int) -> int:
        return self.cohort_spans[index] if self.cohort_spans else self.clamped_span(index)

    def element_clamps(self) -> dict[str, Clamp]:
        return dict(self.clamps)

    def clamp_label(self, index: int) -> str:
        """The clamps of one criterion's terms, for keying its masks: the same question clamped
        otherwise (by another program reading one element in two criteria) is another comparison,
        and must not share masks with it."""
        clamps = self.element_clamps()
        return ",".join(sorted(t.element + clamps.get(t.element, NO_CLAMP).label for t in self.criteria[index].terms))

    def overall_look(self, index: int) -> tuple[int, int, int] | None:
        """In the overall view, the (span, passing reach, failing reach) of the criterion a sign-only
        criterion's masked value is shaped like (crypto.masks.derive_sign_masks), so that no
        position's magnitude tells which criterion it holds: the program's widest criterion that is
        not sign-only (a sum, or a single term another criterion reads too). None for a criterion
        that is not sign-only, or a program whose criteria are all sign-only (they look alike)."""
        if not self.sign_only or not self.sign_only[index]:
            return None
        others = [i for i in range(len(self.criteria)) if not self.sign_only[i]]
        if not others:
            return None
        widest = max(others, key=self.clamped_span)
        return self.clamped_span(widest), self.passing_reaches[widest], self.failing_reaches[widest]

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


def clamp_keeps_verdict(criterion: Criterion, values: Iterable[int], clamps: Iterable[Clamp]) -> bool:
    """Whether encoding each term clamped leaves the verdict as it was. True for a sign-only clamp
    of a single term, and for ceilings of at least `criterion.least_ceiling` on non-negative terms
    (tests/unit/test_clamps.py)."""
    values = list(values)
    clamped = [c.apply(x) for x, c in zip(values, clamps, strict=True)]
    return criterion.passes(sum(values)) == criterion.passes(sum(clamped))


def clamps_for(criteria: Sequence[Criterion], catalogue: Catalogue) -> tuple[dict[str, Clamp], dict[str, Clamp]]:
    """(per-criterion and overall views, cohort view): each element's clamp.

    Sign-only for the element of a single-term criterion that no other criterion reads (every
    view). Otherwise a ceiling: in the per-criterion and overall views the largest `least_ceiling`
    among the criteria that read it, in the cohort view the largest `mirror_ceiling`; none if one
    of those has a term that can be negative (it could offset a large one), or its ceiling would be."""
    readers = Counter(t.element for c in criteria for t in {t.element: t for t in c.terms}.values())
    sign_only = {
        c.terms[0].element: c.sign_only_clamp
        for c in criteria
        if len(c.terms) == 1 and readers[c.terms[0].element] == 1
    }
    ceilings: dict[str, int] = {}
    mirrors: dict[str, int] = {}
    open_: set[str] = set()
    for criterion in criteria:
        # Non-negative terms, clamped to non-negative values: a negative ceiling (a threshold below
        # -1) would turn large terms negative and flip the verdict.
        clampable = criterion.least_ceiling >= 0 and all(catalogue.get(t.element).min >= 0 for t in criterion.terms)
        for term in criterion.terms:
            if term.element in sign_only:
                continue
            if clampable:
                least, mirror = criterion.least_ceiling, criterion.mirror_ceiling
                ceilings[term.element] = max(ceilings.get(term.element, least), least)
                mirrors[term.element] = max(mirrors.get(term.element, mirror), mirror)
            else:
                open_.add(term.element)
    per_criterion = {e: Clamp(ceiling=c) for e, c in ceilings.items() if e not in open_}
    cohort = {e: Clamp(ceiling=c) for e, c in mirrors.items() if e not in open_}
    return {**per_criterion, **sign_only}, {**cohort, **sign_only}


def _clamped_range(criterion: Criterion, catalogue: Catalogue, clamps: Mapping[str, Clamp]) -> tuple[int, int]:
    """The smallest and largest sum of the criterion's terms over their clamped ranges."""
    low = high = 0
    for term in criterion.terms:
        element = catalogue.get(term.element)
        clamp = clamps.get(term.element, NO_CLAMP)
        low += clamp.apply(element.min)  # monotone: the clamped range is [apply(min), apply(max)]
        high += clamp.apply(element.max)
    return low, high


def _passing_reach(criterion: Criterion, catalogue: Catalogue, clamps: Mapping[str, Clamp]) -> int:
    """The largest d = direction * (sum - bound) >= 0 the clamped ranges allow (0 if none)."""
    low, high = _clamped_range(criterion, catalogue, clamps)
    return max(0, criterion.bound - low if criterion.direction < 0 else high - criterion.bound)


def _failing_reach(criterion: Criterion, catalogue: Catalogue, clamps: Mapping[str, Clamp]) -> int:
    """The largest -d > 0 the clamped ranges allow (1 if none: a criterion that cannot fail)."""
    low, high = _clamped_range(criterion, catalogue, clamps)
    return max(1, high - criterion.bound if criterion.direction < 0 else criterion.bound - low)


def _worst_difference(criterion: Criterion, catalogue: Catalogue, clamps: Mapping[str, Clamp]) -> int:
    low, high = _clamped_range(criterion, catalogue, clamps)
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
    clamps, cohort = clamps_for(parsed.criteria, catalogue)
    return Program(
        parsed.program,
        parsed.criteria,
        hashlib.sha256(raw).hexdigest(),
        str(path),
        spans,
        clamps=tuple(sorted(clamps.items())),
        clamped_spans=tuple(max(1, _worst_difference(c, catalogue, clamps)) for c in parsed.criteria),
        sign_only=tuple(
            len(c.terms) == 1 and clamps.get(c.terms[0].element) == c.sign_only_clamp for c in parsed.criteria
        ),
        passing_reaches=tuple(_passing_reach(c, catalogue, clamps) for c in parsed.criteria),
        failing_reaches=tuple(_failing_reach(c, catalogue, clamps) for c in parsed.criteria),
        cohort_clamps=tuple(sorted(cohort.items())),
        cohort_spans=tuple(max(1, _worst_difference(c, catalogue, cohort)) for c in parsed.criteria),
    )


def _check_shared_questions(programs: Iterable[Program]) -> None:
    """Programs asking the same question must share its masking epoch and its clamps, or each
    would draw fresh masks: a second sample of one comparison."""
    seen: dict[str, tuple[int, str, str]] = {}
    for program in programs:
        for index, criterion in enumerate(program.criteria):
            label = program.clamp_label(index)
            days, clamps, where = seen.setdefault(
                criterion.question, (program.header.epoch_days, label, program.source)
            )
            if days != program.header.epoch_days:
                raise ConfigError(
                    f"program {program.source}: criterion '{criterion.id}' asks the same question as a criterion of "
                    f"{where} with epoch_days {days}; programs asking one question must use the same epoch_days"
                )
            if clamps != label:
                raise ConfigError(
                    f"program {program.source}: criterion '{criterion.id}' asks the same question as a criterion of "
                    f"{where}, but clamped otherwise ({label} against {clamps}: an element of it is read by another "
                    "criterion too); its answers would be a second sample of that comparison. Ask it the same way "
                    "(read each of its elements in this criterion only), or in one program"
                )


def overlap_groups(programs: Iterable[Program]) -> dict[str, set[str]]:
    """Each program's group: the programs connected to it through shared questions (itself included)."""
    programs = list(programs)
    group: dict[str, set[str]] = {p.id: {p.id} for p in programs}
    askers: dict[str, list[str]] = {}
    for program in programs:
        for criterion in program.criteria:
            askers.setdefault(criterion.question, []).append(program.id)
    for ids in askers.values():
        merged = set().union(*(group[i] for i in ids))
        for member in merged:
            group[member] = merged
    return group


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
        groups = overlap_groups(programs.values())
        return cls(
            {
                pid: dataclasses.replace(program, overlaps=tuple(sorted(groups[pid] - {pid})))
                for pid, program in programs.items()
            }
        )

    def get(self, program_id: str) -> Program:
        try:
            return self._programs[program_id]
        except KeyError:
            raise NotFound(f"program '{program_id}' is not defined") from None

    def all(self) -> list[Program]:
        return [self._programs[k] for k in sorted(self._programs)]
