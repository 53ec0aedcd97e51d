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

Before unmask, the same tap (`StatementRelay.consistent`) asks every node the workflow is about to
send an unmask message to for its signature over exactly the active and dead lists it will be sent
(stage `CONSISTENCY`, answered by secagg_guard, once per round), and attaches all signatures, each
with its signer's certificate, to every unmask message; the node unmasks only lists it signed and
that threshold-many distinct agencies it verified at share-keys signed too (`check_consistency`).
With threshold > n/2, two list pairs cannot both gather threshold signatures from honest nodes.

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

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import Grid

from crypto.flower_keys import load_private_key
from crypto.key_statements import (
    SecAggBinding,
    sign_consistency,
    sign_secagg_keys,
    verify_consistency,
    verify_secagg_keys,
)
from crypto.peers import fingerprint, load_cert
from federated import psi_keys
from federated.jobs import JobSpec
from federated.node import NodeConfig
from xgate.errors import CryptoError, InvalidInput, PolicyDenied

__all__ = [
    "CONSISTENCY",
    "SIGNATURE",
    "SIGNATURES",
    "STATEMENT",
    "STATEMENTS",
    "StatementRelay",
    "binding",
    "check_consistency",
    "check_neighbours",
    "key_fingerprint",
    "sign_lists",
    "sign_setup",
]

STATEMENT = "xgate_secagg_statement"  # a node's setup reply: {agency, certificate, signature}
STATEMENTS = "xgate_secagg_statements"  # the share-keys message: {node id: [agency, certificate, signature]}
CONSISTENCY = "xgate-consistency"  # the SecAgg+ stage (xgate's, not Flower's) before unmask: sign the lists
SIGNATURE = "xgate_secagg_consistency"  # a node's reply to it: {signature}
SIGNATURES = "xgate_secagg_consistency_signatures"  # the unmask message: {node id: [certificate, signature]}


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
    full: list[str] = []
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
            full.append(fp)
    if len(set(agencies)) != len(agencies):
        raise PolicyDenied(f"SecAgg+ key sharing refused: an agency is listed for two nodes: {sorted(agencies)}")
    return {
        "authenticated": True,
        "neighbour_agencies": agencies,
        "neighbour_keys": keys,
        "neighbour_certificates": certificates,
        # the verified neighbour map the consistency check relies on (node id -> agency, certificate)
        "neighbour_ids": others,
        "neighbour_cert_sha256": full,
    }


def sign_lists(
    nc: NodeConfig, where: SecAggBinding, node_id: int, keys: str, active: list[int], dead: list[int]
) -> bytes:
    """This node's signature, with its certified SuperNode key, over the unmask lists it was asked to sign."""
    identity = psi_keys.identity_of(nc)
    if identity is None:
        raise PolicyDenied("SecAgg+ consistency refused: this node has no certified SuperNode key to sign with")
    return sign_consistency(load_private_key(identity.key), where, node_id, keys, active, dead)


def check_consistency(
    where: SecAggBinding,
    node_id: int,
    agency: str,
    threshold: int,
    verified: dict[str, Any],
    active: list[int],
    dead: list[int],
    relayed: ConfigRecord | None,
) -> list[str]:
    """Refuse the unmask stage unless at least `threshold` distinct agencies (this node's own, which
    signed these lists, and neighbours verified at share-keys: `verified` is what `check_neighbours`
    returned) signed exactly these active and dead lists for this job, run, round and their keys;
    the signers' agencies otherwise. Signatures over other lists are not counted."""
    ids = cast(list[int], verified.get("neighbour_ids") or [])
    agencies = cast(list[str], verified.get("neighbour_agencies") or [])
    certs = cast(list[str], verified.get("neighbour_cert_sha256") or [])
    keys = cast(list[str], verified.get("neighbour_keys") or [])
    if relayed is None:
        raise PolicyDenied("SecAgg+ unmask refused: no consistency signatures were relayed with the unmask lists")
    signers, other = [agency], 0
    for name, row in relayed.items():
        if (
            not name.isdigit()
            or not isinstance(row, list)
            or len(row) != 2
            or not all(isinstance(b, bytes) for b in row)
        ):
            raise InvalidInput("SecAgg+ unmask: a malformed consistency signature")
        nid = int(name)
        if nid == node_id:
            continue
        if nid not in ids:
            raise PolicyDenied(
                f"SecAgg+ unmask refused: node {nid} signed but is not a neighbour verified at share-keys"
            )
        i = ids.index(nid)
        certificate, signature = cast(list[bytes], row)
        try:
            same = fingerprint(load_cert(certificate)) == certs[i]
        except CryptoError:
            same = False
        if not same:
            raise PolicyDenied(
                f"SecAgg+ unmask refused: node {nid}'s consistency signature comes with another certificate than"
                f" the one of agency '{agencies[i]}' verified at share-keys"
            )
        try:
            verify_consistency(certificate, signature, where, nid, keys[i], active, dead)
        except CryptoError:
            other += 1  # signed other lists (or nothing valid): not counted
            continue
        if agencies[i] in signers:
            raise PolicyDenied(f"SecAgg+ unmask refused: agency '{agencies[i]}' signed twice")
        signers.append(agencies[i])
    if len(signers) < threshold:
        raise PolicyDenied(
            f"SecAgg+ unmask refused: {len(signers)} distinct agencies (this node's included) signed these unmask"
            f" lists, the threshold is {threshold} ({other} signature(s) over other lists or invalid): the"
            " coordinator may be sending different nodes different lists"
        )
    return sorted(signers)


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

    def consistent(self, grid: Grid) -> Grid:
        """The grid for the unmask stage: before the unmask messages go out, each of their nodes is
        asked to sign the lists it will be sent (stage `CONSISTENCY`), and every unmask message
        carries all the signatures collected, each with its signer's certificate."""
        return cast(Grid, _Consistency(grid, self.statements))

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


class _Consistency:
    """A Grid whose `send_and_receive` runs the consistency round before sending unmask messages."""

    def __init__(self, grid: Grid, statements: dict[int, list[bytes]]) -> None:
        self._grid, self._statements = grid, statements

    def send_and_receive(self, messages: Iterable[Message], *args: Any, **kwargs: Any) -> Iterable[Message]:
        out = list(messages)
        unmask = [m for m in out if _stage_of(m) == Stage.UNMASK]
        if unmask:
            asks = [_ask(m) for m in unmask]
            signatures: dict[str, list[bytes]] = {}
            for reply in self._grid.send_and_receive(asks, *args, **kwargs):
                nid = reply.metadata.src_node_id
                if reply.has_error() or SIGNATURE not in reply.content.config_records or nid not in self._statements:
                    continue
                signature = reply.content.config_records[SIGNATURE].get("signature")
                if isinstance(signature, bytes):
                    signatures[str(nid)] = [self._statements[nid][1], signature]
            for msg in unmask:
                msg.content.config_records[SIGNATURES] = ConfigRecord(signatures)  # type: ignore[arg-type]
        return self._grid.send_and_receive(out, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _stage_of(msg: Message) -> Any:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if configs is None else configs.get(Key.STAGE)


def _ask(unmask: Message) -> Message:
    """The consistency request for one unmask message: the exact lists that node will be sent."""
    configs = unmask.content.config_records[RECORD_KEY_CONFIGS]
    lists = {k: list(cast(list[int], configs[k])) for k in (Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST)}
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: CONSISTENCY, **lists})})
    return Message(
        content=content,
        dst_node_id=unmask.metadata.dst_node_id,
        message_type=MessageType.TRAIN,
        group_id=unmask.metadata.group_id,
    )
