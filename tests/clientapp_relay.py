"""The vertical ServerApp's own alignment code (`federated.vertical_server._private_alignment`,
`_split`) driving the nodes' real ClientApp handlers (`federated.vertical_client.hello`, `blind`,
`membership`, `aligned_positions`, `align`) in one process: real Flower Messages and Contexts, each
node with its own store, node config and cache on disk, as its SuperNode would run it.

Where tests/psi_relay.py answers as the ClientApps would (to read what every message carries),
this relay answers with the ClientApps themselves, so an attack that a node's checks must stop is
tried against the code a node runs. A coordinator's tampering is a hook on each request before it
reaches a node (`on_request`) and on each reply before the server code reads it (`on_reply`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from crypto import sealed_arrays
from crypto.flower_keys import generate_supernode_key
from federated import datasets, psi
from federated import vertical_client as client
from federated import vertical_server as server
from federated.admission import LedgerAdmission
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from tests.psi_relay import federation_pki
from xgate.errors import VerticalFailed

Cfg = dict[str, Any]
Hook = Callable[[str, str, Cfg], Cfg]  # (message type, agency, cfg) -> cfg as passed on
HANDLERS = {
    "query.hello": client.hello,
    "train.blind": client.blind,
    "train.membership": client.membership,
    "train.partners": client.aligned_positions,
    "train.align": client.align,
    "train.setup": client.setup,
    "train.step": client.step,
    "train.top": client.top,
    "train.labels": client.labels,
    "train.fit": client.fit,
    "evaluate.top": client.evaluate_top,
}
LABEL = "civil"
FEATURE = {"civil": "civil.age", "tax": "tax.income", "hrss": "hrss.months", "health": "health.visits"}


def vertical_job(
    agencies: list[str],
    min_nodes: int,
    dp: bool = False,
    top_calibration: float | None = None,
    scheme: str = "split",
) -> JobSpec:
    body: Cfg = {
        "job_id": "psi-real-nodes",
        "purpose": "fraud-model",
        "mode": "vertical",
        "features": [FEATURE[a] for a in agencies if a != LABEL],
        "label": "civil.label",
        "label_holder": LABEL,
        "rounds": 1,
        "min_nodes": min_nodes,
    }
    if dp:
        body["dp"] = {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}
    if top_calibration is not None:
        body["top_calibration"] = top_calibration
    if scheme != "split":
        body["vertical_scheme"] = scheme
        body["batch_size"] = 64  # q = 0.07 on these ~900 rows: the accountant's quick regime
        if dp:
            del body["dp"]["clip"]  # a stacked part's DP-SGD takes its own default clip
    return parse_job(body)


def _node_config(nc: NodeConfig) -> dict[str, str]:
    """What a SuperNode's `--node-config` gives its ClientApps (federated/node.py reads it back)."""
    return {k: str(v) for k, v in dataclasses.asdict(nc).items() if v is not None}


class ClientAppRelay:
    """Runs `send` as the coordinator's relay does, each message answered by the node's ClientApp."""

    def __init__(self, job: JobSpec, configs: dict[int, NodeConfig], root: Path) -> None:
        self.job, self.configs, self.root = job, configs, root
        self.agency = {n: nc.agency for n, nc in configs.items()}
        self.on_request: Hook | None = None
        self.on_reply: Hook | None = None
        self.run_config_extra: Cfg = {}  # what a coordinator adds to the run config it writes
        self.run_id = 1  # a coordinator starting the job again sends under a new run id

    def hello(self) -> dict[int, Message]:
        return self.send("query.hello", {n: ({}, {}) for n in self.configs})

    def send(self, kind: str, per_node: dict[int, tuple[Cfg, dict[str, np.ndarray]]]) -> dict[int, Message]:
        replies = {}
        run_config = {**self.job.run_config(self.root / "job"), **self.run_config_extra}
        for n, (cfg, arrays) in per_node.items():
            who = self.agency[n]
            if self.on_request is not None:
                cfg = self.on_request(kind, who, dict(cfg))
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self.run_id, n, 1
            record = RecordDict({"cfg": ConfigRecord(cfg)})
            if arrays:
                record["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
            msg = Message(record, dst_node_id=n, message_type=kind)
            context = Context(self.run_id, n, _node_config(self.configs[n]), RecordDict(), run_config)  # type: ignore[arg-type]
            try:
                reply = HANDLERS[kind](msg, context)
            except Exception as exc:  # noqa: BLE001 (as Flower does: a ClientApp's exception is an error reply)
                self.fail(who, f"'{kind}' failed: {exc}")
            if self.on_reply is not None:
                answered = self.on_reply(kind, who, dict(reply.content["cfg"]))
                reply = Message(RecordDict({"cfg": ConfigRecord(answered)}), reply_to=msg)
            replies[n] = reply
        return replies

    def fail(self, agency: str, reason: str) -> NoReturn:
        raise VerticalFailed(agency, reason)


@dataclasses.dataclass
class Federation:
    """Nodes with stores holding `sets` (agency -> pseudonyms), certified SuperNode keys (unless
    `ca` is False) and the federation CA in every node config."""

    relay: ClientAppRelay
    job: JobSpec
    node_of: dict[str, int]

    def set_up(self) -> tuple[dict[int, Cfg], list[int]]:
        """One run's alignment, split and setup, as the ServerApp drives them: each node's setup
        request and the held-out rows (label holder positions)."""
        alignment, train, test = self.align()
        parts = sorted(self.relay.configs)
        width = self.relay.job.embedding_dim * len(parts)  # the job the relay sends now
        requests = server._setup_requests(alignment, parts, self.node_of[LABEL], train, test, width)
        self.relay.send("train.setup", requests)
        return {n: cfg for n, (cfg, _) in requests.items()}, test

    def sealing(self, agency: str, kind: str, step: int) -> tuple[bytes, sealed_arrays.Binding]:
        """The key feature node `agency` agreed with the label holder in this run (as the label
        holder keeps it until its evaluation), and the binding of its `kind` at `step`."""
        nc = self.relay.configs[self.node_of[LABEL]]
        run_dir = nc.ledger.parent / "fl-cache" / self.relay.job.job_id / f"run-{self.relay.run_id}"
        keys = json.loads((run_dir / "transport-keys.json").read_text())
        job = self.relay.job
        binding = sealed_arrays.Binding(job.job_id, job.digest(), str(self.relay.run_id), kind, step, agency)
        return bytes.fromhex(keys[agency]), binding

    def sealed_by(self, agency: str, wire: np.ndarray, kind: str, step: int) -> np.ndarray:
        """`wire` (a matrix in the wire format) sealed with the key feature node `agency` agreed with
        the label holder in this run: what that node, colluding with the coordinator, could send."""
        return sealed_arrays.seal(*self._with(agency, kind, step, wire))

    def opened_by(self, agency: str, sealed: np.ndarray, kind: str, step: int) -> np.ndarray:
        """What the label holder reads of an array feature node `agency` sealed for it (or the reverse)."""
        return sealed_arrays.open_sealed(*self._with(agency, kind, step, sealed))

    def _with(
        self, agency: str, kind: str, step: int, array: np.ndarray
    ) -> tuple[bytes, np.ndarray, sealed_arrays.Binding]:
        key, binding = self.sealing(agency, kind, step)
        return key, array, binding

    def align(self) -> tuple[psi.Alignment, list[int], list[int]]:
        """The server's alignment and split: every node's positions, and the train and test rows
        (as label holder positions)."""
        parts = sorted(self.relay.configs)
        hello = self.relay.hello()
        first = server._private_alignment(self.relay, parts, self.node_of[LABEL], hello)  # type: ignore[arg-type]
        return server._split(self.relay, first)  # type: ignore[arg-type]


def federation(
    root: Path,
    sets: dict[str, list[str]],
    *,
    ca: bool = True,
    uncertified: str | None = None,
    min_nodes: int | None = None,
    dp: bool = False,
    top_calibration: float | None = None,
    scheme: str = "split",
) -> Federation:
    """`uncertified`: that agency's SuperNode key has no certificate (it sends its key unsigned);
    `min_nodes` defaults to every agency; `dp`: a record-level DP job (with `top_calibration`);
    `scheme`: the job's vertical_scheme."""
    agencies = list(sets)
    job = vertical_job(agencies, min_nodes or len(agencies), dp, top_calibration, scheme)
    trust, identities = federation_pki(root / "pki", agencies)
    configs: dict[int, NodeConfig] = {}
    for i, agency in enumerate(agencies, start=1):
        home = root / agency
        store = home / "store.sqlite"
        members = sets[agency]
        columns = {FEATURE[agency]: datasets.Column(np.arange(len(members)) % 50, "int", 0, 100)}
        if agency == LABEL:
            columns["civil.label"] = datasets.Column(np.arange(len(members)) % 2, "flag", 0, 1)
        datasets.write_store(store, f"psi_{agency}", members, columns)
        admission = LedgerAdmission(home / "ledger.sqlite", store)  # each node approves the job in its ledger
        admission.configure(["fraud-model"], {f"psi_{agency}": 10.0})
        assert admission(job, agency).approved
        identity = identities[agency]
        key, cert = identity.key, identity.certificate
        if agency == uncertified or not ca:  # without the CA (an insecure federation) nobody signs
            key, cert = generate_supernode_key(home, agency).private_key, None
        configs[i] = NodeConfig(
            store, agency, home / "ledger.sqlite", None, None,
            identity_key=key if cert is not None else None, identity_cert=cert,
            ca_cert=trust.ca_cert if ca else None, crl=trust.crl if ca else None,
        )  # fmt: skip
    return Federation(ClientAppRelay(job, configs, root), job, {a: i for i, a in enumerate(agencies, start=1)})


ReplyEdit = Callable[[str, str, Message, Message], Message]  # (type, agency, request, reply) -> reply


class NodeIds:
    """The Grid's node listing, for `server.run_vertical` driven over `handler_exchange`."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def get_node_ids(self) -> list[int]:
        return self.ids


def handler_exchange(relay: ClientAppRelay, edit: ReplyEdit | None = None) -> Callable[..., dict[int, Message]]:
    """A stand-in for `federated.vertical_server.exchange` (monkeypatch it in): each message answered
    by its node's real ClientApp handler, each reply passed through `edit` (a coordinator's view of
    a node that answers otherwise) before the ServerApp reads it."""

    def exchange(_grid: Any, msgs: list[Message], _timeout: float) -> dict[int, Message]:
        out = {}
        run_config = relay.job.run_config(relay.root / "job")
        for m in msgs:
            n = m.metadata.dst_node_id
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = relay.run_id, n, 1
            context = Context(relay.run_id, n, _node_config(relay.configs[n]), RecordDict(), run_config)  # type: ignore[arg-type]
            reply = HANDLERS[m.metadata.message_type](m, context)
            out[n] = reply if edit is None else edit(m.metadata.message_type, relay.agency[n], m, reply)
        return out

    return exchange
