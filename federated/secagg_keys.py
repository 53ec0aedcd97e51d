"""Which SecAgg+ public keys a node shares its secrets with: each neighbour's, signed for this job,
run and round by that agency's CA-certified SuperNode key (crypto/key_statements.py).

SecAgg+ key agreement is unauthenticated in Flower: the coordinator relays every node's (pk1, pk2)
at the share-keys stage. Unchecked, it could send one node a list whose other entries are key pairs
it made itself (Sybils); the node encrypts its shares of its self-mask seed and of sk1 to them,
and the coordinator rebuilds its masks and reads its individual update and example count.

So, as for PSI agreement keys (federated/psi_keys.py):

* at setup, once Flower's mod made the node's (pk1, pk2), the node signs them with its SuperNode
  key for the job (id and digest), the run, the round (the setup's group id), its agency and its
  Flower node id, and replies with the signature and its `flower-supernode` certificate beside the
  keys (record `STATEMENT`);
* the ServerApp's workflow (federated/horizontal_server.py `RecordedSecAggPlus`) relays every
  node's statement beside its keys at share-keys (record `STATEMENTS`, `StatementRelay`);
* at share-keys, before Flower's mod shares anything, the node checks every entry: its own is its
  keys and its agency; every other's certificate is a valid, unrevoked SuperNode certificate from
  the federation CA the node trusts (`ca_cert`, `crl` of its node config), of the agency it is
  listed as, no agency twice and none the node's own, and the signature covers exactly the keys
  listed for that node id, in this job, run and round. One failure refuses the stage.

The job does not name the agencies of a horizontal run (the coordinator says which nodes take
part), so a coordinator colluding with certified agencies can still list them: as many as the
reconstruction threshold (at least two thirds of the shares, secagg_guard) must collude to unmask
one node. A node without a CA (an insecure federation) cannot tell; it checks the listing only and
records `authenticated: false`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from flwr.app import ConfigRecord, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import Grid

from crypto.flower_keys import load_private_key
from crypto.key_statements import SecAggBinding, sign_secagg_keys, verify_secagg_keys
from federated import psi_keys
from federated.jobs import JobSpec
from federated.node import NodeConfig
from xgate.errors import CryptoError, InvalidInput, PolicyDenied

__all__ = ["STATEMENT", "STATEMENTS", "StatementRelay", "binding", "check_neighbours", "key_fingerprint", "sign_setup"]

STATEMENT = "xgate_secagg_statement"  # a node's setup reply: {agency, certificate, signature}
STATEMENTS = "xgate_secagg_statements"  # the share-keys message: {node id: [agency, certificate, signature]}


def binding(job: JobSpec, run_id: int, group_id: str) -> SecAggBinding:
    return SecAggBinding(job.job_id, job.digest(), int(run_id), str(group_id))


def key_fingerprint(pk1: bytes, pk2: bytes) -> str:
    """What a node's evidence records of a neighbour's SecAgg+ keys."""
    return hashlib.sha256(len(pk1).to_bytes(4, "big") + pk1 + pk2).hexdigest()[:32]


def sign_setup(reply: Message, nc: NodeConfig, where: SecAggBinding, node_id: int) -> tuple[bytes, bytes]:
    """This node's (pk1, pk2) from Flower's setup reply; with a certified SuperNode key, its
    statement over them is added to the reply (nothing without one: its peers with a CA refuse it)."""
    keys = reply.content.config_records[RECORD_KEY_CONFIGS]
    pk1, pk2 = keys[Key.PUBLIC_KEY_1], keys[Key.PUBLIC_KEY_2]
    if not isinstance(pk1, bytes) or not isinstance(pk2, bytes):
        raise InvalidInput("SecAgg+ setup: Flower's reply carries no public keys")
    identity = psi_keys.identity_of(nc)
    if identity is not None:
        certificate = identity.certificate.read_bytes()
        key = load_private_key(identity.key)
        signature = sign_secagg_keys(key, certificate, where, nc.agency, node_id, pk1, pk2)
        record = {"agency": nc.agency, "certificate": certificate, "signature": signature}
        reply.content.config_records[STATEMENT] = ConfigRecord(record)  # type: ignore[arg-type]
    return pk1, pk2


def _listed(configs: ConfigRecord) -> dict[int, tuple[bytes, bytes]]:
    out: dict[int, tuple[bytes, bytes]] = {}
    for name, value in configs.items():
        if name == Key.STAGE:
            continue
        if not name.isdigit() or not isinstance(value, list) or len(value) != 2:
            raise InvalidInput("SecAgg+ share-keys: a malformed list of public keys")
        pk1, pk2 = value
        if not isinstance(pk1, bytes) or not isinstance(pk2, bytes):
            raise InvalidInput("SecAgg+ share-keys: a malformed list of public keys")
        out[int(name)] = (pk1, pk2)
    return out


def _statement(relayed: ConfigRecord, node_id: int) -> tuple[str, bytes, bytes]:
    row = relayed.get(str(node_id))
    if not isinstance(row, list) or len(row) != 3 or not all(isinstance(b, bytes) for b in row):
        raise PolicyDenied(f"SecAgg+ key sharing refused: no statement of node {node_id}'s keys was relayed")
    agency, certificate, signature = cast(list[bytes], row)
    try:
        return agency.decode(), certificate, signature
    except UnicodeDecodeError:
        raise InvalidInput("SecAgg+ share-keys: a malformed agency name") from None


def check_neighbours(
    nc: NodeConfig,
    node_id: int,
    where: SecAggBinding,
    own: tuple[bytes, bytes],
    configs: ConfigRecord,
    relayed: ConfigRecord | None,
) -> dict[str, Any]:
    """Refuse the share-keys stage unless every listed key is its agency's, as the module says; the
    evidence of what the node shares with (agencies, key and certificate fingerprints) otherwise."""
    listed = _listed(configs)
    if listed.get(node_id) != own:
        raise PolicyDenied("SecAgg+ key sharing refused: this node's own entry is not the keys it made at setup")
    others = sorted(n for n in listed if n != node_id)
    keys = [key_fingerprint(*listed[n]) for n in others]
    trust = psi_keys.trust_of(nc)
    if trust is None:
        return {"authenticated": False, "neighbour_keys": keys}
    if relayed is None or {int(k) for k in relayed if k.isdigit()} != set(listed) or len(relayed) != len(listed):
        raise PolicyDenied(
            "SecAgg+ key sharing refused: the coordinator did not relay one signed statement per listed node"
        )
    agencies: list[str] = []
    certificates: list[str] = []
    for nid in sorted(listed):
        agency, certificate, signature = _statement(relayed, nid)
        if (nid == node_id) != (agency == nc.agency):
            raise PolicyDenied(
                f"SecAgg+ key sharing refused: node {nid} is listed as agency '{agency}'; this node's own"
                f" agency '{nc.agency}' is listed for itself only"
            )
        try:
            fp = verify_secagg_keys(certificate, signature, where, agency, nid, *listed[nid], trust.ca_cert, trust.crl)
        except CryptoError as exc:
            raise PolicyDenied(f"SecAgg+ key sharing refused: {exc.message}") from None
        if nid != node_id:
            agencies.append(agency)
            certificates.append(fp[:32])
    if len(set(agencies)) != len(agencies):
        raise PolicyDenied(f"SecAgg+ key sharing refused: an agency is listed for two nodes: {sorted(agencies)}")
    return {
        "authenticated": True,
        "neighbour_agencies": agencies,
        "neighbour_keys": keys,
        "neighbour_certificates": certificates,
    }


@dataclass
class StatementRelay:
    """The ServerApp's side: keeps each node's statement from its setup reply and relays, in every
    share-keys message, the statements of the nodes whose keys it lists."""

    statements: dict[int, list[bytes]] = field(default_factory=dict)

    def collecting(self, grid: Grid) -> Grid:
        self.statements = {}
        return cast(Grid, _Tap(grid, after=self._collect))

    def relaying(self, grid: Grid) -> Grid:
        return cast(Grid, _Tap(grid, before=self._relay))

    def _collect(self, replies: Iterable[Message]) -> None:
        for reply in replies:
            if reply.has_error() or STATEMENT not in reply.content.config_records:
                continue
            record = reply.content.config_records[STATEMENT]
            agency, certificate, signature = (record.get(k) for k in ("agency", "certificate", "signature"))
            if isinstance(agency, str) and isinstance(certificate, bytes) and isinstance(signature, bytes):
                self.statements[reply.metadata.src_node_id] = [agency.encode(), certificate, signature]

    def _relay(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is None or configs.get(Key.STAGE) != Stage.SHARE_KEYS:
                continue
            listed = [int(k) for k in configs if k != Key.STAGE and k.isdigit()]
            rows = {str(n): self.statements[n] for n in listed if n in self.statements}
            msg.content.config_records[STATEMENTS] = ConfigRecord(rows)  # type: ignore[arg-type]


class _Tap:
    """A Grid whose `send_and_receive` lets `before` see the messages and `after` the replies."""

    def __init__(
        self,
        grid: Grid,
        before: Callable[[list[Message]], None] | None = None,
        after: Callable[[list[Message]], None] | None = None,
    ) -> None:
        self._grid, self._before, self._after = grid, before, after

    def send_and_receive(self, messages: Iterable[Message], *args: Any, **kwargs: Any) -> Iterable[Message]:
        out = list(messages)
        if self._before is not None:
            self._before(out)
        replies = list(self._grid.send_and_receive(out, *args, **kwargs))
        if self._after is not None:
            self._after(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
