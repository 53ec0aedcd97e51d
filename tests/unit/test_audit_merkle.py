"""RFC 6962/9162 conformance (transparency-dev/merkle vectors) and proof properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle
from xgate.errors import IntegrityError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc6962_vectors.json"


def _load() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.fail(f"conformance vectors missing: expected {VECTORS} (tests/vectors/, see SOURCES.md)")
    return json.loads(VECTORS.read_text())


V = _load()
H = bytes.fromhex


def _hashes(values: list[str] | None) -> list[bytes]:
    return [H(v) for v in values or []]


@pytest.mark.parametrize(
    "kat", V["hasher_kats"] + V["extra_vectors_google_certificate_transparency_python"]["hasher_kats"]
)
def test_hasher_kats(kat: dict[str, str]) -> None:
    if kat["op"] == "empty_root":
        got = merkle.EMPTY_ROOT
    elif kat["op"] == "leaf":
        got = merkle.leaf_hash(H(kat["input_hex"]))
    else:
        got = merkle.node_hash(H(kat["left_hex"]), H(kat["right_hex"]))
    assert got.hex() == kat["want"]


LEAVES = [merkle.leaf_hash(H(x)) for x in V["tree"]["leaf_inputs_hex"]]


@pytest.mark.parametrize("size", sorted(int(n) for n in V["tree"]["root_hashes_by_size"]))
def test_roots(size: int) -> None:
    want = V["tree"]["root_hashes_by_size"][str(size)]
    assert merkle.root_of(LEAVES[:size]).hex() == want
    assert merkle.root_from_nodes(size, merkle.fetch_from_leaves(LEAVES)).hex() == want


def test_node_hashes_by_level() -> None:
    fetch = merkle.fetch_from_leaves(LEAVES)
    for level, row in enumerate(V["tree"]["node_hashes_by_level"]):
        for index, want in enumerate(row):
            assert fetch([(level, index)])[(level, index)].hex() == want


def _probe_id(p: dict[str, Any]) -> str:
    return p["file"].removeprefix("testdata/")


@pytest.mark.parametrize("probe", V["inclusion_probes"], ids=_probe_id)
def test_inclusion_probes(probe: dict[str, Any]) -> None:
    def run() -> None:
        merkle.verify_inclusion(
            probe["leafIdx"], probe["treeSize"], H(probe["leafHash"]), _hashes(probe["proof"]), H(probe["root"])
        )

    if probe["wantErr"]:
        with pytest.raises(IntegrityError):
            run()
    else:
        run()


@pytest.mark.parametrize("probe", V["consistency_probes"], ids=_probe_id)
def test_consistency_probes(probe: dict[str, Any]) -> None:
    def run() -> None:
        merkle.verify_consistency(
            probe["size1"], probe["size2"], H(probe["root1"]), H(probe["root2"]), _hashes(probe["proof"])
        )

    if probe["wantErr"]:
        with pytest.raises(IntegrityError):
            run()
    else:
        run()


def test_probe_counts_are_complete() -> None:
    # Guard against a trimmed vector file silently weakening the suite.
    assert len(V["inclusion_probes"]) == 98 and len(V["consistency_probes"]) == 98
    assert sum(not p["wantErr"] for p in V["inclusion_probes"]) >= 6


def test_generated_proofs_equal_golden_happy_paths() -> None:
    fetch = merkle.fetch_from_leaves(LEAVES)
    checked = 0
    for p in V["inclusion_probes"]:
        if p["desc"] == "happy path" and p["treeSize"] <= len(LEAVES) and p["leafHash"] == LEAVES[p["leafIdx"]].hex():
            assert [h.hex() for h in merkle.inclusion_proof(p["leafIdx"], p["treeSize"], fetch)] == (p["proof"] or [])
            checked += 1
    for p in V["consistency_probes"]:
        if p["desc"] == "happy path" and p["size2"] <= len(LEAVES):
            assert [h.hex() for h in merkle.consistency_proof(p["size1"], p["size2"], fetch)] == (p["proof"] or [])
            checked += 1
    assert checked >= 8


def test_real_ct_log_inclusion_vector() -> None:
    e = V["extra_vectors_google_certificate_transparency_python"]["real_log_inclusion_vector"]
    merkle.verify_inclusion(e["leafIdx"], e["treeSize"], H(e["leafHash"]), _hashes(e["proof"]), H(e["root"]))
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(e["leafIdx"] + 1, e["treeSize"], H(e["leafHash"]), _hashes(e["proof"]), H(e["root"]))


def _tree(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_inclusion_property(size: int, data: st.DataObject) -> None:
    leaves = _tree(size)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, merkle.fetch_from_leaves(leaves))
    root = merkle.root_of(leaves)
    merkle.verify_inclusion(index, size, leaves[index], proof, root)
    # Any single-bit flip anywhere (leaf, proof node, root) must be rejected.
    target = data.draw(st.integers(0, len(proof) + 1))
    bit = data.draw(st.integers(0, 255))
    leaf, root_m, proof_m = leaves[index], root, list(proof)

    def flip(b: bytes) -> bytes:
        arr = bytearray(b)
        arr[bit // 8] ^= 1 << (bit % 8)
        return bytes(arr)

    if target == len(proof):
        leaf = flip(leaf)
    elif target == len(proof) + 1:
        root_m = flip(root)
    else:
        proof_m[target] = flip(proof_m[target])
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(index, size, leaf, proof_m, root_m)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_property(new: int, data: st.DataObject) -> None:
    leaves = _tree(new)
    old = data.draw(st.integers(1, new))
    fetch = merkle.fetch_from_leaves(leaves)
    proof = merkle.consistency_proof(old, new, fetch)
    r1, r2 = merkle.root_of(leaves[:old]), merkle.root_of(leaves)
    merkle.verify_consistency(old, new, r1, r2, proof)
    if old == new:
        return
    target = data.draw(st.integers(0, len(proof) + 1))
    bit = data.draw(st.integers(0, 255))

    def flip(b: bytes) -> bytes:
        arr = bytearray(b)
        arr[bit // 8] ^= 1 << (bit % 8)
        return bytes(arr)

    p = list(proof)
    if target == len(proof):
        r1 = flip(r1)
    elif target == len(proof) + 1:
        r2 = flip(r2)
    else:
        p[target] = flip(p[target])
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(old, new, r1, r2, p)


@given(st.integers(1, 300), st.integers(1, 300))
def test_frontier_matches_root(a: int, b: int) -> None:
    leaves = _tree(a + b)
    f = merkle.Frontier()
    created = []
    for h in leaves[:a]:
        created += f.append(h)
    assert f.root() == merkle.root_of(leaves[:a])
    # Every created node is the hash of that complete subtree.
    fetch = merkle.fetch_from_leaves(leaves)
    for level, index, h in created:
        assert fetch([(level, index)])[(level, index)] == h


def test_proofs_need_logarithmic_lookups_at_a_million() -> None:
    size = 1_000_000
    looked: list[merkle.NodeId] = []

    def fetch(ids: Any) -> dict[merkle.NodeId, bytes]:
        looked.extend(ids)
        return {i: bytes(32) for i in ids}

    merkle.inclusion_proof(123_457, size, fetch)
    assert len(looked) <= 2 * 20
    looked.clear()
    merkle.consistency_proof(654_321, size, fetch)
    assert len(looked) <= 3 * 20


def test_missing_node_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="missing"):
        merkle.inclusion_proof(0, 5, lambda ids: {})


@pytest.mark.parametrize(("index", "size"), [(5, 5), (-1, 5), (0, 0), (1 << 64, 1 << 64 + 1)])
def test_inclusion_ranges_refuse_bad_positions(index: int, size: int) -> None:
    with pytest.raises(IntegrityError):
        merkle.inclusion_ranges(index, size)


@pytest.mark.parametrize(("old", "new"), [(0, 5), (6, 5), (-1, 3)])
def test_consistency_ranges_refuse_bad_sizes(old: int, new: int) -> None:
    with pytest.raises(IntegrityError):
        merkle.consistency_ranges(old, new)
