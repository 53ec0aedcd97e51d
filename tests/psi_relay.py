"""A stand-in for the vertical ServerApp's relay (`federated.vertical_server._Relay`) that answers
alignment messages as the nodes' ClientApps would (`federated.vertical_client.blind`, `membership`,
`partners`, `align`: the same federated/psi.py calls), and
records every message it carries. Tests drive the server's own alignment code through it, so an
attack test sees exactly what the coordinator receives and what each node is sent."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from crypto import pki
from crypto.flower_keys import certify_supernode_key
from federated import psi, psi_keys
from federated import vertical_server as server
from xgate.errors import CryptoError, VerticalFailed

JOB = "job-1"
Reply = dict[str, Any]


@dataclass
class Node:
    agency: str
    members: list[str]
    label: bool = False
    key: bytes = field(default_factory=psi.new_key)
    agreement: bytes = field(default_factory=psi.new_key)
    order: list[str] = field(init=False)
    shuffles: list[np.ndarray] = field(default_factory=list)  # the label holder's, from `blind`
    label_side: bytes = b""  # another node's: the label holder's list as it finished it
    label_hello: bytes = b""  # another node's: SHA-256 of the label holder's list as it received it
    matched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    identity: psi_keys.Identity | None = None  # its SuperNode key and certificate: signs its agreement key

    def __post_init__(self) -> None:
        self.order = list(self.members)
        secrets.SystemRandom().shuffle(self.order)  # as hello does: positions reveal nothing


def is_test(pseudonym: str) -> bool:
    """The label holder's holdout rule here: a keyed-hash-like quarter of the subjects."""
    return hashlib.sha256(pseudonym.encode()).digest()[0] < 64


@dataclass
class Traffic:
    kind: str
    node: int
    cfg: dict[str, Any]

    def size(self) -> int:
        """Bytes carried (numbers count nothing: a handful per message, not per subject)."""
        return sum(
            len(v) if isinstance(v, bytes) else sum(map(len, v)) if isinstance(v, list) else 0
            for v in self.cfg.values()
        )


@dataclass
class FakeMessage:
    """What `grid_io.cfg_of` reads of a Flower reply (a real Message needs a running Flower run)."""

    content: RecordDict


def _message(cfg: Reply) -> FakeMessage:
    return FakeMessage(RecordDict({"cfg": ConfigRecord(cfg)}))


class FakeRelay:
    def __init__(
        self,
        nodes: dict[int, Node],
        tamper: Callable[[str, int, Reply], Reply] | None = None,
        label_shuffles: bool = True,
        trust: psi_keys.Trust | None = None,
    ) -> None:
        self.nodes = nodes
        self.trust = trust  # every node's: the federation CA its peers' agreement keys must verify against
        self.label = next(node.agency for node in nodes.values() if node.label)  # the job's label holder
        self.label_shuffles = label_shuffles  # False: the design before the label holder shuffled
        self.agency = {n: node.agency for n, node in nodes.items()}
        self.tamper = tamper
        self.sent: list[Traffic] = []  # coordinator -> node
        self.received: list[Traffic] = []  # node -> coordinator

    def hello(self) -> dict[int, FakeMessage]:
        replies = {}
        for n, node in self.nodes.items():
            agree = psi.agreement_public(node.agreement)
            tags = psi.first_tags(node.key, JOB, node.order)
            signed = psi_keys.statement_fields(JOB, node.agency, agree, tags, node.identity)
            replies[n] = {"tags": tags, "agree": agree, **signed}
        return {n: self._deliver("query.hello", n, reply) for n, reply in replies.items()}

    def send(self, kind: str, per_node: dict[int, tuple[dict[str, Any], Any]]) -> dict[int, FakeMessage]:
        out = {}
        for n, (cfg, _) in per_node.items():
            self.sent.append(Traffic(kind, n, cfg))
            try:
                reply = self._answer(kind, self.nodes[n], cfg)
            except (ValueError, CryptoError) as exc:  # a ClientApp's exception: its reply is an error
                self.fail(self.agency[n], f"'{kind}' failed: {exc}")
            out[n] = self._deliver(kind, n, reply)
        return out

    def _deliver(self, kind: str, n: int, reply: Reply) -> FakeMessage:
        if self.tamper is not None:
            reply = self.tamper(kind, n, reply)
        self.received.append(Traffic(kind, n, reply))
        return _message(reply)

    def _answer(self, kind: str, node: Node, cfg: dict[str, Any]) -> Reply:
        if kind == "train.blind":
            finished = [psi.finish(node.key, tags) for tags in cfg["tags"]]
            if not node.label:
                node.label_hello = _sha(cfg["tags"][0])
                (node.label_side,) = finished
                return {"finished": psi.count(node.label_side, psi.MATCH_BYTES)}
            if self.label_shuffles:
                node.shuffles = [psi.new_order(psi.count(f, psi.MATCH_BYTES)) for f in finished]
                finished = [psi.reorder(f, order) for f, order in zip(finished, node.shuffles, strict=True)]
            listed = psi_keys.relayed(cfg)
            peers = psi_keys.peer_keys(JOB, listed, self.label, self.trust, len(self.nodes) - 1)
            psi_keys.check_lists(listed, cfg["tags"])
            roster = psi_keys.roster(JOB, node.agency, psi.agreement_public(node.agreement), listed)
            own = _sha(psi.first_tags(node.key, JOB, node.order))
            contexts = [
                psi.seal_context(roster, own, _sha(sent), _sha(back)) for sent, back in zip(cfg["tags"], finished)
            ]
            seeds = psi.sealed_group_seed(node.agreement, JOB, peers, contexts)
            return {"matches": finished, "seeds": seeds, "keys_checked": self.trust is not None}
        if kind == "train.membership":
            label_key = psi_keys.label_key(JOB, psi_keys.relayed(cfg, "label_"), self.label, self.trust)
            listed = psi_keys.relayed(cfg)
            everyone = psi_keys.peer_keys(JOB, listed, self.label, self.trust, len(self.nodes) - 1)
            roster = psi_keys.roster(JOB, self.label, label_key, listed)
            own = _sha(psi.first_tags(node.key, JOB, node.order))
            sealed_for = psi.seal_context(roster, node.label_hello, own, _sha(cfg["matches"]))
            args = (cfg["matches"], cfg["seed"], label_key, everyone, cfg["index"], sealed_for)
            node.matched, share = psi.membership(node.agreement, JOB, node.label_side, *args)
            return {"share": share, "keys_checked": self.trust is not None}
        if kind == "train.partners":
            return {"rows": psi.partner_rows(node.matched, cfg["aligned"])}
        if kind == "train.align":
            rows = psi.rows_from_bytes(cfg["aligned"], len(node.order))
            test = [is_test(node.order[r]) for r in rows]
            reply: Reply = {
                "train": psi.rows_to_bytes([r for r, t in zip(rows, test, strict=True) if not t]),
                "test": psi.rows_to_bytes([r for r, t in zip(rows, test, strict=True) if t]),
            }
            if "partners" in cfg:  # without shuffles (the earlier design) positions are the lists' own
                reply["partners"] = (
                    [psi.unshuffle(b, order) for b, order in zip(cfg["partners"], node.shuffles, strict=True)]
                    if node.shuffles
                    else list(cfg["partners"])
                )
            return reply
        raise AssertionError(f"alignment sent an unexpected '{kind}'")

    def fail(self, agency: str, reason: str) -> NoReturn:
        raise VerticalFailed(agency, reason)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Aligned:
    relay: FakeRelay
    alignment: psi.Alignment  # after the split: every node's own positions
    train: dict[str, list[str]]  # per agency, its training subjects in the order it would use them
    test: dict[str, list[str]]


def align(
    sets: dict[str, list[str]],
    label: str,
    tamper: Callable[[str, int, Reply], Reply] | None = None,
    label_shuffles: bool = True,
    pki_dir: Path | None = None,
) -> Aligned:
    """Run the server's alignment and split (vertical_server) over nodes holding `sets`; node ids
    1..K in the order given. With `pki_dir` (see `federation_pki`) every node signs its agreement
    key and checks its peers'. Raises VerticalFailed as the job would fail."""
    nodes = {i + 1: Node(agency, members, label=agency == label) for i, (agency, members) in enumerate(sets.items())}
    trust = None
    if pki_dir is not None:
        trust, identities = federation_pki(pki_dir, list(sets))
        for node in nodes.values():
            node.identity = identities[node.agency]
    relay = FakeRelay(nodes, tamper, label_shuffles, trust)
    label_node = next(n for n, node in nodes.items() if node.agency == label)
    first = server._private_alignment(relay, sorted(nodes), label_node, relay.hello())  # type: ignore[arg-type]
    alignment, train_rows, test_rows = server._split(relay, first)  # type: ignore[arg-type]

    def subjects(rows: list[int]) -> dict[str, list[str]]:
        return {node.agency: [node.order[p] for p in alignment.positions(n, rows)] for n, node in nodes.items()}

    return Aligned(relay, alignment, subjects(train_rows), subjects(test_rows))


def federation_pki(out: Path, agencies: list[str]) -> tuple[psi_keys.Trust, dict[str, psi_keys.Identity]]:
    """A federation CA under `out` and a CA-certified SuperNode key per agency (as `xgate pki` issues)."""
    ca = out / "ca"
    if not (ca / pki.CA_CERT).is_file():
        pki.init_ca(ca, "xgate test federation CA", days=2)
    identities = {}
    for agency in agencies:
        home = out / "nodes" / agency
        key, cert = home / f"supernode-{agency}.ssh.key", home / f"flower-supernode-{agency}.cert.pem"
        if not cert.is_file():  # issued once: a second call (e.g. after a revocation) sees the same keys
            home.mkdir(parents=True, exist_ok=True)
            issued = certify_supernode_key(ca, agency, home)
            assert (issued.private_key, issued.certificate) == (key, cert)
        identities[agency] = psi_keys.Identity(key, cert)
    return psi_keys.Trust(ca / pki.CA_CERT, ca / pki.CRL), identities
