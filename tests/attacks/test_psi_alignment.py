"""Vertical alignment by private set intersection (federated/psi.py): the coordinator sees only
fully blinded tags. The attack: a coordinator holding candidate pseudonyms (it relays check
requests, so it may know many) hashes each one and looks for it in everything alignment shows it.
With the plain pseudonym lists that alignment used to send, it finds every node's members; with
PSI it finds nothing, yet the intersection it computes is exactly the common subjects."""

from __future__ import annotations

import pytest

from federated import psi


def _nodes() -> dict[str, list[str]]:
    everyone = [f"pseudonym{i:05d}" for i in range(300)]
    return {"civil": everyone[:250], "tax": everyone[50:], "hrss": everyone[20:280]}


def _run_psi(job_id: str, sets: dict[str, list[str]]) -> tuple[dict[str, bytes], dict[str, bytes], list[bytes]]:
    """The protocol as vertical_server/_client run it: first tags, K-1 rotations, intersection."""
    keys = {a: psi.new_key() for a in sets}
    names = sorted(sets)
    lists = {a: psi.first_tags(keys[a], job_id, sets[a]) for a in names}
    seen = dict(lists)  # what the coordinator receives at hello
    for hop in range(1, len(names)):
        holder = {names[(j + hop) % len(names)]: names[j] for j in range(len(names))}
        lists = {owner: psi.blind(keys[m], lists[owner]) for m, owner in holder.items()}
        seen.update({f"{owner}@{hop}": tags for owner, tags in lists.items()})
    return lists, seen, psi.intersect([lists[a] for a in names])


def test_intersection_is_exact_and_each_node_maps_it_to_its_own_subjects() -> None:
    sets = _nodes()
    full, _, aligned = _run_psi("job-1", sets)
    common = set(sets["civil"]) & set(sets["tax"]) & set(sets["hrss"])
    assert len(aligned) == len(common) == 200
    for agency, members in sets.items():
        mine = dict(zip(psi.split(full[agency]), members, strict=True))
        assert {mine[t] for t in aligned} == common  # the same tag order at every node


def test_the_coordinator_cannot_find_any_pseudonym_in_what_it_sees() -> None:
    sets = _nodes()
    _, seen, aligned = _run_psi("job-1", sets)
    candidates = {p for members in sets.values() for p in members}
    observed = {t for tags in seen.values() for t in psi.split(tags)} | set(aligned)
    # The dictionary attack: every candidate, raw or hashed as the nodes hash it.
    probes = {psi.hash_to_u("job-1", p) for p in candidates} | {p.encode().ljust(32, b"\0") for p in candidates}
    assert not probes & observed
    # Without PSI (the old plain lists) the same attack finds every member.
    plain = {p.encode().ljust(32, b"\0") for members in sets.values() for p in members}
    assert len(probes & plain) == len(candidates)


def test_tags_are_unlinkable_across_jobs_and_blinding_commutes() -> None:
    a, b = psi.new_key(), psi.new_key()
    tags = psi.first_tags(a, "job-1", ["p1", "p2"])
    assert psi.blind(b, tags) == psi.blind(a, psi.first_tags(b, "job-1", ["p1", "p2"]))
    assert not set(psi.split(psi.first_tags(a, "job-2", ["p1", "p2"]))) & set(psi.split(tags))
    with pytest.raises(ValueError, match="32-byte"):
        psi.blind(a, b"short")
