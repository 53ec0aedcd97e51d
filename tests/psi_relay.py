"""A stand-in for the vertical ServerApp's relay (`federated.vertical_server._Relay`) that answers
alignment messages as the nodes' ClientApps would (`federated.vertical_client.blind`/`align`), and
records every message it carries. Tests drive the server's own alignment code through it, so an
attack test sees exactly what the coordinator receives and what each node is sent."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

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
    key: bytes = field(default_factory=psi.new_key)
    order: list[str] = field(init=False)

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
        return sum(len(v) if isinstance(v, bytes) else sum(map(len, v)) for v in self.cfg.values())


@dataclass
class FakeMessage:
    """What `grid_io.cfg_of` reads of a Flower reply (a real Message needs a running Flower run)."""

    content: RecordDict


def _message(cfg: Reply) -> FakeMessage:
    return FakeMessage(RecordDict({"cfg": ConfigRecord(cfg)}))


class FakeRelay:
    def __init__(self, nodes: dict[int, Node], tamper: Callable[[str, int, Reply], Reply] | None = None) -> None:
        self.nodes = nodes
        self.agency = {n: node.agency for n, node in nodes.items()}
        self.tamper = tamper
        self.sent: list[Traffic] = []  # coordinator -> node
        self.received: list[Traffic] = []  # node -> coordinator

    def hello(self) -> dict[int, FakeMessage]:
        replies = {n: {"tags": psi.first_tags(node.key, JOB, node.order)} for n, node in self.nodes.items()}
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

    @staticmethod
    def _answer(kind: str, node: Node, cfg: dict[str, Any]) -> Reply:
        if kind == "train.blind":
            return {"matches": [psi.finish(node.key, tags) for tags in cfg["tags"]]}
        if kind == "train.align":
            rows = psi.rows_from_bytes(cfg["aligned"], len(node.order))
            test = [is_test(node.order[r]) for r in rows]
            return {
                "train": psi.rows_to_bytes([r for r, t in zip(rows, test, strict=True) if not t]),
                "test": psi.rows_to_bytes([r for r, t in zip(rows, test, strict=True) if t]),
            }
        raise AssertionError(f"alignment sent an unexpected '{kind}'")

    def fail(self, agency: str, reason: str) -> NoReturn:
        raise VerticalFailed(agency, reason)


@dataclass
class Aligned:
    relay: FakeRelay
    alignment: psi.Alignment
    train: dict[str, list[str]]  # per agency, its training subjects in the order it would use them
    test: dict[str, list[str]]


def align(sets: dict[str, list[str]], label: str, tamper: Callable[[str, int, Reply], Reply] | None = None) -> Aligned:
    """Run the server's alignment and split (vertical_server) over nodes holding `sets`; node ids
    1..K in the order given. Raises VerticalFailed as the job would fail."""
    nodes = {i + 1: Node(agency, members) for i, (agency, members) in enumerate(sets.items())}
    relay = FakeRelay(nodes, tamper)
    label_node = next(n for n, node in nodes.items() if node.agency == label)
    alignment = server._private_alignment(relay, sorted(nodes), label_node, relay.hello())  # type: ignore[arg-type]
    train_rows, test_rows = server._split(relay, alignment)  # type: ignore[arg-type]

    def subjects(rows: list[int]) -> dict[str, list[str]]:
        return {node.agency: [node.order[p] for p in alignment.positions(n, rows)] for n, node in nodes.items()}

    return Aligned(relay, alignment, subjects(train_rows), subjects(test_rows))
