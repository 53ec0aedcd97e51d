"""Vertical alignment by private set intersection (federated/psi.py), a star around the label
holder, driven through the ServerApp's own alignment code (tests/psi_relay.py records every
message). The attacks are the coordinator's: it relays check requests, so it may hold many
candidate pseudonyms, and it sees every list that alignment moves.

1. Dictionary attack: hash every candidate as the nodes do and look for it in everything alignment
   shows. With plain pseudonym lists it finds every member; with PSI, nothing.
2. Overlap outside the label holder: count the subjects two feature nodes share that the label
   holder does not hold, even with one of them lending its key. The earlier design gave every
   list all K keys, so the coordinator could count (and, with a node, name) the overlap of any
   subset of nodes; now two feature nodes' lists carry different key pairs and never match.
3. A coordinator colluding with one feature node tries to tell which of that node's unaligned
   subjects the label holder holds. Before the label holder returned that node's list in a secret
   order, the pair read it off exactly; now it is right about half the time, as by guessing, and
   learns only how many.
"""

from __future__ import annotations

import hashlib

from federated import psi
from tests.psi_relay import JOB, Aligned, align

EVERYONE = [f"pseudonym{i:05d}" for i in range(300)]
CIVIL, TAX, HRSS = EVERYONE[:250], EVERYONE[50:], EVERYONE[100:280]


def _run() -> Aligned:
    return align({"civil": CIVIL, "tax": TAX, "hrss": HRSS}, label="civil")


def _received(run: Aligned, kind: str, agency: str) -> list[bytes]:
    """Every tag list the coordinator received from `agency` in `kind` messages."""
    node = next(n for n, a in run.relay.agency.items() if a == agency)
    out: list[bytes] = []
    for t in run.relay.received:
        if t.kind == kind and t.node == node:
            out += [t.cfg["tags"]] if kind == "query.hello" else list(t.cfg["matches"])
    return out


def test_intersection_is_exact_and_every_node_gets_the_same_subjects_in_the_same_order() -> None:
    run = _run()
    common = set(CIVIL) & set(TAX) & set(HRSS)
    assert len(run.alignment.label_rows) == len(common) == 150
    assert set(run.train["civil"]) | set(run.test["civil"]) == common
    assert run.train["civil"] and run.test["civil"]
    for agency in ("tax", "hrss"):
        assert run.train[agency] == run.train["civil"] and run.test[agency] == run.test["civil"]


def test_each_node_is_sent_only_the_label_holders_list_and_the_label_holder_only_theirs() -> None:
    run = _run()
    blind = [t for t in run.relay.sent if t.kind == "train.blind"]
    hello = {t.node: t.cfg["tags"] for t in run.relay.received if t.kind == "query.hello"}
    label = run.alignment.label_node
    for t in blind:
        expected = [hello[label]] if t.node != label else [hello[n] for n in sorted(hello) if n != label]
        assert t.cfg["tags"] == expected
    assert len(blind) == 3  # one exchange round


def test_the_coordinator_cannot_find_any_pseudonym_in_what_it_sees() -> None:
    run = _run()
    seen: set[bytes] = set()
    for t in run.relay.received:
        for tags in [t.cfg["tags"]] if t.kind == "query.hello" else t.cfg.get("matches", []):
            size = psi.TAG_BYTES if t.kind == "query.hello" else psi.MATCH_BYTES
            seen |= set(psi.split(tags, size))
    candidates = set(EVERYONE)
    hashed = {psi.hash_to_u(JOB, p) for p in candidates}
    probes = hashed | {p.encode().ljust(32, b"\0") for p in candidates}
    probes |= {h[: psi.MATCH_BYTES] for h in hashed} | {hashlib.sha256(h).digest()[: psi.MATCH_BYTES] for h in hashed}
    assert seen and not probes & seen
    # Without PSI (the old plain lists) the same attack finds every member.
    plain = {p.encode().ljust(32, b"\0") for p in candidates}
    assert len(probes & plain) == len(candidates)


def _all_keys(run: Aligned, agency: str) -> set[bytes]:
    """The earlier design: a node's list after passing through every node (all K keys)."""
    node = next(n for n in run.relay.nodes.values() if n.agency == agency)
    tags = psi.first_tags(node.key, JOB, node.order)
    for other in run.relay.nodes.values():
        if other is not node:
            tags = psi.blind(other.key, tags)
    return set(psi.split(tags))


def test_the_coordinator_cannot_count_what_two_feature_nodes_share_outside_the_label_holder() -> None:
    run = _run()
    shared, outside = set(TAX) & set(HRSS), set(TAX) & set(HRSS) - set(CIVIL)
    assert (len(shared), len(outside)) == (180, 30)
    # What the earlier design let it count: every shared subject, 30 of them not at civil.
    assert len(_all_keys(run, "tax") & _all_keys(run, "hrss")) == 180
    # Now: the two feature nodes' lists never match, not even on the 150 subjects all three share,
    # and the label holder's list as each of them finished it matches across them on no tag either.
    tax, hrss = (set(psi.split(_received(run, "train.blind", "civil")[i], psi.MATCH_BYTES)) for i in (0, 1))
    assert len(tax) == len(TAX) and len(hrss) == len(HRSS) and not tax & hrss
    by_tax, by_hrss = (set(psi.split(_received(run, "train.blind", a)[0], psi.MATCH_BYTES)) for a in ("tax", "hrss"))
    assert not by_tax & by_hrss
    assert not set(psi.split(_received(run, "query.hello", "tax")[0])) & set(
        psi.split(_received(run, "query.hello", "hrss")[0])
    )


def _colluding_guess(run: Aligned) -> dict[str, bool]:
    """The coordinator and tax together: tax's list as civil finished it, matched against civil's
    list as tax finished it, read as if in tax's own order (as it was before the label holder
    shuffled it), with the positions the split revealed for the aligned subjects. Returns, for
    each of tax's subjects that is not aligned, whether the pair concludes civil holds it."""
    tax = next(n for n in run.relay.nodes.values() if n.agency == "tax")
    tax_id = next(i for i, n in run.relay.nodes.items() if n is tax)
    returned = psi.split(_received(run, "train.blind", "civil")[0], psi.MATCH_BYTES)
    civils = set(psi.split(_received(run, "train.blind", "tax")[0], psi.MATCH_BYTES))
    (split,) = [t for t in run.relay.received if t.kind == "train.align"]
    (asked,) = [t for t in run.relay.sent if t.kind == "train.align"]
    others = sorted(n for n in run.relay.nodes if n != run.alignment.label_node)
    seen = psi.rows_from_bytes(asked.cfg["partners"][others.index(tax_id)], len(returned))
    real = psi.rows_from_bytes(split.cfg["partners"][others.index(tax_id)], len(tax.order))
    known = dict(zip(seen, real, strict=True))  # returned-list index -> tax's position (aligned only)
    aligned = {tax.order[p] for p in real}
    guess: dict[str, bool] = {}
    for k, digest in enumerate(returned):
        if k not in known:
            guess.setdefault(tax.order[k], digest in civils)
    return {p: guess.get(p, False) for p in tax.order if p not in aligned}


def test_a_coordinator_colluding_with_a_feature_node_cannot_tell_which_of_its_subjects_the_label_holder_holds() -> None:
    truth = {p: p in set(CIVIL) for p in TAX if p not in set(CIVIL) & set(HRSS)}
    assert len(truth) == 100 and sum(truth.values()) == 50  # tax's subjects outside the intersection
    # Before the label holder shuffled the lists it returns, the pair read it off exactly.
    before = _colluding_guess(align({"civil": CIVIL, "tax": TAX, "hrss": HRSS}, "civil", label_shuffles=False))
    assert before == truth
    # Now the 100 unaligned entries of the returned list are in an order only civil knows: the
    # pair is right about half the time (binomial, sd 0.05), as by guessing.
    now = _colluding_guess(_run())
    accuracy = sum(now[p] == truth[p] for p in truth) / len(truth)
    assert accuracy < 0.75
    # What it does learn: how many of tax's subjects civil holds (200; the intersection is 150).
    run = _run()
    civils = set(psi.split(_received(run, "train.blind", "tax")[0], psi.MATCH_BYTES))
    returned = psi.split(_received(run, "train.blind", "civil")[0], psi.MATCH_BYTES)
    assert sum(d in civils for d in returned) == len(set(TAX) & set(CIVIL)) == 200


def _all_keys_of(run: Aligned, pseudonym: str) -> bytes:
    tag = psi.hash_to_u(JOB, pseudonym)
    for node in run.relay.nodes.values():
        tag = psi.blind(node.key, tag)
    return tag


def test_alignment_moves_the_stated_bytes_per_subject() -> None:
    """Measured on the messages: 32K at hello, 64(K-1) out, 32(K-1) back for PSI (672 for K = 6,
    against 32K + 64K(K-1) = 2,112 when every list passed through every node), then 8K per aligned
    subject to and from the label holder for the split (its rows, and every other node's rows to
    translate)."""
    k, n = 6, 40
    run = align({f"agency{i}": [f"p{j}" for j in range(n)] for i in range(k)}, label="agency0")
    psi_bytes = sum(t.size() for t in run.relay.received + run.relay.sent if t.kind in ("query.hello", "train.blind"))
    assert psi_bytes / n == 32 * k + 96 * (k - 1) == 672
    split_bytes = sum(t.size() for t in run.relay.received + run.relay.sent if t.kind == "train.align")
    assert split_bytes / n == 8 * k and len(run.alignment.label_rows) == n


def test_blinding_commutes_and_tags_are_unlinkable_across_jobs() -> None:
    a, b = psi.new_key(), psi.new_key()
    tags = psi.first_tags(a, JOB, ["p1", "p2"])
    assert psi.blind(b, tags) == psi.blind(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert psi.finish(b, tags) == psi.finish(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert not set(psi.split(psi.first_tags(a, "job-2", ["p1", "p2"]))) & set(psi.split(tags))
