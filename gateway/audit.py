"""The gateway's side of the audit log: every request, decision, fan-out answer and result.

Appends are durable before the action they record completes (AuditLog acknowledges after the
group commit); if the log cannot be written, the request fails (503) rather than go unrecorded.
Checkpoints are published when the tree has grown and cosigned by every node acting as a
witness; before anything is signed the gateway checks its log against its own last checkpoint and
what the witnesses last cosigned (audit/integrity.py), and refuses to sign a damaged history.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from audit import AppendReceipt, AuditLog, CosignatureVerifier, Signer, load_private_key, load_public_key
from audit.checkpoints import parse_signed_note
from audit.integrity import WitnessView, check_own_checkpoint, check_witness_view
from audit.store import WriterKind
from gateway.audit_registry import AuditLogRegistry
from gateway.fanout import NodeDirectory
from xgate import metrics
from xgate.errors import AuditLogCompromised, ConfigError, IntegrityError, NodeTimeout, NodeUnavailable, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.gateway.audit")
# The id of the REST request being served (set by the app's middleware): entries recorded while
# serving it carry it unless they name their own (a training job's entries carry the job id).
REQUEST_ID: ContextVar[str | None] = ContextVar("xgate_request_id", default=None)
# The SHA-256 of the check's Idempotency-Key while it is answered (gateway/routes/checks.py): its
# entries note the key's digest, never the key.
IDEMPOTENCY_KEY_SHA256: ContextVar[str | None] = ContextVar("xgate_idempotency_key_sha256", default=None)
GATEWAY_LOG_ORIGIN = "xgate.gateway/audit"


def gateway_log_origin(replica: str | None) -> str:
    """A replica's own log (`[gateway] replica`); a lone gateway keeps the historical origin."""
    return GATEWAY_LOG_ORIGIN if replica is None else f"xgate.gateway.{replica}/audit"


SERVICE_ACTOR = {"actor_user": "gateway", "actor_agency": "gateway", "actor_role": "service"}


@dataclass
class GatewayAudit:
    log: AuditLog
    witnesses: dict[str, CosignatureVerifier] = field(default_factory=dict)  # agency -> its cosigning key
    witnessed: dict[str, int] = field(default_factory=dict)  # agency -> size it last cosigned
    # Set once the log disagrees with what was signed or witnessed: nothing more is signed, actions
    # are refused (503) until an operator restores the log; reads still work.
    compromised: AuditLogCompromised | None = None
    _idle_size: int = -1  # log size right after our last checkpoint entry: nothing new since
    _alerted: bool = False
    _compromise_lock: threading.Lock = field(default_factory=threading.Lock)
    # The federation manifest (gateway/audit_registry.py): where each published checkpoint is recorded.
    registry: AuditLogRegistry | None = None

    def __post_init__(self) -> None:
        self.log.before_signing = self._before_signing

    @classmethod
    def open(
        cls,
        db: Path,
        key: Path,
        witness_keys: dict[str, Path],
        writer: WriterKind = "process",
        *,
        replica: str | None = None,
        registry: AuditLogRegistry | None = None,
    ) -> GatewayAudit:
        """With a ``registry``, the log is registered in the federation manifest before anything is written."""
        origin = gateway_log_origin(replica)
        private = load_private_key(key)
        if registry is not None:
            registry.register(origin, replica or "gateway", private.public_key())
        audit_log = AuditLog.open(db, signer=Signer(origin, private), origin=origin, writer=writer)
        verifiers = {
            agency: CosignatureVerifier(f"xgate.node.{agency}/witness", load_public_key(path))
            for agency, path in witness_keys.items()
        }
        audit = cls(audit_log, verifiers, registry=registry)
        problem = audit.check_against_manifest()
        if problem is not None:
            audit_log.close()
            raise ConfigError(f"{problem.message}; refusing to start")
        return audit

    def check_against_manifest(self, size: int | None = None) -> AuditLogCompromised | None:
        """The federation manifest's latest checkpoint of this log must be a prefix of it: one at a
        larger size, or with another root at its size, means another process writes this log
        under the same origin and key (a copied config), or this log was cut back or replaced."""
        if self.registry is None:
            return None
        note = self.registry.checkpoint(self.log.origin)
        if note is None:
            return None
        recorded = parse_signed_note(note).checkpoint
        have = self.log.size if size is None else size
        if recorded.size > have:
            return AuditLogCompromised(
                f"the federation manifest holds a checkpoint of '{self.log.origin}' at {recorded.size} entries, "
                f"this log has {have}: another gateway process writes this log, or it was cut back",
                reason="forked",
            )
        if recorded.size and self.log.root(recorded.size) != recorded.root:
            return AuditLogCompromised(
                f"the federation manifest's checkpoint of '{self.log.origin}' at {recorded.size} entries has "
                "another root than this log: another gateway process writes this log under the same key",
                reason="forked",
            )
        return None

    pending: int = 0  # appends waiting for their commit (xgate_audit_queue_depth)

    async def record(self, event: dict[str, Any]) -> None:
        if event.get("request_id") is None and (request_id := REQUEST_ID.get()) is not None:
            event = {**event, "request_id": request_id}
        if (key_sha256 := IDEMPOTENCY_KEY_SHA256.get()) is not None and "idempotency_key_sha256" not in event:
            event = {**event, "idempotency_key_sha256": key_sha256}
        self.pending += 1
        t0 = time.perf_counter()
        try:
            await self.log.append_async(event)
        finally:
            self.pending -= 1
            metrics.AUDIT_APPEND_SECONDS.observe(time.perf_counter() - t0)

    async def record_request(
        self,
        method: str,
        route: str,
        status: int,
        ms: float,
        who: Any,
        error: str,
        request_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """``extra``: what the route noted for this request's entry (e.g. an idempotency key's digest)."""
        event: dict[str, Any] = {
            "kind": "request",
            "actor_user": getattr(who, "user", "anonymous"),
            "actor_agency": getattr(who, "agency", "unknown"),
            "actor_role": getattr(who, "role", "unauthenticated"),
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "ms": int(ms),
        }
        if error:
            event["error"] = error
        await self.record({**(extra or {}), **event})

    # -- verify before signing (audit/integrity.py) ---------------------------------------------

    def _before_signing(self) -> None:
        """Every signature the log makes passes here first (AuditLog.before_signing; runs on a
        worker thread, never on the event loop). A failure marks the log compromised at once."""
        if self.compromised is not None:
            raise self.compromised
        signer = self.log.signer
        assert signer is not None
        try:
            check_own_checkpoint(self.log, signer.verifier())
        except AuditLogCompromised as exc:
            self._mark_compromised(exc)
            raise

    async def verify_history(self, nodes: NodeDirectory, deadline_s: float = 5.0) -> dict[str, Any]:
        """Check the log against its last signed checkpoint and what each witness last cosigned.

        Witnesses that cannot be asked are listed, not trusted: the check is as good as the
        witnesses that answer. On a disagreement the gateway is marked compromised (alert, log
        line) and AuditLogCompromised is raised.
        """
        if self.compromised is not None:
            raise self.compromised
        unreachable: dict[str, str] = {}
        try:
            await asyncio.to_thread(self._before_signing)
            views = await asyncio.gather(*(self._witness_view(nodes, a, deadline_s) for a in self.witnesses))
            for agency, view in zip(self.witnesses, views, strict=True):
                if isinstance(view, str):
                    unreachable[agency] = view
                    continue
                try:
                    await asyncio.to_thread(check_witness_view, self.log, view, self.witnesses[agency])
                except AuditLogCompromised:
                    raise
                except IntegrityError as exc:
                    unreachable[agency] = exc.message
                    continue
                self.witnessed[agency] = view.size  # consistency proofs start from here
        except AuditLogCompromised as exc:
            await asyncio.to_thread(self._mark_compromised, exc)
            raise
        if unreachable:
            log.warning("audit_witnesses_unchecked", agencies=sorted(unreachable))
        return {"witnesses_checked": sorted(set(self.witnesses) - set(unreachable)), "unchecked": unreachable}

    async def _witness_view(self, nodes: NodeDirectory, agency: str, deadline_s: float) -> WitnessView | str:
        try:  # bounded as a whole (the TLS pre-flight included): a black-holed node delays nothing long
            state = await asyncio.wait_for(
                nodes.cosign(agency, self.log.origin.encode(), [], 0, deadline_s, state_only=True), deadline_s + 1
            )
        except TimeoutError:
            return "no answer within the deadline"
        except (XgateError, grpc.RpcError) as exc:
            return exc.message if isinstance(exc, XgateError) else "unreachable"
        return WitnessView(agency, int(state.size), bytes(state.root), state.cosignature.decode(errors="replace"))

    def _mark_compromised(self, exc: AuditLogCompromised) -> None:
        """Stop signing, say so in the service log, and append an alert entry with the reason
        (blocking: called on a worker thread)."""
        with self._compromise_lock:
            if self.compromised is not None and self._alerted:
                return
            self.compromised = exc
            self._alerted = True
        reason = str(exc.details.get("reason", "inconsistent"))
        log.error("audit_log_compromised", reason=reason, message=exc.message)
        alert = {
            **SERVICE_ACTOR,
            "kind": "alert",
            "rule": INTEGRITY_RULE,
            "reason": reason,
            "summary": exc.message[:256],
        }
        if "agency" in exc.details:
            alert["witness"] = str(exc.details["agency"])
        try:
            self.log.append(alert)
        except XgateError as write_error:  # the log may be beyond writing; the service log has it
            log.error("audit_alert_unrecorded", error=write_error.code)

    async def _compromise(self, exc: AuditLogCompromised) -> None:
        await asyncio.to_thread(self._mark_compromised, exc)

    # -- checkpoints and cosignatures ------------------------------------------------------------

    async def publish_and_cosign(self, nodes: NodeDirectory) -> dict[str, Any]:
        """Verify the history, publish a checkpoint and collect a cosignature from every witness.

        A witness that refuses because the checkpoint is smaller than what it cosigned, or does not
        extend it, is reported with that reason (truncated / forked) and marks the log compromised.
        """
        await self.verify_history(nodes)
        checkpoint = await asyncio.to_thread(self.log.publish_checkpoint, force=True)
        size = checkpoint.checkpoint.size
        outcome: dict[str, Any] = {
            "size": size,
            "root": checkpoint.checkpoint.root.hex(),
            "cosigned_by": [],
            "refused": {},
        }
        found: AuditLogCompromised | None = None
        for agency, verifier in self.witnesses.items():
            try:
                line, cosigned = await self._cosign(nodes, agency, size)
                await asyncio.to_thread(self.log.add_cosignature, cosigned, line, verifier)
                self.witnessed[agency] = cosigned
                outcome["cosigned_by"].append(agency)
            except (XgateError, grpc.RpcError) as exc:
                refusal = _refusal(exc)
                outcome["refused"][agency] = refusal
                log.warning("cosign_refused", agency=agency, size=size, **refusal)
                if refusal["reason"] in ("truncated", "forked") and found is None:
                    found = AuditLogCompromised(
                        f"witness '{agency}' refused to cosign: {refusal['message']}",
                        reason=refusal["reason"],
                        agency=agency,
                    )
        receipt: AppendReceipt = await self.log.append_async(
            {
                **SERVICE_ACTOR,
                "kind": "checkpoint",
                "tree_size": size,
                "cosigned_by": tuple(outcome["cosigned_by"]),
                "refused_by": tuple(sorted(outcome["refused"])),
            }
        )
        self._idle_size = receipt.index + 1
        if self.registry is not None:  # the manifest's copy: a log cut back below it no longer verifies
            forked = await asyncio.to_thread(self.check_against_manifest, size)
            if forked is not None:
                log.error("audit_log_forked", origin=self.log.origin, size=size)
                found = found or forked
            else:
                latest = await asyncio.to_thread(self.log.checkpoint_at, size)
                await asyncio.to_thread(self.registry.record_checkpoint, self.log.origin, size, latest.text())
        if found is not None:
            await self._compromise(found)
        return outcome

    async def _cosign(self, nodes: NodeDirectory, agency: str, size: int) -> tuple[str, int]:
        old = self.witnessed.get(agency, 0)
        for _ in range(2):  # a restarted gateway learns the witness's real size from its refusal
            if old > size:
                raise AuditLogCompromised(
                    f"agency '{agency}' cosigned {old} entries, more than the log's {size} (log truncated)",
                    reason="truncated",
                )
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
        """Every interval, a checkpoint if the tree has grown (not for our own checkpoint entry alone)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.compromised is not None or self.log.size == self._idle_size:
                continue
            try:
                await self.publish_and_cosign(nodes)
            except XgateError as exc:
                log.warning("checkpoint_failed", reason=exc.message)

    def close(self) -> None:
        self.log.close()


INTEGRITY_RULE = "log_integrity"


def _refusal(exc: XgateError | grpc.RpcError) -> dict[str, str]:
    """A witness's refusal as what it is: truncated, forked, unreachable or refused (other)."""
    if not isinstance(exc, XgateError):
        return {"reason": "unreachable", "message": str(exc)[:200]}
    reason = str(exc.details.get("reason", ""))
    if reason not in ("truncated", "forked", "resigned"):
        text = exc.message
        reason = (
            "truncated"
            if "truncated" in text
            else "forked"
            if "forked" in text or "does not extend" in text
            else "unreachable"
            if isinstance(exc, NodeUnavailable | NodeTimeout)
            else "refused"
        )
    return {"reason": reason, "message": exc.message}
