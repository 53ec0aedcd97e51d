"""Testing a guess of one person's record against the data digest a node attests.

Every training job's `model.json` carries each node's data digest, and the coordinator receives it
from the node (`data_sha256`). It was a plain SHA-256 over the datasets' source digests and row
counts, themselves plain SHA-256 of the data: anyone who knows every record but one (DP's
adversary) could rebuild the data for each candidate value of the missing one and see which
candidate's digest matches, offline and as often as it likes. The digest is now keyed with the
node's own secret (`data-digest.key` beside its ledger, HMAC-SHA256): the same data still gives
the same digest at that node (provenance), and without the key no candidate can be checked.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from federated import datasets, node_keys

ELEMENTS = ("civil.age", "tax.label")


def _world(root: Path, victim_age: int) -> tuple[Path, Path]:
    """A node store whose records the attacker knows, but for the victim's age."""
    rng = np.random.default_rng(0)
    ages = rng.integers(18, 90, 300)
    ages[0] = victim_age
    cols = {
        "civil.age": datasets.Column(ages, "int", 0, 120),
        "tax.label": datasets.Column(rng.integers(0, 2, 300), "flag", 0, 1),
    }
    store = root / "store.sqlite"
    datasets.write_store(store, "claims", [f"p{i}" for i in range(300)], cols)
    return store, root / "ledger.sqlite"


def _unkeyed_digest(store: Path) -> str:
    """The digest as nodes computed it before: SHA-256 over the same rows, no key."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT DISTINCT name, source_sha256, rows FROM datasets ORDER BY 1").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _guess(reported: str, root: Path, candidates: range, digest: object) -> list[int]:
    """The attacker rebuilds the store for each candidate age and keeps those whose digest matches."""
    out = []
    for age in candidates:
        store, _ = _world(root / f"guess-{age}", age)
        if digest(store) == reported:  # type: ignore[operator]
            out.append(age)
    return out


def test_positive_control_an_unkeyed_digest_names_the_victims_age(tmp_path: Path) -> None:
    store, _ = _world(tmp_path / "node", 47)
    found = _guess(_unkeyed_digest(store), tmp_path / "attacker", range(40, 56), _unkeyed_digest)
    assert found == [47]


def test_the_keyed_digest_matches_no_candidate(tmp_path: Path) -> None:
    store, ledger = _world(tmp_path / "node", 47)
    reported = node_keys.data_digest(store, ledger, ELEMENTS)
    attacker_key = ledger.parent / "attacker"  # whatever key the attacker makes for itself
    attacker_key.mkdir()
    for digest in (_unkeyed_digest, lambda s: node_keys.data_digest(s, attacker_key / "ledger", ELEMENTS)):
        assert _guess(reported, tmp_path / "attacker", range(40, 56), digest) == []
    # Provenance still holds at the node: the same data, the same digest; other data, another.
    assert node_keys.data_digest(store, ledger, ELEMENTS) == reported
    other, _ = _world(tmp_path / "node2", 48)
    assert node_keys.data_digest(other, ledger, ELEMENTS) != reported
    assert (ledger.parent / node_keys.DATA_DIGEST_KEY).stat().st_mode & 0o777 == 0o600


def test_a_damaged_key_is_refused_not_used(tmp_path: Path) -> None:
    store, ledger = _world(tmp_path / "node", 47)
    (ledger.parent / node_keys.DATA_DIGEST_KEY).write_bytes(b"short")
    with pytest.raises(ValueError, match=r"data-digest\.key is damaged"):
        node_keys.data_digest(store, ledger, ELEMENTS)
