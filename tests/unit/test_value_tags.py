"""Value tags (crypto/value_tags.py): what the nodes send so that a changed value is masked afresh.

A tag is keyed with the node's own key (kept in its store, so it outlives restarts and reloads),
covers the epoch, the element, the clamp, the pseudonym and the value, and the gateway refuses an
answer that should carry tags and does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.value_tags import TAG_BYTES, split_tags, value_tags
from exchange.eligibility import value_tags_of
from nodes.store import NodeStore
from protos.xgate.v1 import node_pb2
from xgate.errors import ConfigError, NodeProtocolError

KEY = b"\x09" * 32
PS = ["a" * 26, "b" * 26]


def test_a_tag_changes_with_every_input_and_only_then() -> None:
    base = value_tags(KEY, 4, 7, "tax.monthly_income", PS, [700, 0])
    assert len(base) == 2 * TAG_BYTES and base == value_tags(KEY, 4, 7, "tax.monthly_income", PS, [700, 0])
    variants = [
        value_tags(b"\x0a" * 32, 4, 7, "tax.monthly_income", PS, [700, 0]),  # another node's key
        value_tags(KEY, 5, 7, "tax.monthly_income", PS, [700, 0]),  # another epoch
        value_tags(KEY, 4, 8, "tax.monthly_income", PS, [700, 0]),  # another node period
        value_tags(KEY, 4, 7, "hrss.monthly_pension", PS, [700, 0]),  # another element
    ]
    assert all(v[:TAG_BYTES] != base[:TAG_BYTES] for v in variants)
    moved = value_tags(KEY, 4, 7, "tax.monthly_income", PS, [701, 0])
    assert moved[:TAG_BYTES] != base[:TAG_BYTES] and moved[TAG_BYTES:] == base[TAG_BYTES:]  # per subject


@given(a=st.integers(-(2**40), 2**40), b=st.integers(-(2**40), 2**40))
def test_different_values_never_share_a_tag_in_practice(a: int, b: int) -> None:
    same = value_tags(KEY, 1, 0, "e", PS[:1], [a]) == value_tags(KEY, 1, 0, "e", PS[:1], [b])
    assert same == (a == b)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        value_tags(b"short", 1, 0, "e", PS, [1, 2])
    with pytest.raises(ValueError, match="one value per pseudonym"):
        value_tags(KEY, 1, 0, "e", PS, [1])
    with pytest.raises(ValueError, match="expected 16 bytes"):
        split_tags(b"\0" * 15, 2)


def test_a_stores_tag_key_outlives_reopening_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = NodeStore.open(path)
    key = store.value_tag_key()
    store.close()
    again = NodeStore.open(path)
    assert again.value_tag_key() == key
    again.close()
    assert NodeStore.open(path, read_only=True).value_tag_key() == key
    assert NodeStore.open(tmp_path / "other.sqlite").value_tag_key() != key  # each store its own


def test_a_store_without_a_key_opened_read_only_says_how_to_add_one(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE elements (id TEXT)").connection.close()
    with pytest.raises(ConfigError, match="no value-tag key: start the node"):
        NodeStore.open(path, read_only=True).value_tag_key()


def _plan_and_answer(tags: bytes) -> tuple[dict[str, node_pb2.EncryptRequest], dict[str, node_pb2.EncryptResponse]]:
    request = node_pb2.EncryptRequest(pseudonyms=PS, value_tag_epoch=3)
    request.elements.add(element="tax.monthly_income")
    response = node_pb2.EncryptResponse(agency="tax")
    response.elements.add(element="tax.monthly_income", value_tags=tags)
    return {"tax": request}, {"tax": response}


def test_the_gateway_refuses_an_answer_without_tags_naming_the_node() -> None:
    assert value_tags_of(*_plan_and_answer(b"\1" * 16)) == {"tax.monthly_income": [b"\1" * 8, b"\1" * 8]}
    with pytest.raises(NodeProtocolError, match=r"no value tags for 'tax.monthly_income'.*upgrade") as err:
        value_tags_of(*_plan_and_answer(b""))
    assert err.value.agency == "tax"
    with pytest.raises(NodeProtocolError, match="expected 16 bytes"):
        value_tags_of(*_plan_and_answer(b"\1" * 8))
