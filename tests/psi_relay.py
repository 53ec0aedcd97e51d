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
from typing import Any, NoReturn

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from federated import psi
from federated import vertical_server as server
from xgate.errors import VerticalFailed

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
    matched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

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
    ) -> None:
        self.nodes = nodes
        self.label_shuffles = label_shuffles  # False: the design before the label holder shuffled
        self.agency = {n: node.agency for n, node in nodes.items()}
        self.tamper = tamper
        self.sent: list[Traffic] = []  # coordinator -> node
        self.received: list[Traffic] = []  # node -> coordinator

    def hello(self) -> dict[int, FakeMessage]:
        replies = {
            n: {"tags": psi.first_tags(node.key, JOB, node.order), "agree": psi.agreement_public(node.agreement)}
            for n, node in self.nodes.items()
        }
        return {n: self._deliver("query.hello", n, reply) for n, reply in replies.items()}

    def send(self, kind: str, per_node: dict[int, tuple[dict[str, Any], Any]]) -> dict[int, FakeMessage]:
        out = {}
        for n, (cfg, _) in per_node.items():
            self.sent.append(Traffic(kind, n, cfg))
            out[n] = self._deliver(kind, n, self._answer(kind, self.nodes[n], cfg))
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
                (node.label_side,) = finished
                return {"finished": psi.count(node.label_side, psi.MATCH_BYTES)}
            if self.label_shuffles:
                node.shuffles = [psi.new_order(psi.count(f, psi.MATCH_BYTES)) for f in finished]
                finished = [psi.reorder(f, order) for f, order in zip(finished, node.shuffles, strict=True)]
            return {"matches": finished, "seeds": psi.sealed_group_seed(node.agreement, JOB, cfg["agree"])}
        if kind == "train.membership":
            args = (cfg["matches"], cfg["seed"], cfg["label_agree"], cfg["agree"], cfg["index"])
            node.matched, share = psi.membership(node.agreement, JOB, node.label_side, *args)
            return {"share": share}
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
) -> Aligned:
    """Run the server's alignment and split (vertical_server) over nodes holding `sets`; node ids
    1..K in the order given. Raises VerticalFailed as the job would fail."""
    nodes = {i + 1: Node(agency, members, label=agency == label) for i, (agency, members) in enumerate(sets.items())}
    relay = FakeRelay(nodes, tamper, label_shuffles)
    label_node = next(n for n, node in nodes.items() if node.agency == label)
    first = server._private_alignment(relay, sorted(nodes), label_node, relay.hello())  # type: ignore[arg-type]
    alignment, train_rows, test_rows = server._split(relay, first)  # type: ignore[arg-type]

    def subjects(rows: list[int]) -> dict[str, list[str]]:
        return {node.agency: [node.order[p] for p in alignment.positions(n, rows)] for n, node in nodes.items()}

    return Aligned(relay, alignment, subjects(train_rows), subjects(test_rows))
