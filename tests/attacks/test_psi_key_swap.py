"""A coordinator that tampers with the PSI keys and rosters it relays, tried against the nodes'
real ClientApp handlers (tests/clientapp_relay.py: the ServerApp's own alignment code, real Flower
Messages, each node with its store, CA-certified SuperNode key and the federation CA on disk).

The coordinator relays every node's X25519 agreement key. Listing one of its own in place of a
node's makes the label holder seal that node's group seed to the coordinator, which then holds ρ
for every row; handing a node a list of peers without the others (a roster of one) strips its
share of the pairwise masks, so the share is zero exactly on the rows it holds. Each key now
travels with a statement signed by its agency's certified SuperNode key (crypto/key_statements.py),
the label holder seals the seed for the roster it checked (federated/psi.py `roster`), a node
opens it only under the roster it was sent, and each PSI step answers once per job. Every attack
below is refused by the node it targets before anything is sealed to, or computed for, the
coordinator. The positive controls run the same swap against nodes without the CA (there the
coordinator opens the sealed seed) and show what an unmasked share would have told.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crypto import pki
from crypto.flower_keys import certify_supernode_key
from crypto.peers import load_cert
from federated import psi, psi_keys
from federated import vertical_server as server
from tests.clientapp_relay import Federation, federation
from tests.psi_relay import federation_pki
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:], "hrss": EVERYONE[10:110]}
COMMON = set(SETS["civil"]) & set(SETS["tax"]) & set(SETS["hrss"])
Cfg = dict[str, Any]


class Coordinator:
    """Swaps `victim`'s agreement key at hello for one of its own and keeps what is sealed to it."""

    def __init__(self, fed: Federation, victim: str, statement: Callable[[bytes, bytes], dict[str, bytes]]) -> None:
        self.job_id, self.victim, self.statement = fed.job.job_id, victim, statement
        self.key = psi.new_key()
        self.label_agree = self.label_tags = self.returned = b""
        self.blind_request: Cfg = {}
        self.sealed: bytes | None = None
        fed.relay.on_request, fed.relay.on_reply = self.request, self.reply

    def request(self, kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "train.blind" and agency == "civil":
            self.blind_request = cfg
        return cfg

    def reply(self, kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "query.hello" and agency == "civil":
            self.label_agree, self.label_tags = cfg["agree"], cfg["tags"]
        if kind == "query.hello" and agency == self.victim:
            mine = psi.agreement_public(self.key)
            return {**cfg, "agree": mine, **self.statement(mine, cfg["tags"])}
        if kind == "train.blind" and agency == "civil" and self.victim != "civil":
            at = self.blind_request["agencies"].index(self.victim)
            self.sealed, self.returned = cfg["seeds"][at], cfg["matches"][at]
        return cfg

    def opened_seed(self) -> bytes:
        assert self.sealed is not None, "the label holder sealed nothing for the coordinator"
        # It relayed every list the seal binds, so it can compute what the seed was sealed for.
        listed = list(zip(self.blind_request["agencies"], self.blind_request["agree"], strict=True))
        roster = psi.roster(self.job_id, ("civil", self.label_agree), listed)
        victim_tags = self.blind_request["tags"][self.blind_request["agencies"].index(self.victim)]
        sealed_for = psi.seal_context(roster, _sha(self.label_tags), _sha(victim_tags), _sha(self.returned))
        return psi.open_seed(self.key, self.label_agree, self.job_id, self.sealed, sealed_for)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _unsigned(_key: bytes, _tags: bytes) -> dict[str, bytes]:
    return {"agree_cert": b"", "agree_sig": b""}


def _refused(fed: Federation) -> VerticalFailed:
    with pytest.raises(VerticalFailed) as failed:
        fed.align()
    return failed.value


def test_honest_nodes_align_exactly_and_say_they_checked_every_key(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    alignment, train, test = fed.align()
    assert len(alignment.label_rows) == len(COMMON) and sorted(train + test) == alignment.label_rows
    assert alignment.keys_checked


def test_positive_control_without_the_ca_the_coordinator_opens_the_victims_group_seed(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS, ca=False)
    coordinator = Coordinator(fed, "tax", _unsigned)
    failed = _refused(fed)  # tax finds another key in its place and stops...
    assert failed.agency == "tax" and "agreement key at its place" in failed.message
    assert len(coordinator.opened_seed()) == psi.SEED_BYTES  # ...the coordinator can: ρ for every row


def test_an_unsigned_key_in_a_nodes_place_is_refused_by_the_label_holder(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    coordinator = Coordinator(fed, "tax", _unsigned)
    failed = _refused(fed)
    assert coordinator.sealed is None  # refused before anything was sealed to the coordinator's key
    assert failed.agency == "civil" and "agency 'tax' sent its agreement key unsigned" in failed.message


def test_the_victims_own_statement_does_not_cover_the_coordinators_key(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    honest: dict[str, bytes] = {}
    coordinator = Coordinator(fed, "tax", lambda _key, _tags: honest)  # tax's real statement, over tax's real key
    swap = coordinator.reply

    def keep_then_swap(kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "query.hello" and agency == "tax":
            honest.update(agree_cert=cfg["agree_cert"], agree_sig=cfg["agree_sig"])
        return swap(kind, agency, cfg)

    fed.relay.on_reply = keep_then_swap
    failed = _refused(fed)
    assert coordinator.sealed is None and honest["agree_sig"]
    assert failed.agency == "civil"
    assert "agency 'tax''s agreement key or list is not the one its certified key signed for this job" in failed.message


def test_a_key_certified_by_another_ca_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path / "federation", SETS)
    _, rogue = federation_pki(tmp_path / "rogue", ["tax"])  # the coordinator's own CA, certifying "tax"
    coordinator = Coordinator(
        fed, "tax", lambda key, tags: psi_keys.statement_fields(fed.job.job_id, "tax", key, tags, rogue["tax"])
    )
    failed = _refused(fed)
    assert coordinator.sealed is None
    assert failed.agency == "civil" and "not issued by the federation CA" in failed.message


def test_another_agencys_certified_key_is_refused_for_the_victims_place(tmp_path: Path) -> None:
    """An agency the coordinator controls ("health", certified by the federation CA) signs the
    coordinator's key: its certificate is valid, but of another agency than the place it fills."""
    fed = federation(tmp_path, SETS)
    health = certify_supernode_key(tmp_path / "pki" / "ca", "health", tmp_path / "health")
    assert health.certificate is not None
    accomplice = psi_keys.Identity(health.private_key, health.certificate)
    coordinator = Coordinator(
        fed, "tax", lambda key, tags: psi_keys.statement_fields(fed.job.job_id, "health", key, tags, accomplice)
    )
    failed = _refused(fed)
    assert coordinator.sealed is None
    assert failed.agency == "civil" and "certificate of another agency: health" in failed.message


def test_a_swapped_label_holder_key_is_refused_by_the_node_it_was_sent_to(tmp_path: Path) -> None:
    """The label holder does not check its own key; a node that would open the seed with it does."""
    fed = federation(tmp_path, SETS)
    coordinator = Coordinator(fed, "civil", _unsigned)
    failed = _refused(fed)
    assert failed.agency in ("tax", "hrss")
    assert "agency 'civil' sent its agreement key unsigned" in failed.message
    assert coordinator.label_agree  # the hello it swapped


def test_a_revoked_supernode_certificate_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    hrss_cert = fed.relay.configs[fed.node_of["hrss"]].identity_cert
    assert hrss_cert is not None
    pki.revoke(tmp_path / "pki" / "ca", load_cert(hrss_cert).serial_number)
    failed = _refused(fed)
    assert failed.agency == "civil" and "certificate revoked" in failed.message


def test_a_node_whose_supernode_key_has_no_certificate_is_refused_by_its_peers(tmp_path: Path) -> None:
    """A real node configured without `supernode_cert`: it has nothing to sign with."""
    fed = federation(tmp_path, SETS, uncertified="hrss")
    failed = _refused(fed)
    assert failed.agency == "civil" and "agency 'hrss' sent its agreement key unsigned" in failed.message


def _strip_peers(victim: str) -> Callable[[str, str, Cfg], Cfg]:
    """The coordinator hands `victim` a membership request listing only itself as a peer."""

    def request(kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "train.membership" and agency == victim:
            me = cfg["agencies"].index(victim)
            cfg = {
                **cfg,
                **{k: [cfg[k][me]] for k in ("agencies", "agree", "agree_cert", "agree_sig", "agree_list")},
                "index": 0,
            }
        return cfg

    return request


def test_a_roster_without_the_other_nodes_is_refused_below_the_jobs_min_nodes(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)  # min_nodes = 3: every node needs two peers
    fed.relay.on_request = _strip_peers("tax")
    failed = _refused(fed)
    assert failed.agency == "tax" and "listed 1 other nodes, the job needs at least 2" in failed.message


def test_a_roster_the_seed_was_not_sealed_for_does_not_open_it(tmp_path: Path) -> None:
    """With min_nodes = 2 a single peer is a legal count, so the roster binding is what refuses."""
    fed = federation(tmp_path, SETS, min_nodes=2)
    fed.relay.on_request = _strip_peers("tax")
    failed = _refused(fed)
    assert failed.agency == "tax"
    assert "does not open with this node's key and the nodes and lists it was sent" in failed.message


def test_positive_control_a_share_without_peers_is_zero_exactly_on_the_rows_the_node_holds() -> None:
    """What the stripped roster would have bought: no pairwise masks, so the share reads as membership."""
    held = np.random.default_rng(3).random(500) < 0.6
    share = np.frombuffer(psi.membership_share(held, psi.new_seed(), 0, {}), dtype="<u8")
    assert np.array_equal(share == 0, held)
    masked = np.frombuffer(psi.membership_share(held, psi.new_seed(), 0, {1: psi.new_seed()}), dtype="<u8")
    assert not np.any(masked == 0)


def test_each_psi_step_answers_once_per_job(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    sent: dict[tuple[str, str], Cfg] = {}

    def keep(kind: str, agency: str, cfg: Cfg) -> Cfg:
        sent[kind, agency] = cfg
        return cfg

    fed.relay.on_request = keep
    fed.align()
    for kind, agency, step in (("train.blind", "civil", "blind"), ("train.membership", "tax", "membership")):
        with pytest.raises(VerticalFailed, match=f"already answered '{step}' in this run"):
            fed.relay.send(kind, {fed.node_of[agency]: (sent[kind, agency], {})})
    # Nor hello: a second one would re-key and re-order the lists this run aligned (review).
    with pytest.raises(VerticalFailed, match="already answered 'hello' in this run"):
        fed.relay.send("query.hello", {fed.node_of["tax"]: ({}, {})})


def test_two_runs_of_a_job_keep_their_psi_state_apart(tmp_path: Path) -> None:
    """A run's PSI keys, lists and orders live in its own directory: a second run started while
    the first is aligning (a coordinator may) does not re-key or re-order the first one's lists."""
    fed = federation(tmp_path, SETS)
    parts = sorted(fed.relay.configs)
    first_hello = fed.relay.hello()
    fed.relay.run_id = 2
    fed.relay.hello()  # run 2 says hello in between
    fed.relay.run_id = 1
    alignment = server._private_alignment(fed.relay, parts, fed.node_of["civil"], first_hello)  # type: ignore[arg-type]
    assert len(alignment.label_rows) == len(COMMON)


def test_a_feature_node_called_the_label_holder_refuses_setup(tmp_path: Path) -> None:
    """Record-level DP: a feature node decides from the job and its store whether it adds noise,
    never from the coordinator's `label_holder` flag (which would have it release clean embeddings)."""
    fed = federation(tmp_path, SETS, dp=True)
    alignment, train, test = fed.align()
    tax = fed.node_of["tax"]
    rows = {
        "train": psi.rows_to_bytes(alignment.positions(tax, train)),
        "test": psi.rows_to_bytes(alignment.positions(tax, test)),
    }
    with pytest.raises(VerticalFailed, match="label_holder=True is wrong for this node"):
        fed.relay.send("train.setup", {tax: ({**rows, "label_holder": True, "width": 12}, {})})
    with pytest.raises(VerticalFailed, match="trains its bottom in 'top', not in 'step'"):
        fed.relay.send("train.step", {fed.node_of["civil"]: ({"step": 0, "grad_step": -2}, {})})


def _swap_label_list(victim: str, change: Callable[[list[bytes]], list[bytes]]) -> Callable[[str, str, Cfg], Cfg]:
    """The coordinator hands `victim` another list as the label holder's (its tags changed)."""

    def request(kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "train.blind" and agency == victim:
            tags = psi.split(cfg["tags"][0])
            cfg = {**cfg, "tags": [b"".join(change(tags))]}
        return cfg

    return request


def test_the_label_holders_list_with_one_row_repeated_is_refused(tmp_path: Path) -> None:
    """Row k repeated in every place: the node's share would say at every row whether it holds k,
    and the shares' sum would read another node's whole membership off the label holder's rows."""
    fed = federation(tmp_path, SETS)
    fed.relay.on_request = _swap_label_list("hrss", lambda tags: [tags[0]] * len(tags))
    failed = _refused(fed)
    assert failed.agency == "hrss" and "the label holder's list names a subject twice" in failed.message


def test_the_label_holders_list_reordered_does_not_open_the_seed(tmp_path: Path) -> None:
    """A permutation has no repeat, but the seed is sealed for the list as the label holder sent it."""
    fed = federation(tmp_path, SETS)
    fed.relay.on_request = _swap_label_list("hrss", lambda tags: tags[1:] + tags[:1])
    failed = _refused(fed)
    assert failed.agency == "hrss" and "does not open with this node's key and the nodes and lists" in failed.message


def test_positive_control_a_repeated_row_makes_every_match_that_rows() -> None:
    key_l, key_i = psi.new_key(), psi.new_key()
    label_tags = psi.first_tags(key_l, "job", ["a", "b", "c", "d"])
    node_tags = psi.first_tags(key_i, "job", ["b", "x"])
    returned = psi.finish(key_l, node_tags)  # the node's list as the label holder finished it
    honest = psi.matches(psi.finish(key_i, label_tags), returned)
    repeated = psi.matches(psi.finish(key_i, psi.split(label_tags)[1] * 4), returned)  # row "b" everywhere
    assert list(honest >= 0) == [False, True, False, False]
    assert list(repeated >= 0) == [True, True, True, True]  # "does it hold b?" at every row


@pytest.mark.parametrize("ca", [True, False])
def test_the_label_holder_undoes_its_secret_order_only_for_the_aligned_rows(tmp_path: Path, ca: bool) -> None:
    """Asked to translate every position of a node's list, the label holder would hand back its
    whole secret order for that list, and a colluding node would learn which of its subjects the
    label holder holds. With the CA, tax never signed those positions; without, the count refuses."""
    fed = federation(tmp_path, SETS, ca=ca)

    def all_positions(kind: str, agency: str, cfg: Cfg) -> Cfg:
        if kind == "train.align":
            everyone = psi.rows_to_bytes(range(len(SETS["tax"])))
            cfg = {**cfg, "partners": [everyone, *cfg["partners"][1:]]}
        return cfg

    fed.relay.on_request = all_positions
    failed = _refused(fed)
    refusal = "agency 'tax' did not sign these aligned subjects" if ca else f"not {len(COMMON)} positions"
    assert failed.agency == "civil" and refusal in failed.message
