"""Vertical alignment by private set intersection (federated/psi.py), a star around the label
holder, driven through the ServerApp's own alignment code (tests/psi_relay.py records every
message). The attacks are the coordinator's: it relays check requests, so it may hold many
candidate pseudonyms, and it sees every list and share that alignment moves.

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
4. Who holds which of the label holder's rows: before the membership shares, the coordinator
   matched each node's digests of the label holder's list itself and read it off for every row and
   node. Now it sees masked shares: reading membership from a share, or how many nodes miss a row
   from the shares' sum, is as good as a coin; without the pairwise masks it is exact.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

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
            out += [t.cfg["tags"]] if kind == "query.hello" else list(t.cfg.get("matches", []))
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
    # Each node is handed back only its own list as the label holder finished it; what the feature
    # nodes finished of the label holder's list never leaves them.
    returned = _received(run, "train.blind", "civil")
    others = sorted(n for n in hello if n != label)
    for t in (t for t in run.relay.sent if t.kind == "train.membership"):
        assert t.cfg["matches"] == returned[others.index(t.node)]
    assert not [
        t for t in run.relay.received if t.kind == "train.blind" and t.node != label and t.cfg != {"finished": 250}
    ]


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
    # What each feature node finished of the label holder's list stays with it; even handed over,
    # the two would match on no tag.
    by_tax, by_hrss = (
        set(psi.split(node.label_side, psi.MATCH_BYTES)) for node in run.relay.nodes.values() if not node.label
    )
    assert not by_tax & by_hrss
    assert not set(psi.split(_received(run, "query.hello", "tax")[0])) & set(
        psi.split(_received(run, "query.hello", "hrss")[0])
    )


def _colluding_guess(run: Aligned) -> dict[str, bool]:
    """The coordinator and tax together: tax's matches (which entries of the list civil returned
    to it are civil's), read as if that list were in tax's own order (as it was before the label
    holder shuffled it), with the positions the split revealed for the aligned subjects. Returns,
    for each of tax's subjects that is not aligned, whether the pair concludes civil holds it."""
    tax = next(n for n in run.relay.nodes.values() if n.agency == "tax")
    tax_id = next(i for i, n in run.relay.nodes.items() if n is tax)
    matched = {int(k) for k in tax.matched if k >= 0}
    (split,) = [t for t in run.relay.received if t.kind == "train.align"]
    (asked,) = [t for t in run.relay.sent if t.kind == "train.align"]
    others = sorted(n for n in run.relay.nodes if n != run.alignment.label_node)
    seen = psi.rows_from_bytes(asked.cfg["partners"][others.index(tax_id)], len(tax.order))
    real = psi.rows_from_bytes(split.cfg["partners"][others.index(tax_id)], len(tax.order))
    known = dict(zip(seen, real, strict=True))  # returned-list index -> tax's position (aligned only)
    aligned = {tax.order[p] for p in real}
    guess = {tax.order[k]: k in matched for k in range(len(tax.order)) if k not in known}
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
    tax = next(n for n in run.relay.nodes.values() if n.agency == "tax")
    assert int((tax.matched >= 0).sum()) == len(set(TAX) & set(CIVIL)) == 200


def _balanced_accuracy(guess: np.ndarray, truth: np.ndarray) -> float:
    return float((guess[truth].mean() + (~guess[~truth]).mean()) / 2)


def test_the_coordinator_cannot_tell_which_nodes_hold_which_of_the_label_holders_rows() -> None:
    """Three feature nodes, each holding a random 60 % of the label holder's 1,200 subjects."""
    rng = secrets.SystemRandom()
    label = [f"s{i:05d}" for i in range(1200)]
    sets = {"civil": label, **{a: rng.sample(label, 720) for a in ("tax", "hrss", "health")}}
    run = align(sets, label="civil")
    civil = next(n for n in run.relay.nodes.values() if n.label)
    shares = {
        t.node: np.frombuffer(t.cfg["share"], dtype="<u8") for t in run.relay.received if t.kind == "train.membership"
    }
    members = {n: set(sets[run.relay.agency[n]]) for n in shares}
    held = {n: np.array([p in members[n] for p in civil.order]) for n in shares}
    assert len(run.alignment.label_rows) == int(np.logical_and.reduce(list(held.values())).sum())
    for n, share in shares.items():
        # "a held row's share is zero" (what an unmasked share shows) never fires; a threshold on
        # the value does no better than a coin.
        assert _balanced_accuracy(share == 0, held[n]) == 0.5
        assert abs(_balanced_accuracy(share < psi.FIELD // 2, held[n]) - 0.5) < 0.1
    # How many nodes miss a row, from the sum (-rho times that number): a coin too.
    total = sum(s.astype(object) for s in shares.values()) % psi.FIELD
    missing = sum((~h).astype(int) for h in held.values())
    one, two = missing == 1, missing == 2
    assert one.sum() > 300 and two.sum() > 150
    guess_one = np.array([int(v) < psi.FIELD // 2 for v in total])
    assert abs(_balanced_accuracy(guess_one[one | two], one[one | two]) - 0.5) < 0.1
    # Without the pairwise masks a share is zero exactly on the rows its node holds.
    n = next(iter(shares))
    bare = np.frombuffer(psi.membership_share(held[n], psi.new_seed(), 0, {}), dtype="<u8")
    assert _balanced_accuracy(bare == 0, held[n]) == 1.0


def _all_keys_of(run: Aligned, pseudonym: str) -> bytes:
    tag = psi.hash_to_u(JOB, pseudonym)
    for node in run.relay.nodes.values():
        tag = psi.blind(node.key, tag)
    return tag


def test_alignment_moves_the_stated_bytes_per_subject() -> None:
    """Measured on the messages, as the growth from 40 to 80 subjects per list (the keys, seeds and
    indices are a fixed few hundred bytes per node): 32K at hello, 64(K-1) out, 16(K-1) back from
    the label holder, 16(K-1) on to each node and 8(K-1) in shares, 712 for K = 6 (2,112 when every
    list passed through every node); then 8(K-1) per aligned subject for the nodes' positions in
    their returned lists and 8K to and from the label holder for the split."""
    k = 6

    def measured(n: int) -> tuple[int, int, int]:
        run = align({f"agency{i}": [f"p{j}" for j in range(n)] for i in range(k)}, label="agency0")
        traffic = run.relay.received + run.relay.sent
        assert len(run.alignment.label_rows) == n

        def total(*kinds: str) -> int:
            return sum(t.size() for t in traffic if t.kind in kinds)

        return total("query.hello", "train.blind", "train.membership"), total("train.partners"), total("train.align")

    (psi40, partners40, split40), (psi80, partners80, split80) = measured(40), measured(80)
    assert (psi80 - psi40) / 40 == 32 * k + 104 * (k - 1) == 712
    assert partners80 / 80 == partners40 / 40 == 8 * (k - 1) and split80 / 80 == split40 / 40 == 8 * k


def test_blinding_commutes_and_tags_are_unlinkable_across_jobs() -> None:
    a, b = psi.new_key(), psi.new_key()
    tags = psi.first_tags(a, JOB, ["p1", "p2"])
    assert psi.blind(b, tags) == psi.blind(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert psi.finish(b, tags) == psi.finish(a, psi.first_tags(b, JOB, ["p1", "p2"]))
    assert not set(psi.split(psi.first_tags(a, "job-2", ["p1", "p2"]))) & set(psi.split(tags))
