"""Vertical alignment by private set intersection (federated/psi.py), a star around the label
holder. The attacks are the coordinator's: it relays check requests, so it may hold many candidate
pseudonyms, and it sees every list that alignment moves.

1. Dictionary attack: hash every candidate as the nodes do and look for it in everything alignment
   shows. With plain pseudonym lists it finds every member; with PSI, nothing.
2. Overlap outside the label holder: count the subjects two feature nodes share that the label
   holder does not hold. The earlier design gave every list all K keys, so the coordinator could
   count the overlap of any subset of nodes; now lists of two feature nodes carry different key
   pairs and never match.
3. Coordinator colluding with one feature node (its key known): still cannot test a guessed
   pseudonym against the label holder's list, which needs the label holder's key too.
"""

from __future__ import annotations

import hashlib

import pytest

from federated import psi

JOB = "job-1"


def _nodes() -> dict[str, list[str]]:
    everyone = [f"pseudonym{i:05d}" for i in range(300)]
    return {"civil": everyone[:250], "tax": everyone[50:], "hrss": everyone[20:280]}


def _run_psi(
    sets: dict[str, list[str]], label: str = "civil"
) -> tuple[dict[str, bytes], psi.Alignment, dict[str, bytes]]:
    """The protocol as vertical_server/_client run it. Returns the keys, the alignment, and every
    list the coordinator receives, by name."""
    keys = {a: psi.new_key() for a in sets}
    first = {a: psi.first_tags(keys[a], JOB, sets[a]) for a in sets}
    others = [a for a in sorted(sets) if a != label]
    label_side = {a: psi.finish(keys[a], first[label]) for a in others}  # node a finishes L's list
    node_side = {a: psi.finish(keys[label], first[a]) for a in others}  # L finishes node a's list
    seen = {f"hello:{a}": t for a, t in first.items()}
    seen |= {f"label_side:{a}": t for a, t in label_side.items()} | {f"node_side:{a}": t for a, t in node_side.items()}
    return keys, psi.align(len(sets[label]), label_side, node_side), seen


def _digests(seen: dict[str, bytes]) -> set[bytes]:
    return {
        t
        for name, tags in seen.items()
        for t in psi.split(tags, psi.TAG_BYTES if name.startswith("hello") else psi.MATCH_BYTES)
    }


def test_intersection_is_exact_and_each_node_maps_it_to_its_own_subjects() -> None:
    sets = _nodes()
    _, alignment, _ = _run_psi(sets)
    common = set(sets["civil"]) & set(sets["tax"]) & set(sets["hrss"])
    assert len(alignment.label_rows) == len(common) == 200
    subjects = [sets["civil"][r] for r in alignment.label_rows]
    assert set(subjects) == common
    for agency in ("tax", "hrss"):  # the same subject at the same place in every node's rows
        assert [sets[agency][r] for r in alignment.positions(agency, alignment.label_rows)] == subjects
    some = alignment.label_rows[::7]
    assert [sets["tax"][r] for r in alignment.positions("tax", some)] == [sets["civil"][r] for r in some]


def test_the_coordinator_cannot_find_any_pseudonym_in_what_it_sees() -> None:
    sets = _nodes()
    _, _, seen = _run_psi(sets)
    candidates = {p for members in sets.values() for p in members}
    hashed = {psi.hash_to_u(JOB, p) for p in candidates}
    probes = hashed | {p.encode().ljust(32, b"\0") for p in candidates}
    probes |= {h[: psi.MATCH_BYTES] for h in hashed} | {hashlib.sha256(h).digest()[: psi.MATCH_BYTES] for h in hashed}
    assert not probes & _digests(seen)
    # Without PSI (the old plain lists) the same attack finds every member.
    plain = {p.encode().ljust(32, b"\0") for members in sets.values() for p in members}
    assert len(probes & plain) == len(candidates)


def _all_keys_overlap(sets: dict[str, list[str]], keys: dict[str, bytes], a: str, b: str) -> int:
    """The earlier design: every list passed through every node and carried all K keys."""

    def full(owner: str) -> set[bytes]:
        tags = psi.first_tags(keys[owner], JOB, sets[owner])
        for other in sorted(sets):
            if other != owner:
                tags = psi.blind(keys[other], tags)
        return set(psi.split(tags))

    return len(full(a) & full(b))


def test_the_coordinator_cannot_count_what_two_feature_nodes_share_outside_the_label_holder() -> None:
    sets = _nodes()
    keys, _, seen = _run_psi(sets)
    outside = set(sets["tax"]) & set(sets["hrss"]) - set(sets["civil"])
    assert len(outside) == 30
    # What the old design let it count: tax and hrss share 230 subjects, 30 of them not at civil.
    assert _all_keys_overlap(sets, keys, "tax", "hrss") == len(set(sets["tax"]) & set(sets["hrss"])) == 230
    # Now the two feature nodes' lists never match, not even on the subjects all three share.
    tax = set(psi.split(seen["node_side:tax"], psi.MATCH_BYTES))
    hrss = set(psi.split(seen["node_side:hrss"], psi.MATCH_BYTES))
    assert len(tax) == 250 and len(hrss) == 260 and not tax & hrss
    assert not set(psi.split(seen["hello:tax"])) & set(psi.split(seen["hello:hrss"]))


def test_a_feature_node_lending_its_key_does_not_let_the_coordinator_test_the_label_holders_list() -> None:
    sets = _nodes()
    keys, _, seen = _run_psi(sets)
    label_list = set(psi.split(seen["label_side:tax"], psi.MATCH_BYTES)) | set(psi.split(seen["hello:civil"]))
    # Everything the pair can compute for a guessed pseudonym with tax's key alone.
    guesses = [p for p in sets["civil"]]
    probes = {psi.first_tags(keys["tax"], JOB, [p]) for p in guesses}
    probes |= {psi.finish(keys["tax"], psi.hash_to_u(JOB, p)) for p in guesses}
    assert not probes & label_list
    # The label holder's key is what is missing: with it, every guess would be found.
    found = {psi.finish(keys["tax"], psi.first_tags(keys["civil"], JOB, [p])) for p in guesses}
    assert found <= label_list and len(found) == len(guesses)


def test_each_node_moves_a_bounded_number_of_bytes_per_subject() -> None:
    """32K bytes at hello, 64(K-1) out to be finished, 32(K-1) back: 672 per subject for K = 6,
    against 32K + 64K(K-1) = 2,112 when every list passed through every node."""
    k, n = 6, 40
    sets = {f"agency{i}": [f"p{j}" for j in range(n)] for i in range(k)}
    _, alignment, seen = _run_psi(sets, label="agency0")
    others = len(sets) - 1
    out = sum(len(seen[f"hello:{a}"]) for a in sets) + 2 * others * n * psi.TAG_BYTES  # hello + lists sent out
    back = sum(len(t) for name, t in seen.items() if not name.startswith("hello"))
    assert (out + back) / n == 32 * k + 96 * (k - 1) == 672
    assert len(alignment.label_rows) == n


def test_blinding_commutes_and_tags_are_unlinkable_across_jobs() -> None:
    a, b = psi.new_key(), psi.new_key()
    tags = psi.first_tags(a, JOB, ["p1", "p2"])
    assert psi.blind(b, tags) == psi.blind(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert psi.finish(b, tags) == psi.finish(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert not set(psi.split(psi.first_tags(a, "job-2", ["p1", "p2"]))) & set(psi.split(tags))
    with pytest.raises(ValueError, match="32-byte"):
        psi.blind(a, b"short")


def test_alignment_refuses_malformed_lists() -> None:
    key = psi.new_key()
    label = psi.finish(key, psi.first_tags(psi.new_key(), JOB, ["p1", "p2"]))
    with pytest.raises(ValueError, match="whole list"):
        psi.align(3, {"tax": label}, {"tax": label})
    with pytest.raises(ValueError, match="16-byte"):
        psi.align(2, {"tax": label}, {"tax": label[:-1]})
    with pytest.raises(ValueError, match="repeats a subject"):
        psi.align(2, {"tax": label}, {"tax": label[:16] * 2})
    with pytest.raises(ValueError, match="both its side"):
        psi.align(2, {"tax": label}, {"hrss": label})


def test_row_lists_refuse_what_no_node_sent() -> None:
    assert psi.rows_from_bytes(psi.rows_to_bytes([2, 0, 1]), 3) == [2, 0, 1]
    with pytest.raises(ValueError, match="beyond"):
        psi.rows_from_bytes(psi.rows_to_bytes([3]), 3)
    with pytest.raises(ValueError, match="repeated"):
        psi.rows_from_bytes(psi.rows_to_bytes([1, 1]), 3)
    with pytest.raises(ValueError, match="4-byte"):
        psi.rows_from_bytes(b"\0\0\0", 3)
