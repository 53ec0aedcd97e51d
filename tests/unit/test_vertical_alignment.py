"""The vertical ServerApp's alignment (`vertical_server._private_alignment`, `_split`) over nodes
that answer as the ClientApps do (tests/psi_relay.py): edge cases, and every refusal names the
agency whose reply was wrong. The pure core (matches, membership shares, sealed seeds, row lists)
is checked below."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated import psi
from federated.vertical_server import NO_OVERLAP
from tests.psi_relay import align
from xgate.errors import VerticalFailed

PEOPLE = [f"p{i:03d}" for i in range(60)]


def _failure(sets: dict[str, list[str]], tamper: Any = None) -> VerticalFailed:
    with pytest.raises(VerticalFailed) as caught:
        align(sets, label="civil", tamper=tamper)
    return caught.value


def test_two_nodes_and_a_label_holder_alone() -> None:
    run = align({"civil": PEOPLE[:40], "tax": PEOPLE[20:]}, label="tax")
    assert sorted(run.train["tax"] + run.test["tax"]) == PEOPLE[20:40]
    assert run.train["civil"] == run.train["tax"] and run.test["civil"] == run.test["tax"]
    alone = align({"civil": PEOPLE[:10]}, label="civil")  # the label holder holds every feature
    assert sorted(alone.train["civil"] + alone.test["civil"]) == PEOPLE[:10]


@pytest.mark.parametrize(
    "sets",
    [
        {"civil": PEOPLE[:30], "tax": PEOPLE[30:]},
        {"civil": [], "tax": PEOPLE},
        {"civil": PEOPLE, "tax": []},
        {"civil": []},
    ],
)
def test_no_common_subject_fails_the_job_plainly(sets: dict[str, list[str]]) -> None:
    failure = _failure(sets)
    assert (failure.agency, str(failure)) == ("federation", f"agency 'federation': {NO_OVERLAP}")


def _tampered(kind: str, agency_node: int, change: Any) -> Any:
    def tamper(k: str, n: int, reply: dict[str, Any]) -> dict[str, Any]:
        return change(reply) if (k, n) == (kind, agency_node) else reply

    return tamper


SETS = {"civil": PEOPLE[:50], "tax": PEOPLE[10:], "hrss": PEOPLE[5:55]}  # node ids 1, 2, 3


def _outside_field(r: dict[str, Any]) -> dict[str, Any]:
    return {"share": (psi.FIELD).to_bytes(8, "little") + r["share"][8:]}


@pytest.mark.parametrize(
    ("kind", "node", "change", "agency", "reason"),
    [
        ("query.hello", 2, lambda r: {**r, "tags": r["tags"][:-1]}, "tax", "malformed blinded list"),
        ("query.hello", 3, lambda r: {}, "hrss", "malformed blinded list"),
        ("query.hello", 2, lambda r: {**r, "tags": r["tags"] + r["tags"][:32]}, "tax", "listed a subject twice"),
        ("query.hello", 1, lambda r: {**r, "tags": r["tags"][:32] * 2 + r["tags"][64:]}, "civil", "subject twice"),
        ("query.hello", 3, lambda r: {**r, "agree": r["agree"][:31]}, "hrss", "malformed agreement key"),
        ("query.hello", 1, lambda r: {"tags": r["tags"]}, "civil", "malformed agreement key"),
        ("train.blind", 2, lambda r: {}, "tax", "did not finish the label holder's whole list"),
        ("train.blind", 2, lambda r: {"finished": 3}, "tax", "did not finish the label holder's whole list"),
        ("train.blind", 1, lambda r: {**r, "matches": r["matches"][:1]}, "civil", "malformed blinded list"),
        ("train.blind", 1, lambda r: {**r, "matches": "not a list"}, "civil", "malformed blinded list"),
        ("train.blind", 1, lambda r: {**r, "matches": [r["matches"][0][:-16], r["matches"][1]]}, "civil", "malformed"),
        ("train.blind", 1, lambda r: {**r, "matches": [r["matches"][0][:16] * 50, r["matches"][1]]}, "civil", "twice"),
        ("train.blind", 1, lambda r: {"matches": r["matches"]}, "civil", "no sealed group seed"),
        ("train.blind", 1, lambda r: {**r, "seeds": r["seeds"][:1]}, "civil", "no sealed group seed"),
        ("train.membership", 2, lambda r: {}, "tax", "not 50 field elements"),
        ("train.membership", 3, lambda r: {"share": r["share"][:-8]}, "hrss", "not 50 field elements"),
        ("train.membership", 2, _outside_field, "tax", "outside the field"),
        ("train.partners", 3, lambda r: {}, "hrss", "returned no aligned positions"),
        ("train.partners", 3, lambda r: {"rows": r["rows"][4:]}, "hrss", "not the aligned subjects"),
        ("train.partners", 2, lambda r: {"rows": r["rows"][:4] + r["rows"][4:-4] + r["rows"][:4]}, "tax", "repeated"),
        ("train.partners", 2, lambda r: {"rows": psi.rows_to_bytes([999]) + r["rows"][4:]}, "tax", "beyond"),
        ("train.align", 1, lambda r: {"test": r["test"]}, "civil", "returned no train/test split"),
        ("train.align", 1, lambda r: {"train": r["train"], "test": b""}, "civil", "not the aligned subjects"),
        ("train.align", 1, lambda r: {"train": r["train"] + r["train"][:4], "test": r["test"]}, "civil", "repeated"),
        ("train.align", 1, lambda r: {"train": psi.rows_to_bytes([999]), "test": b""}, "civil", "beyond"),
        ("train.align", 1, lambda r: {"train": b"\0\0\0", "test": b""}, "civil", "4-byte"),
        ("train.align", 1, lambda r: {**r, "partners": r["partners"][:1]}, "civil", "no positions for the other"),
        ("train.align", 1, lambda r: {"train": r["train"], "test": r["test"]}, "civil", "no positions for the other"),
        ("train.align", 1, lambda r: {**r, "partners": [r["partners"][0][4:], r["partners"][1]]}, "civil", "not the"),
        ("train.align", 1, lambda r: {**r, "partners": [b"", r["partners"][1]]}, "civil", "not the aligned subjects"),
        (
            "train.align",
            1,
            lambda r: {**r, "partners": [psi.rows_to_bytes([10**6]), r["partners"][1]]},
            "civil",
            "beyond",
        ),
        (
            "train.align",
            1,
            lambda r: {**r, "partners": ["x", "y"]},
            "civil",
            "no positions for another node",
        ),
    ],
)
def test_a_wrong_reply_fails_the_job_naming_its_agency(
    kind: str, node: int, change: Any, agency: str, reason: str
) -> None:
    failure = _failure(SETS, _tampered(kind, node, change))
    assert failure.agency == agency and reason in str(failure)


def test_membership_core_refuses_what_it_cannot_use() -> None:
    key, other = psi.new_key(), psi.new_key()
    label_list = psi.finish(key, psi.first_tags(psi.new_key(), "job", ["p1", "p2"]))
    with pytest.raises(ValueError, match="16-byte"):
        psi.matches(label_list, label_list[:-1])
    with pytest.raises(ValueError, match="twice"):
        psi.matches(label_list, label_list[:16] * 2)
    assert list(psi.matches(label_list, label_list[16:])) == [-1, 0]
    with pytest.raises(ValueError, match="not 2 field elements"):
        psi.share_values(b"\0" * 8, 2)
    with pytest.raises(ValueError, match="not 1 field elements"):
        psi.intersect({2: "text"}, 1)  # type: ignore[dict-item]
    peers = [("tax", psi.agreement_public(other)), ("hrss", psi.agreement_public(psi.new_key()))]
    label = ("civil", psi.agreement_public(key))
    lists = (b"l" * 32, b"n" * 32, b"r" * 32)  # digests of the label holder's, the node's, the returned list
    sealed_for = psi.seal_context(psi.roster("job", label, peers), *lists)
    sealed = psi.seal_seed(key, psi.agreement_public(other), "job", psi.new_seed(), sealed_for)
    with pytest.raises(ValueError, match="does not open"):
        psi.open_seed(other, psi.agreement_public(key), "job-2", sealed, sealed_for)  # another job's seed
    with pytest.raises(ValueError, match="does not open"):
        psi.open_seed(psi.new_key(), psi.agreement_public(key), "job", sealed, sealed_for)  # another node's seed
    for roster in ([], peers[:1], peers[::-1], [("health", peers[0][1]), peers[1]]):  # another roster
        with pytest.raises(ValueError, match="the nodes and lists it was sent"):
            psi.open_seed(other, label[1], "job", sealed, psi.seal_context(psi.roster("job", label, roster), *lists))
    for i in range(3):  # another list in any of the three places
        other_lists = [b"x" * 32 if j == i else d for j, d in enumerate(lists)]
        with pytest.raises(ValueError, match="the nodes and lists it was sent"):
            psi.open_seed(
                other, label[1], "job", sealed, psi.seal_context(psi.roster("job", label, peers), *other_lists)
            )
    assert len(psi.open_seed(other, psi.agreement_public(key), "job", sealed, sealed_for)) == psi.SEED_BYTES
    with pytest.raises(ValueError, match="at its place"):
        psi.membership(
            other,
            "job",
            label_list,
            label_list,
            sealed,
            psi.agreement_public(key),
            [psi.agreement_public(key)],
            0,
            sealed_for,
        )
    with pytest.raises(ValueError, match="with itself"):
        psi.membership_share(np.ones(2, dtype=bool), psi.new_seed(), 0, {0: psi.new_seed()})
    with pytest.raises(ValueError, match="not among this node's matches"):
        psi.partner_rows(np.array([-1, 0]), psi.rows_to_bytes([0]))
    with pytest.raises(ValueError, match="32-byte"):
        psi.blind(key, b"short")


@settings(max_examples=40, deadline=None)
@given(
    held=st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=5),
)
def test_shares_sum_to_zero_exactly_where_every_node_holds_the_row(held: list[list[bool]]) -> None:
    """For any membership pattern: the sum is zero on the rows every node holds and non-zero
    elsewhere, whatever the pairwise masks (which must cancel)."""
    keys = [psi.new_key() for _ in held]
    pubs = [psi.agreement_public(k) for k in keys]
    group = psi.new_seed()
    shares = {
        i: psi.membership_share(
            np.array(h), group, i, {j: psi.pair_seed(keys[i], pubs[j], "job") for j in range(len(held)) if j != i}
        )
        for i, h in enumerate(held)
    }
    assert psi.intersect(shares, 12) == [r for r in range(12) if all(h[r] for h in held)]


def test_row_lists_refuse_what_no_node_sent() -> None:
    assert psi.rows_from_bytes(psi.rows_to_bytes([2, 0, 1]), 3) == [2, 0, 1]
    with pytest.raises(ValueError, match="beyond"):
        psi.rows_from_bytes(psi.rows_to_bytes([3]), 3)
    with pytest.raises(ValueError, match="repeated"):
        psi.rows_from_bytes(psi.rows_to_bytes([1, 1]), 3)
    with pytest.raises(ValueError, match="4-byte"):
        psi.rows_from_bytes(b"\0\0\0", 3)


def test_unshuffle_maps_positions_in_a_reordered_list_back_to_the_list() -> None:
    digests = [bytes([i]) * psi.MATCH_BYTES for i in range(8)]
    order = psi.new_order(8)
    returned = psi.split(psi.reorder(b"".join(digests), order), psi.MATCH_BYTES)
    picked = [5, 0, 3]
    own = psi.rows_from_bytes(psi.unshuffle(psi.rows_to_bytes(picked), order), 8)
    assert [digests[p] for p in own] == [returned[k] for k in picked]
    with pytest.raises(ValueError, match="beyond"):
        psi.unshuffle(psi.rows_to_bytes([8]), order)
