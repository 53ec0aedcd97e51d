"""Attack: read r, and so the exact sum, from two checks either side of a change in the data.

Masks are keyed to the question and the epoch, so a repeat in one epoch gives no fresh sample.
Keyed to nothing else, they also stayed put when a value changed: two gold 低保 checks around a
change gave v1 - v2 = r * (d1 - d2). The requesting agency (civil affairs) supplies one of the
summed terms itself (monthly benefits), so it knows the change; then r = (v1 - v2) / change and
d = floor(v / r) (s' < r) is the exact income + pension the tax and HRSS nodes hold. With changes it
does not know (a tax reload), the gcd of two differences gives r whenever the changes are coprime.

Now each node tags each value it encrypts (crypto/value_tags.py, under a key of its own) and the
gateway folds the tags into the masks: a changed value is masked afresh, an unchanged one as
before. Real NodeService nodes on SQLite stores, the real CheckService and the shipped policies;
the positive control gives the nodes a constant tag, which is the design before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crypto.he import RequesterKeys
from exchange.service import CheckService
from exchange.types import CheckRequest
from nodes import service as node_service
from nodes.service import NodeService
from nodes.store import NodeStore
from policies.budgets import ProbeBudget
from policies.catalogue import load_catalogue
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from policies.silver_claims import SilverClaims
from protos.xgate.v1 import node_pb2
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_check_service import MASK_KEY, pseudo
from tests.unit.test_policy_support import DAYTIME
from xgate.principal import Principal

CATALOGUE = load_catalogue()[0]
PROGRAMS = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE)
GOLD = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
SILVER = Principal("ca-caseworker-silver", "civil_affairs", "caseworker", "silver")
THRESHOLD = 1100
N = 30
# Three checks 6 days apart, inside one 30-day masking epoch of the 低保 program.
T0 = DAYTIME.timestamp() - 20 * 86400


class InProcessNodes:
    """The fan-out port over real NodeService objects (their answers as the gRPC servicer returns them)."""

    def __init__(self, nodes: dict[str, NodeService]) -> None:
        self.nodes = nodes

    async def encrypt_all(
        self, requests: dict[str, node_pb2.EncryptRequest], deadline_s: float, public_context: bytes = b""
    ) -> dict[str, node_pb2.EncryptResponse]:
        for request in requests.values():
            request.public_context = request.public_context or public_context
        return {a: self.nodes[a].encrypt_values(r) for a, r in sorted(requests.items())}


class Federation:
    """The 低保 agencies' nodes holding `values[element][pseudonym]`; `change` reloads one extract."""

    def __init__(self, tmp: Path, values: dict[str, dict[str, int]]) -> None:
        self.values = values
        self.nodes = {a: NodeService(a, NodeStore.open(tmp / f"{a}.sqlite")) for a in {e.split(".")[0] for e in values}}
        for agency in self.nodes:
            self._load(agency)
        self.authorizer = CheckAuthorizer(
            PolicyEngine.load(DEFAULT_POLICY_DIR),
            budgets=ProbeBudget(tmp / "budget.db"),
            approvals=standing_registry(tmp / "approvals.db"),
            clock=lambda: DAYTIME,
            claims=SilverClaims(tmp / "claims.db"),
        )

    def _load(self, agency: str) -> None:
        elements = [CATALOGUE.get(e) for e in self.values if e.startswith(agency + ".")]
        rows = [(e.id, p, v) for e in elements for p, v in self.values[e.id].items()]
        extract = [(e, False) for e in elements]
        self.nodes[agency].store.replace_dataset(f"{agency}-extract", "0" * 64, extract, rows, "2026-03-01")
        self.nodes[agency].refresh()

    def change(self, element: str, values: dict[str, int]) -> None:
        self.values[element] = values
        self._load(element.split(".")[0])

    def check(self, keys: RequesterKeys, day: int, principal: Principal = GOLD) -> dict[str, list[int]]:
        """What a modified client reads: each criterion's (or position's) decrypted masked values."""
        service = CheckService(
            programs=PROGRAMS,
            nodes=InProcessNodes(self.nodes),
            mask_key=MASK_KEY,
            policy=self.authorizer,
            clock=lambda: T0 + day * 86400,
        )
        people = tuple(self.values["tax.monthly_income"])
        request = CheckRequest(
            program="dibao", purpose="dibao", legal_basis="SAR-2014-art-12", case_id="C-1", approval_ref=STANDING_REF,
            mode="he", public_context=keys.public_context, pseudonyms=people,
        )  # fmt: skip
        outcome = asyncio.run(service.run(principal, request))
        n = len(people)
        if outcome.packed:
            top = max(v.block for v in outcome.criteria) + 1
            shared = keys.decrypt_masked(outcome.packed[0], n * top)
            return {v.criterion: [int(x) for x in shared[v.block * n : (v.block + 1) * n]] for v in outcome.criteria}
        return {v.criterion: [int(x) for x in keys.decrypt_masked(v.ciphertexts[0], n)] for v in outcome.criteria}


@pytest.fixture
def constant_tags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The design before: nodes whose tags never change with the value (masks keyed to the question alone)."""
    monkeypatch.setattr(node_service, "value_tags", lambda key, epoch, period, element, ps, values: b"\0" * 8 * len(ps))
    yield


def _population(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    rng = np.random.default_rng(seed)
    people = [pseudo(i) for i in range(N)]
    income = {p: int(rng.integers(0, 700)) for p in people}
    pension = {p: int(rng.integers(0, 300)) for p in people}
    values = {
        "tax.monthly_income": income,
        "tax.registered_businesses": dict.fromkeys(people, 0),
        "hrss.monthly_pension": pension,
        "civil_affairs.monthly_benefits": dict.fromkeys(people, 0),
        "household.alive_resident": dict.fromkeys(people, 1),
    }
    return values, {p: income[p] + pension[p] for p in people}


def known_change_attack(tmp: Path) -> int:
    """Grant benefits the requester knows, check before and after: how many exact income + pension sums."""
    values, truth = _population(7)
    fed, keys = Federation(tmp, values), RequesterKeys.generate()
    before = fed.check(keys, 0)["income_within_threshold"]
    granted = {p: 50 + 7 * j for j, p in enumerate(values["tax.monthly_income"])}
    fed.change("civil_affairs.monthly_benefits", granted)
    after = fed.check(keys, 6)["income_within_threshold"]
    exact = 0
    for j, p in enumerate(values["tax.monthly_income"]):
        r = (before[j] - after[j]) // granted[p]  # d_after = d_before - granted, so v1 - v2 = r * granted
        exact += r > 0 and THRESHOLD - before[j] // r == truth[p]
    return exact


def unknown_change_attack(tmp: Path) -> int:
    """Three checks around two tax reloads the requester does not know: r as the gcd of the differences."""
    values, _ = _population(11)
    fed, keys = Federation(tmp, values), RequesterKeys.generate()
    rng = np.random.default_rng(5)
    income = dict(values["tax.monthly_income"])
    seen = []
    for k, day in enumerate((0, 6, 12)):
        if k:
            income = {p: max(0, x + int(rng.integers(-150, 150))) for p, x in income.items()}
            fed.change("tax.monthly_income", income)
        seen.append(fed.check(keys, day)["income_within_threshold"])
    exact = 0
    for j, p in enumerate(income):
        g = math.gcd(abs(seen[0][j] - seen[1][j]), abs(seen[1][j] - seen[2][j]))
        exact += g > 0 and THRESHOLD - seen[2][j] // g == income[p] + values["hrss.monthly_pension"][p]
    return exact


def test_a_known_change_no_longer_gives_r_away(tmp_path: Path) -> None:
    assert known_change_attack(tmp_path) == 0


def test_positive_control_with_masks_that_ignore_the_values_every_sum_comes_out(tmp_path: Path, constant_tags: None):
    assert known_change_attack(tmp_path) == N


def test_unknown_reloads_no_longer_give_r_away(tmp_path: Path) -> None:
    assert unknown_change_attack(tmp_path) <= 1  # a gcd that happens to land on the sum: chance, not r


def test_positive_control_unknown_reloads_give_most_sums(tmp_path: Path, constant_tags: None) -> None:
    assert unknown_change_attack(tmp_path) >= N // 3


def test_unchanged_values_keep_their_masks_so_a_repeat_adds_nothing(tmp_path: Path) -> None:
    values, _ = _population(3)
    fed, keys = Federation(tmp_path, values), RequesterKeys.generate()
    first, again = fed.check(keys, 0), fed.check(keys, 6)
    assert first == again
    # A change in one criterion's terms re-masks that criterion only (gold: criteria are named).
    fed.change("tax.registered_businesses", dict.fromkeys(values["tax.monthly_income"], 1))
    third = fed.check(keys, 12)
    assert third["income_within_threshold"] == first["income_within_threshold"]
    assert all(a != b for a, b in zip(third["no_registered_business"], first["no_registered_business"], strict=True))


def test_at_silver_a_change_redraws_every_position_and_the_order(tmp_path: Path) -> None:
    """Kept, the positions whose values stayed put would be matched across the two results, and
    the one that moved with the requester's own change would be the income criterion."""
    values, _ = _population(13)
    fed, keys = Federation(tmp_path, values), RequesterKeys.generate()
    before = fed.check(keys, 0, SILVER)
    fed.change("civil_affairs.monthly_benefits", dict.fromkeys(values["tax.monthly_income"], 40))
    after = fed.check(keys, 6, SILVER)
    kept = {v for position in before.values() for v in position} & {v for position in after.values() for v in position}
    assert not kept


def test_what_a_change_tells_the_requester_is_that_it_happened(tmp_path: Path) -> None:
    """The stated cost of re-masking (docs/PROTOCOL.md, requester row): a gold requester sees
    whether a criterion's stored terms changed between two checks of one epoch, also for a failing
    value clamped alike before and after (5,000 and 499,000 CNY against a 1,100 line), and nothing
    of by how much: the verdict and the clamped magnitude stay the same (thirteenth session's review)."""
    values, _ = _population(3)
    people = list(values["tax.monthly_income"])
    values["tax.monthly_income"] = dict.fromkeys(people, 5_000)
    fed, keys = Federation(tmp_path, values), RequesterKeys.generate()
    first = fed.check(keys, 0)["income_within_threshold"]
    movers = set(people[: N // 2])
    fed.change("tax.monthly_income", {p: 499_000 if p in movers else 5_000 for p in people})
    second = fed.check(keys, 6)["income_within_threshold"]
    assert all(v < 0 for v in first + second)  # fail both times
    assert {p for j, p in enumerate(people) if first[j] != second[j]} == movers  # the change bit, exactly
