"""The vertical ServerApp's alignment (`vertical_server._private_alignment`, `_split`) over nodes
that answer as the ClientApps do (tests/psi_relay.py): edge cases, and every refusal names the
agency whose reply was wrong. The pure core (`federated.psi.align`, row lists) is checked below."""

from __future__ import annotations

from typing import Any

import pytest

from federated import psi
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
    assert (failure.agency, str(failure)) == ("federation", "agency 'federation': the nodes share no subjects")


def _tampered(kind: str, agency_node: int, change: Any) -> Any:
    def tamper(k: str, n: int, reply: dict[str, Any]) -> dict[str, Any]:
        return change(reply) if (k, n) == (kind, agency_node) else reply

    return tamper


SETS = {"civil": PEOPLE[:50], "tax": PEOPLE[10:], "hrss": PEOPLE[5:55]}  # node ids 1, 2, 3


@pytest.mark.parametrize(
    ("kind", "node", "change", "agency", "reason"),
    [
        ("query.hello", 2, lambda r: {"tags": r["tags"][:-1]}, "tax", "malformed blinded list"),
        ("query.hello", 3, lambda r: {}, "hrss", "malformed blinded list"),
        ("query.hello", 2, lambda r: {"tags": r["tags"] + r["tags"][:32]}, "tax", "listed a subject twice"),
        ("query.hello", 1, lambda r: {"tags": r["tags"][:32] * 2 + r["tags"][64:]}, "civil", "listed a subject twice"),
        ("train.blind", 2, lambda r: {"matches": []}, "tax", "malformed blinded list"),
        ("train.blind", 2, lambda r: {"matches": [r["matches"][0][:-16]]}, "tax", "malformed blinded list"),
        ("train.blind", 2, lambda r: {"matches": [r["matches"][0][:16] * 50]}, "tax", "listed a subject twice"),
        ("train.blind", 1, lambda r: {"matches": r["matches"][:1]}, "civil", "malformed blinded list"),
        ("train.blind", 1, lambda r: {"matches": "not a list"}, "civil", "malformed blinded list"),
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


def test_alignment_core_refuses_malformed_lists() -> None:
    key = psi.new_key()
    label = psi.finish(key, psi.first_tags(psi.new_key(), "job", ["p1", "p2"]))
    with pytest.raises(ValueError, match="whole list"):
        psi.align(1, 3, {2: label}, {2: label})
    with pytest.raises(ValueError, match="16-byte"):
        psi.align(1, 2, {2: label}, {2: label[:-1]})
    with pytest.raises(ValueError, match="repeats a subject"):
        psi.align(1, 2, {2: label}, {2: label[:16] * 2})
    with pytest.raises(ValueError, match="both its side"):
        psi.align(1, 2, {2: label}, {3: label})
    with pytest.raises(ValueError, match="32-byte"):
        psi.blind(key, b"short")


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
