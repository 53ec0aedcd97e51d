"""The node's own audit log and its witness role for the gateway's log (both sides log, X-Road style).

Every answer the node gives is appended to its own Merkle log before the answer leaves; the
gateway records the node's leaf hash, so either side can prove what happened. As a witness the
node cosigns the gateway's checkpoints only after checking they extend what it cosigned before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from audit import AuditLog, NoteVerifier, Signer, Witness, load_private_key, load_public_key
from nodes.config import NodeSettings
from protos.xgate.v1 import node_pb2
from xgate.errors import ConfigError

GATEWAY_LOG_ORIGIN = "xgate.gateway/audit"


def node_log_origin(agency: str) -> str:
    return f"xgate.node.{agency}/audit"


def replica_log_origin(replica: str) -> str:
    """A gateway replica's own log (gateway/audit.py gateway_log_origin)."""
    return f"xgate.gateway.{replica}/audit"


def witness_name(agency: str) -> str:
    return f"xgate.node.{agency}/witness"


@dataclass
class NodeAudit:
    log: AuditLog
    witness: Witness | None
    agency: str
    # Gateway replicas (`gateway_replica_keys`): one witness state per replica log, by origin.
    replica_witnesses: dict[str, Witness] = field(default_factory=dict)

    def record(self, event: dict[str, object]) -> tuple[bytes, int]:
        receipt = self.log.append(event)  # durable before the answer leaves
        return receipt.leaf_hash, receipt.index

    def _witness_for(self, request: node_pb2.CosignRequest) -> Witness:
        """The witness of the log the request is about: the note's origin line (a state query
        carries the origin alone; none: the gateway's historical single log)."""
        first = request.checkpoint.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        if first in self.replica_witnesses:
            return self.replica_witnesses[first]
        if self.witness is None or (first and first != self.witness.origin):
            raise ConfigError(f"this node does not witness the log '{first[:80]}'")
        return self.witness

    def cosign(self, request: node_pb2.CosignRequest) -> node_pb2.CosignResponse:
        if self.witness is None and not self.replica_witnesses:
            raise ConfigError("this node is not configured as a witness (no gateway_audit_key)")
        witness = self._witness_for(request)
        if request.state_only:  # what this witness last cosigned: the gateway checks its log against it
            known = witness.state
            return node_pb2.CosignResponse(
                agency=self.agency,
                cosignature=known.line.encode() if known else b"",
                key_id=witness.cosigner.key_id.hex(),
                size=known.size if known else 0,
                root=known.root if known else b"",
            )
        line = witness.cosign(
            request.checkpoint.decode("utf-8", errors="strict"),
            list(request.consistency_proof),
            old_size=request.old_size,
        )
        state = witness.state
        return node_pb2.CosignResponse(
            agency=self.agency,
            cosignature=line.encode(),
            key_id=witness.cosigner.key_id.hex(),
            size=state.size if state else 0,
            root=state.root if state else b"",
        )

    def close(self) -> None:
        self.log.close()


def open_node_audit(settings: NodeSettings) -> NodeAudit | None:
    if settings.audit_db is None:
        return None
    if settings.audit_key is None:
        raise ConfigError("a node with an audit_db needs audit_key (Ed25519 private key, PEM) to sign checkpoints")
    key = load_private_key(settings.audit_key)
    origin = node_log_origin(settings.agency)
    log = AuditLog.open(settings.audit_db, signer=Signer(origin, key), origin=origin, checkpoint_interval=60.0)
    witness = None
    if settings.gateway_audit_key is not None:
        witness = Witness(
            witness_name(settings.agency),
            key,
            NoteVerifier(GATEWAY_LOG_ORIGIN, load_public_key(settings.gateway_audit_key)),
            GATEWAY_LOG_ORIGIN,
            Path(str(settings.audit_db) + ".witness.json"),
        )
    replicas = {}
    for replica, pub in sorted(settings.gateway_replica_keys.items()):
        origin = replica_log_origin(replica)
        replicas[origin] = Witness(
            witness_name(settings.agency),
            key,
            NoteVerifier(origin, load_public_key(pub)),
            origin,
            Path(f"{settings.audit_db}.witness.{replica}.json"),  # one state per witnessed log
        )
    return NodeAudit(log, witness, settings.agency, replicas)
