"""The gateway verifies its log before it signs (issue 14 item 2), in process with real witnesses.

The witnesses are `audit.witness.Witness` objects behind a fake node directory that answers as the
gRPC path does (a witness's IntegrityError arrives as NodeProtocolError with its details).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from audit.checkpoints import Signer, generate_key, save_keypair
from audit.store import AuditLog
from audit.testing import record
from audit.witness import Witness
from gateway.audit import GATEWAY_LOG_ORIGIN, INTEGRITY_RULE, GatewayAudit
from tests.audit_tamper import truncate_log
from xgate.errors import AuditLogCompromised, NodeProtocolError, NodeUnavailable, XgateError

AGENCIES = ("tax", "hrss", "civil_affairs")


class FakeNodes:
    def __init__(self, witnesses: dict[str, Witness]) -> None:
        self.witnesses = witnesses
        self.down: set[str] = set()
        self.state_down: set[str] = set()
        self.hang: set[str] = set()

    async def cosign(
        self, agency: str, note: bytes, proof: list[bytes], old_size: int, deadline_s: float = 10.0, *,
        state_only: bool = False,
    ) -> Any:  # fmt: skip
        w = self.witnesses[agency]
        if agency in self.hang:
            await asyncio.sleep(3600)
        if agency in self.down or (state_only and agency in self.state_down):
            raise NodeUnavailable(agency, "unreachable (connection refused)")
        if state_only:
            st = w.state
            return SimpleNamespace(
                size=st.size if st else 0, root=st.root if st else b"", cosignature=(st.line if st else "").encode()
            )
        try:
            line = w.cosign(note.decode(), proof, old_size=old_size)
        except XgateError as exc:  # as xgate/grpc_edge.node_error_from_rpc hands it over
            raise NodeProtocolError(agency, f"failed (data_loss): {exc.message}", **exc.details) from None
        assert w.state is not None
        return SimpleNamespace(size=w.state.size, cosignature=line.encode())


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    log_key = generate_key()
    _, _ = save_keypair(log_key, tmp_path / "gw")
    out: dict[str, Any] = {"log": tmp_path / "gw.key.pem", "log_key": log_key, "witness": {}, "witness_pub": {}}
    for a in AGENCIES:
        k = generate_key()
        save_keypair(k, tmp_path / a)
        out["witness"][a] = k
        out["witness_pub"][a] = tmp_path / f"{a}.pub.pem"
    return out


@pytest.fixture
def nodes(tmp_path: Path, keys: dict[str, Any]) -> FakeNodes:
    verifier = Signer(GATEWAY_LOG_ORIGIN, keys["log_key"]).verifier()
    return FakeNodes(
        {
            a: Witness(f"xgate.node.{a}/witness", keys["witness"][a], verifier, GATEWAY_LOG_ORIGIN, tmp_path / f"{a}.w")
            for a in AGENCIES
        }
    )


def _open(tmp_path: Path, keys: dict[str, Any], db: str = "audit.sqlite", key: Path | None = None) -> GatewayAudit:
    return GatewayAudit.open(tmp_path / db, key or keys["log"], keys["witness_pub"], writer="thread")


@pytest.fixture
def audit(tmp_path: Path, keys: dict[str, Any]) -> Iterator[GatewayAudit]:
    a = _open(tmp_path, keys)
    yield a
    a.close()


def _fill(audit: GatewayAudit, n: int, start: int = 0) -> None:
    audit.log.append_many([record(start + i) for i in range(n)])


def _checkpoints(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])


def _alerts(log: AuditLog) -> list[dict[str, Any]]:
    return [dict(e.record.metadata) for e in log.entries(kind="alert", limit=100)]


def test_honest_log_is_cosigned_and_idle_gateway_appends_no_checkpoints(audit: GatewayAudit, nodes: FakeNodes) -> None:
    _fill(audit, 10)
    out = asyncio.run(audit.publish_and_cosign(nodes))  # type: ignore[arg-type]
    assert out["cosigned_by"] == list(AGENCIES) and out["refused"] == {} and audit.compromised is None

    def checkpoints() -> int:
        return len(audit.log.entries(kind="checkpoint", limit=100))

    async def run_loop(seconds: float, grow: bool) -> None:
        task = asyncio.create_task(audit.run_checkpoints(nodes, 0.05))  # type: ignore[arg-type]
        if grow:
            await asyncio.sleep(0.1)
            await audit.record({"kind": "request", "actor_user": "u", "actor_agency": "a"})
            # Wait for the checkpoint (a loaded machine may take several intervals), then run on.
            deadline = asyncio.get_running_loop().time() + 20
            while checkpoints() == before and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.sleep(seconds)
        task.cancel()

    before = checkpoints()
    asyncio.run(run_loop(0.5, grow=False))  # ten intervals, nothing new: no checkpoint entry
    assert checkpoints() == before
    asyncio.run(run_loop(0.5, grow=True))  # one new entry: exactly one more checkpoint, ten intervals on
    assert checkpoints() == before + 1


def _cosigned_twice(tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes) -> tuple[int, int]:
    a = _open(tmp_path, keys)
    _fill(a, 10)
    first = asyncio.run(a.publish_and_cosign(nodes))["size"]  # type: ignore[arg-type]
    _fill(a, 10, start=100)
    second = asyncio.run(a.publish_and_cosign(nodes))["size"]  # type: ignore[arg-type]
    a.close()
    return first, second


def test_truncated_log_with_newer_checkpoints_deleted_is_refused_at_start(
    tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes
) -> None:
    first, second = _cosigned_twice(tmp_path, keys, nodes)
    truncate_log(tmp_path / "audit.sqlite", first)  # cut back to the older checkpoint, newer ones gone
    signed_before = _checkpoints(tmp_path / "audit.sqlite")
    a = _open(tmp_path, keys)
    try:
        with pytest.raises(AuditLogCompromised, match=rf"cosigned {second} entries but the audit log holds {first}"):
            asyncio.run(a.verify_history(nodes))  # type: ignore[arg-type]
        assert a.compromised is not None and a.compromised.details["reason"] == "truncated"
        with pytest.raises(AuditLogCompromised):  # refuses to sign, by any path
            a.log.publish_checkpoint()
        with pytest.raises(AuditLogCompromised):
            asyncio.run(a.publish_and_cosign(nodes))  # type: ignore[arg-type]
        assert _checkpoints(tmp_path / "audit.sqlite") == signed_before
        (alert,) = _alerts(a.log)
        assert alert["rule"] == INTEGRITY_RULE and alert["reason"] == "truncated" and "truncated" in alert["summary"]
    finally:
        a.close()


def test_log_forged_with_another_key_is_refused(tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes) -> None:
    other = generate_key()
    with AuditLog.open(
        tmp_path / "forged.sqlite", signer=Signer(GATEWAY_LOG_ORIGIN, other), origin=GATEWAY_LOG_ORIGIN
    ) as log:
        log.append_many([record(1000 + i) for i in range(30)])
        log.publish_checkpoint()
    a = _open(tmp_path, keys, db="forged.sqlite")
    try:
        with pytest.raises(AuditLogCompromised, match="not signed by this gateway's key"):
            asyncio.run(a.verify_history(nodes))  # type: ignore[arg-type]
        with pytest.raises(AuditLogCompromised):
            a.log.publish_checkpoint()
        assert _checkpoints(tmp_path / "forged.sqlite") == 1  # still only the forger's
        assert _alerts(a.log)[0]["reason"] == "resigned"
    finally:
        a.close()


def test_history_rewritten_with_the_real_key_is_caught_by_the_witnesses(
    tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes
) -> None:
    _, second = _cosigned_twice(tmp_path, keys, nodes)
    # Someone with the log key builds another, longer history and signs it: locally consistent.
    with AuditLog.open(
        tmp_path / "fork.sqlite", signer=Signer(GATEWAY_LOG_ORIGIN, keys["log_key"]), origin=GATEWAY_LOG_ORIGIN
    ) as log:
        log.append_many([record(5000 + i) for i in range(second + 5)])
        log.publish_checkpoint()
    a = _open(tmp_path, keys, db="fork.sqlite")
    try:
        with pytest.raises(AuditLogCompromised, match=r"differs from the one witness .* cosigned \(log forked\)"):
            asyncio.run(a.verify_history(nodes))  # type: ignore[arg-type]
        assert a.compromised is not None and a.compromised.details["reason"] == "forked"
    finally:
        a.close()


def test_witness_refusals_are_reported_as_what_they_are(tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes) -> None:
    first, _ = _cosigned_twice(tmp_path, keys, nodes)
    truncate_log(tmp_path / "audit.sqlite", first)
    nodes.state_down = set(AGENCIES)  # the witnesses cannot be asked beforehand...
    nodes.down = {"civil_affairs"}
    a = _open(tmp_path, keys)
    try:
        assert asyncio.run(a.verify_history(nodes))["unchecked"].keys() == set(AGENCIES)  # type: ignore[arg-type]
        out = asyncio.run(a.publish_and_cosign(nodes))  # type: ignore[arg-type]
        # ...so they refuse the cosignature, and say why: not "consistency proofs need 0 < old <= new".
        assert out["cosigned_by"] == []
        assert {k: v["reason"] for k, v in out["refused"].items()} == {
            "tax": "truncated",
            "hrss": "truncated",
            "civil_affairs": "unreachable",
        }
        assert "truncated" in out["refused"]["tax"]["message"]
        assert a.compromised is not None and a.compromised.details["reason"] == "truncated"
        assert [m["reason"] for m in _alerts(a.log)] == ["truncated"]
        with pytest.raises(AuditLogCompromised):
            a.log.publish_checkpoint()
    finally:
        a.close()


def test_alerts_api_rule_reports_recorded_alerts(audit: GatewayAudit) -> None:
    from audit.alerts import evaluate

    asyncio.run(audit._compromise(AuditLogCompromised("log truncated", reason="truncated")))
    found = [a.to_public() for a in evaluate((e.index, e.record) for e in audit.log.entries(limit=100))]
    assert [(a["rule"], a["reason"], a["summary"]) for a in found] == [(INTEGRITY_RULE, "truncated", "log truncated")]


def test_a_node_tells_what_it_last_cosigned_without_cosigning(tmp_path: Path, keys: dict[str, Any]) -> None:
    from audit.checkpoints import Checkpoint, CosignatureVerifier
    from audit.integrity import WitnessView, check_witness_view
    from nodes.audit import NodeAudit
    from protos.xgate.v1 import node_pb2

    signer = Signer(GATEWAY_LOG_ORIGIN, keys["log_key"])
    witness = Witness("xgate.node.tax/witness", keys["witness"]["tax"], signer.verifier(), GATEWAY_LOG_ORIGIN, None)
    node = NodeAudit(log=None, witness=witness, agency="tax")  # type: ignore[arg-type]
    empty = node.cosign(node_pb2.CosignRequest(state_only=True))
    assert (empty.size, empty.root, empty.cosignature) == (0, b"", b"")
    with AuditLog.open(tmp_path / "g.sqlite", signer=signer, origin=GATEWAY_LOG_ORIGIN) as log:
        log.append_many([record(i) for i in range(9)])
        note = log.publish_checkpoint().text()
        node.cosign(node_pb2.CosignRequest(checkpoint=note.encode(), old_size=0))
        state = node.cosign(node_pb2.CosignRequest(state_only=True))
        assert state.size == 9 and state.root == log.root(9) and witness.state is not None
        view = WitnessView("tax", state.size, state.root, state.cosignature.decode())
        tax = CosignatureVerifier("xgate.node.tax/witness", keys["witness"]["tax"].public_key())
        check_witness_view(log, view, tax)  # the honest log holds what the witness cosigned
        # A statement the witness did not sign proves nothing: refused, not taken as the witness's word.
        from xgate.errors import IntegrityError

        other = WitnessView("tax", 9, bytes(32), view.line)
        with pytest.raises(IntegrityError):
            check_witness_view(log, other, tax)
        assert Checkpoint(GATEWAY_LOG_ORIGIN, 9, state.root).body() in note
    assert witness.state.size == 9  # state queries never move the witness


def test_damage_found_by_any_signing_path_marks_the_log_at_once(
    tmp_path: Path, keys: dict[str, Any], nodes: FakeNodes
) -> None:
    """The running gateway's log is re-signed underneath it (its checkpoints replaced by another
    key's): the next signature asked for, here an officer's plain publish, is refused, and the
    alert is raised right then, not at the next periodic check."""
    a = _open(tmp_path, keys)
    try:
        _fill(a, 5)
        asyncio.run(a.publish_and_cosign(nodes))  # type: ignore[arg-type]
        forger = Signer(GATEWAY_LOG_ORIGIN, generate_key())
        latest = a.log.latest_checkpoint()
        assert latest is not None
        with sqlite3.connect(tmp_path / "audit.sqlite") as conn:
            conn.execute("UPDATE checkpoints SET note=?", (forger.sign(latest.checkpoint).text(),))
        with pytest.raises(AuditLogCompromised, match="not signed by this gateway's key"):
            a.log.publish_checkpoint()
        assert a.compromised is not None and [m["reason"] for m in _alerts(a.log)] == ["resigned"]
        with pytest.raises(AuditLogCompromised):  # and stays refused, with one alert
            a.log.publish_checkpoint()
        assert len(_alerts(a.log)) == 1
    finally:
        a.close()


def test_a_witness_that_never_answers_delays_the_check_by_the_deadline_only(
    audit: GatewayAudit, nodes: FakeNodes
) -> None:
    import time

    _fill(audit, 4)
    nodes.hang = {"hrss"}
    started = time.monotonic()
    out = asyncio.run(audit.verify_history(nodes, deadline_s=0.2))  # type: ignore[arg-type]
    assert time.monotonic() - started < 3.0  # bounded by the deadline (+1 s), not by the node
    assert out["unchecked"] == {"hrss": "no answer within the deadline"}
    assert out["witnesses_checked"] == ["civil_affairs", "tax"] and audit.compromised is None
