"""The gateway's side of the audit log: every request, decision, fan-out answer and result.

Appends are durable before the action they record completes (AuditLog acknowledges after the
group commit); if the log cannot be written, the request fails (503) rather than go unrecorded.
Checkpoints are published periodically and cosigned by every node acting as a witness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from audit import AuditLog, CosignatureVerifier, Signer, load_private_key, load_public_key
from audit.store import WriterKind
from gateway.fanout import NodeDirectory
from xgate import metrics
from xgate.errors import IntegrityError, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.gateway.audit")
GATEWAY_LOG_ORIGIN = "xgate.gateway/audit"
SERVICE_ACTOR = {"actor_user": "gateway", "actor_agency": "gateway", "actor_role": "service"}


@dataclass
class GatewayAudit:
    log: AuditLog
    witnesses: dict[str, CosignatureVerifier] = field(default_factory=dict)  # agency -> its cosigning key
    witnessed: dict[str, int] = field(default_factory=dict)  # agency -> size it last cosigned

    @classmethod
    def open(cls, db: Path, key: Path, witness_keys: dict[str, Path], writer: WriterKind = "process") -> GatewayAudit:
        signer = Signer(GATEWAY_LOG_ORIGIN, load_private_key(key))
        audit_log = AuditLog.open(db, signer=signer, origin=GATEWAY_LOG_ORIGIN, writer=writer)
        verifiers = {
            agency: CosignatureVerifier(f"xgate.node.{agency}/witness", load_public_key(path))
            for agency, path in witness_keys.items()
        }
        return cls(audit_log, verifiers)

    pending: int = 0  # appends waiting for their commit (xgate_audit_queue_depth)

    async def record(self, event: dict[str, Any]) -> None:
        self.pending += 1
        t0 = time.perf_counter()
        try:
            await self.log.append_async(event)
        finally:
            self.pending -= 1
            metrics.AUDIT_APPEND_SECONDS.observe(time.perf_counter() - t0)

    async def record_request(self, method: str, route: str, status: int, ms: float, who: Any, error: str) -> None:
        event: dict[str, Any] = {
            "kind": "request",
            "actor_user": getattr(who, "user", "anonymous"),
            "actor_agency": getattr(who, "agency", "unknown"),
            "actor_role": getattr(who, "role", "unauthenticated"),
            "method": method,
            "route": route,
            "status": status,
            "ms": int(ms),
        }
        if error:
            event["error"] = error
        await self.record(event)

    async def publish_and_cosign(self, nodes: NodeDirectory) -> dict[str, Any]:
        """Publish a checkpoint and collect a cosignature from every witness node."""
        checkpoint = await asyncio.to_thread(self.log.publish_checkpoint, force=True)
        size = checkpoint.checkpoint.size
        outcome: dict[str, Any] = {
            "size": size,
            "root": checkpoint.checkpoint.root.hex(),
            "cosigned_by": [],
            "refused": {},
        }
        for agency, verifier in self.witnesses.items():
            try:
                line, cosigned = await self._cosign(nodes, agency, size)
                await asyncio.to_thread(self.log.add_cosignature, cosigned, line, verifier)
                self.witnessed[agency] = cosigned
                outcome["cosigned_by"].append(agency)
            except (XgateError, grpc.RpcError) as exc:
                reason = exc.message if isinstance(exc, XgateError) else str(exc)
                outcome["refused"][agency] = reason
                log.warning("cosign_refused", agency=agency, size=size, reason=reason)
        await self.record(
            {
                **SERVICE_ACTOR,
                "kind": "checkpoint",
                "tree_size": size,
                "cosigned_by": tuple(outcome["cosigned_by"]),
                "refused_by": tuple(sorted(outcome["refused"])),
            }
        )
        return outcome

    async def _cosign(self, nodes: NodeDirectory, agency: str, size: int) -> tuple[str, int]:
        old = self.witnessed.get(agency, 0)
        for _ in range(2):  # a restarted gateway learns the witness's real size from its refusal
            note, proof = await asyncio.to_thread(self.log.witness_request, old)
            try:
                response = await nodes.cosign(agency, note.encode(), proof, old)
            except XgateError as exc:
                witness_size = exc.details.get("witness_size")
                if witness_size is None or int(witness_size) == old:
                    raise
                old = int(witness_size)
                continue
            if response.size != size:
                raise IntegrityError(f"agency '{agency}' cosigned size {response.size}, expected {size}")
            return response.cosignature.decode(), response.size
        raise IntegrityError(f"agency '{agency}' keeps disagreeing about the last cosigned size")

    async def run_checkpoints(self, nodes: NodeDirectory, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.publish_and_cosign(nodes)
            except XgateError as exc:
                log.warning("checkpoint_failed", reason=exc.message)

    def close(self) -> None:
        self.log.close()
