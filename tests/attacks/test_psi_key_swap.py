"""A coordinator that swaps agreement keys in PSI (federated/psi_keys.py, crypto/key_statements.py).

The coordinator relays every node's X25519 agreement key. Listing one of its own in place of a
node's makes the label holder seal that node's group seed to the coordinator, which then holds ρ
for every row; in place of the label holder's (towards a node), it would pair with that node. Now
each key travels with a statement signed by its agency's CA-certified SuperNode key, and the job
fixes which agencies take part: every swap below is refused by the node it targets before that
node seals or agrees anything. The positive control runs the same swap against nodes without the
federation CA (an insecure federation): there the coordinator opens the sealed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crypto import pki
from crypto.flower_keys import certify_supernode_key
from crypto.peers import load_cert
from federated import psi, psi_keys
from tests.psi_relay import JOB, Reply, align, federation_pki
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:], "hrss": EVERYONE[10:110]}
NODE_OF = {agency: i + 1 for i, agency in enumerate(SETS)}  # tests/psi_relay.py numbers nodes in order


class Coordinator:
    """Swaps `victim`'s agreement key at hello for one of its own and keeps what is sealed to it."""

    def __init__(self, victim: str, statement: Callable[[bytes], dict[str, bytes]]) -> None:
        self.victim, self.statement = victim, statement
        self.key = psi.new_key()
        self.label_agree = b""
        self.sealed: bytes | None = None

    def __call__(self, kind: str, node: int, reply: Reply) -> Reply:
        if kind == "query.hello" and node == NODE_OF["civil"]:
            self.label_agree = reply["agree"]
        if kind == "query.hello" and node == NODE_OF[self.victim]:
            mine = psi.agreement_public(self.key)
            return {**reply, "agree": mine, **self.statement(mine)}
        if kind == "train.blind" and node == NODE_OF["civil"]:
            others = [a for a in SETS if a != "civil"]
            self.sealed = reply["seeds"][others.index(self.victim)]
        return reply

    def opened_seed(self) -> bytes:
        assert self.sealed is not None, "the label holder sealed nothing for the coordinator"
        return psi.open_seed(self.key, self.label_agree, JOB, self.sealed)


def _unsigned(_key: bytes) -> dict[str, bytes]:
    return {"agree_cert": b"", "agree_sig": b""}


def test_positive_control_without_the_ca_the_coordinator_opens_the_victims_group_seed() -> None:
    coordinator = Coordinator("tax", _unsigned)
    with pytest.raises(VerticalFailed) as failed:  # tax cannot open a seed sealed to another key
        align(SETS, label="civil", tamper=coordinator)
    assert failed.value.agency == "tax"
    assert len(coordinator.opened_seed()) == 32  # the attack worked: ρ for every row is the coordinator's


def _refused(tmp_path: Path, victim: str, statement: Callable[[bytes], dict[str, bytes]]) -> tuple[str, str]:
    coordinator = Coordinator(victim, statement)
    with pytest.raises(VerticalFailed) as failed:
        align(SETS, label="civil", tamper=coordinator, pki_dir=tmp_path)
    assert coordinator.sealed is None  # refused before anything was sealed to the coordinator's key
    return failed.value.agency, failed.value.message


def test_an_unsigned_key_in_a_nodes_place_is_refused_by_the_label_holder(tmp_path: Path) -> None:
    agency, reason = _refused(tmp_path, "tax", _unsigned)
    assert agency == "civil" and "agency 'tax' sent its agreement key unsigned" in reason


def test_the_victims_own_statement_does_not_cover_the_coordinators_key(tmp_path: Path) -> None:
    honest: dict[str, bytes] = {}

    def replay(_key: bytes) -> dict[str, bytes]:
        return honest  # tax's real statement, over tax's real key

    def keep_and_swap(kind: str, node: int, reply: Reply) -> Reply:
        if kind == "query.hello" and node == NODE_OF["tax"]:
            honest.update(agree_cert=reply["agree_cert"], agree_sig=reply["agree_sig"])
        return coordinator(kind, node, reply)

    coordinator = Coordinator("tax", replay)
    with pytest.raises(VerticalFailed) as failed:
        align(SETS, label="civil", tamper=keep_and_swap, pki_dir=tmp_path)
    assert coordinator.sealed is None and honest
    assert failed.value.agency == "civil"
    assert "agency 'tax''s agreement key is not the one its certified key signed for this job" in failed.value.message


def test_a_key_certified_by_another_ca_is_refused(tmp_path: Path) -> None:
    _, rogue = federation_pki(tmp_path / "rogue", ["tax"])  # the coordinator's own CA, certifying "tax"

    def signed_by_rogue(key: bytes) -> dict[str, bytes]:
        return psi_keys.statement_fields(JOB, "tax", key, rogue["tax"])

    agency, reason = _refused(tmp_path / "federation", "tax", signed_by_rogue)
    assert agency == "civil" and "not issued by the federation CA" in reason


def test_another_agencys_certified_key_is_refused_for_the_victims_place(tmp_path: Path) -> None:
    """An agency the coordinator controls (here "health", certified by the federation CA) signs the
    coordinator's key: its certificate is valid, but for another agency than the place it fills."""
    trust, _ = federation_pki(tmp_path, [])
    health = certify_supernode_key(tmp_path / "ca", "health", tmp_path / "health")
    assert health.certificate is not None and trust.ca_cert.is_file()
    accomplice = psi_keys.Identity(health.private_key, health.certificate)

    def signed_by_accomplice(key: bytes) -> dict[str, bytes]:
        return psi_keys.statement_fields(JOB, "health", key, accomplice)  # signed as health, listed as tax

    agency, reason = _refused(tmp_path, "tax", signed_by_accomplice)
    assert agency == "civil" and "certificate of another agency: health" in reason


def test_a_swapped_label_holder_key_is_refused_by_the_node_it_was_sent_to(tmp_path: Path) -> None:
    """The label holder does not check its own key; the node that would agree with it does."""
    mine = psi.new_key()

    def swap_label(kind: str, node: int, reply: Reply) -> Reply:
        if kind == "query.hello" and node == NODE_OF["civil"]:
            return {**reply, "agree": psi.agreement_public(mine), "agree_cert": b"", "agree_sig": b""}
        if kind == "train.membership":
            raise AssertionError("a node answered membership with a swapped label holder key")
        return reply

    with pytest.raises(VerticalFailed) as failed:
        align(SETS, label="civil", tamper=swap_label, pki_dir=tmp_path)
    assert failed.value.agency in ("tax", "hrss")
    assert "agency 'civil' sent its agreement key unsigned" in failed.value.message


def test_a_revoked_supernode_certificate_is_refused(tmp_path: Path) -> None:
    _, identities = federation_pki(tmp_path, list(SETS))
    pki.revoke(tmp_path / "ca", load_cert(identities["hrss"].certificate).serial_number)
    with pytest.raises(VerticalFailed) as failed:
        align(SETS, label="civil", pki_dir=tmp_path)
    assert failed.value.agency == "civil" and "certificate revoked" in failed.value.message


def test_honest_nodes_with_the_ca_align_exactly(tmp_path: Path) -> None:
    run = align(SETS, label="civil", pki_dir=tmp_path)
    common = set(SETS["civil"]) & set(SETS["tax"]) & set(SETS["hrss"])
    assert set(run.train["civil"]) | set(run.test["civil"]) == common
