"""The federation's audit log: one Merkle log per gateway replica, verified as one (audit/federation.py).

Attack tests: each protection below is what makes the tampered federation fail; without it (a
per-log verify alone, or no manifest) the tampered case would pass.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from audit import AuditLog
from audit.checkpoints import Signer, generate_key
from audit.federation import ManifestLog, manifest_document, merged_entries, parse_manifest, verify_federation
from audit.testing import record
from gateway.audit_registry import AuditLogRegistry
from tests.audit_tamper import truncate_log
from xgate.errors import ConfigError, IntegrityError, InvalidInput, XgateError

ORIGINS = {"a": "xgate.gateway.a/audit", "b": "xgate.gateway.b/audit"}


def _replica_log(tmp: Path, replica: str, n: int, registry: AuditLogRegistry) -> tuple[Path, Any]:
    key = generate_key()
    origin = ORIGINS[replica]
    registry.register(origin, replica, key.public_key())
    path = tmp / f"{replica}.sqlite"
    with AuditLog.open(path, signer=Signer(origin, key), origin=origin, writer="thread") as log:
        log.append_many([record(i, request_id=f"req-{replica}-{i}") for i in range(n)])
        cp = log.publish_checkpoint()
        registry.record_checkpoint(origin, cp.checkpoint.size, cp.text())
        log.append_many([record(100 + i, request_id=f"req-{replica}-tail-{i}") for i in range(2)])
    return path, key.public_key()


@pytest.fixture
def federation(tmp_path: Path) -> tuple[list[ManifestLog], list[tuple[Path, Any]]]:
    registry = AuditLogRegistry(tmp_path / "audit_logs.sqlite")
    logs = [_replica_log(tmp_path, "a", 7, registry), _replica_log(tmp_path, "b", 5, registry)]
    return parse_manifest(json.dumps(registry.manifest())), logs


def test_the_federation_verifies_and_its_entries_merge_from_every_replica(federation: Any) -> None:
    manifest, logs = federation
    report = verify_federation(manifest, logs)
    assert [r.origin for r in report.logs] == sorted(ORIGINS.values())
    assert report.entries == 9 + 7
    merged = list(merged_entries(report.sizes()))
    assert len(merged) == 16 and {e.origin for e in merged} == set(ORIGINS.values())
    assert [(e.time_ms, e.origin, e.index) for e in merged] == sorted((e.time_ms, e.origin, e.index) for e in merged)


def test_an_altered_entry_in_either_replica_is_detected(federation: Any) -> None:
    manifest, logs = federation
    for path, _ in logs:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'dibao', 'dibaX') AS BLOB) WHERE idx=3"
            )
        with pytest.raises(IntegrityError, match="entry altered") as caught:
            verify_federation(manifest, logs)
        assert caught.value.details["origin"] == ORIGINS[path.stem]
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'dibaX', 'dibao') AS BLOB) WHERE idx=3"
            )
    verify_federation(manifest, logs)  # restored: verifies again


def test_a_replica_log_left_out_is_detected(federation: Any) -> None:
    manifest, logs = federation
    with pytest.raises(IntegrityError, match=r"lists 1 log\(s\) that were not verified: xgate\.gateway\.b/audit"):
        verify_federation(manifest, logs[:1])  # each given log verifies alone: only the manifest shows the gap


def test_a_replica_log_cut_back_with_its_own_checkpoints_is_caught_by_the_manifest(federation: Any) -> None:
    manifest, logs = federation
    path = logs[1][0]
    truncate_log(path, 3)  # entries, nodes, checkpoints and cosignatures beyond 3 gone: verifies alone
    from audit.verify import verify_log

    verify_log(path, logs[1][1])
    with pytest.raises(IntegrityError, match="log truncated"):
        verify_federation(manifest, logs)


def test_a_log_under_another_key_or_origin_is_refused(federation: Any, tmp_path: Path) -> None:
    manifest, logs = federation
    other = generate_key().public_key()
    with pytest.raises(IntegrityError, match="another public key"):
        verify_federation(manifest, [logs[0], (logs[1][0], other)])
    stranger = tmp_path / "c.sqlite"
    key = generate_key()
    with AuditLog.open(stranger, signer=Signer("xgate.gateway.c/audit", key), origin="xgate.gateway.c/audit") as log:
        log.append(record(1))
    with pytest.raises(IntegrityError, match="not in the federation manifest"):
        verify_federation(manifest, [*logs, (stranger, key.public_key())])
    with pytest.raises(InvalidInput, match="given twice"):
        verify_federation(manifest, [logs[0], logs[0], logs[1]])


def test_the_registry_refuses_a_second_key_for_one_log_and_one_key_for_two_logs(tmp_path: Path) -> None:
    registry = AuditLogRegistry(tmp_path / "r.sqlite")
    key = generate_key()
    registry.register(ORIGINS["a"], "a", key.public_key())
    registry.register(ORIGINS["a"], "a", key.public_key())  # a restart: the same log again
    with pytest.raises(ConfigError, match="registered with another signing key"):
        registry.register(ORIGINS["a"], "a", generate_key().public_key())
    with pytest.raises(ConfigError, match=r"already signs the log 'xgate\.gateway\.a/audit'"):
        registry.register(ORIGINS["b"], "b", key.public_key())
    registry.record_checkpoint(ORIGINS["a"], 5, "five")
    registry.record_checkpoint(ORIGINS["a"], 3, "three")  # never replaced by a smaller one
    assert [entry.checkpoint for entry in registry.logs()] == ["five"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not JSON"),
        ({"format": "other", "logs": []}, "must have format"),
        ({"format": "xgate-audit-federation/1", "logs": []}, "lists no logs"),
        ({"format": "xgate-audit-federation/1", "logs": [{"origin": "o"}]}, "needs origin, replica"),
        (
            {"format": "xgate-audit-federation/1", "logs": [{"origin": "o", "replica": "a", "public_key_b64": "!!"}]},
            "not base64",
        ),
        (
            {"format": "xgate-audit-federation/1", "logs": [{"origin": "o", "replica": "a", "public_key_b64": "AAAA"}]},
            "32 bytes",
        ),
    ],
)
def test_a_malformed_manifest_is_refused_with_what_is_wrong(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_manifest(document if isinstance(document, str) else json.dumps(document))


def test_a_manifest_listing_one_log_twice_is_refused() -> None:
    entry = ManifestLog("o", "a", bytes(32))
    with pytest.raises(InvalidInput, match="twice"):
        parse_manifest(json.dumps(manifest_document([entry, entry])))


def test_verify_federation_on_the_command_line(federation: Any, tmp_path: Path) -> None:
    from audit.cli import app

    manifest, logs = federation
    (tmp_path / "m.json").write_text(json.dumps(manifest_document(manifest)))
    specs = []
    for path, key in logs:
        pem = tmp_path / f"{path.stem}.pub.pem"
        pem.write_text(key.export_key(format="PEM"))
        specs += ["--log", f"{path}={pem}"]
    out = tmp_path / "merged.jsonl"
    args = ["verify-federation", "--manifest", str(tmp_path / "m.json"), *specs, "--entries-out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "OK: federation: 2 logs, 16 entries" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["origin"] for line in lines} == set(ORIGINS.values()) and len(lines) == 16
    left_out = CliRunner().invoke(app, args[:5])
    assert left_out.exit_code == 1 and "not verified: xgate.gateway.b/audit" in left_out.output


def test_a_node_witnesses_each_replica_log_under_its_own_state(tmp_path: Path) -> None:
    from audit.witness import Witness
    from nodes.audit import NodeAudit
    from protos.xgate.v1 import node_pb2

    node_key = generate_key()
    signers = {origin: Signer(origin, generate_key()) for origin in ORIGINS.values()}
    witnesses = {
        origin: Witness("xgate.node.tax/witness", node_key, s.verifier(), origin, tmp_path / f"{n}.json")
        for n, (origin, s) in enumerate(signers.items())
    }
    node = NodeAudit(log=None, witness=None, agency="tax", replica_witnesses=witnesses)  # type: ignore[arg-type]
    sizes = {ORIGINS["a"]: 4, ORIGINS["b"]: 6}
    for origin, signer in signers.items():
        with AuditLog.open(tmp_path / f"{signer.name.split('/')[0]}.sqlite", signer=signer, origin=origin) as log:
            log.append_many([record(i) for i in range(sizes[origin])])
            node.cosign(node_pb2.CosignRequest(checkpoint=log.publish_checkpoint().text().encode(), old_size=0))
    for origin, size in sizes.items():  # two logs, two states: neither is taken for a fork of the other
        state = node.cosign(node_pb2.CosignRequest(checkpoint=origin.encode(), state_only=True))
        assert state.size == size
    stranger = Signer("xgate.gateway.c/audit", generate_key())
    with AuditLog.open(tmp_path / "c.sqlite", signer=stranger, origin=stranger.name) as log:
        log.append(record(1))
        note = log.publish_checkpoint().text().encode()
    with pytest.raises(ConfigError, match=r"does not witness the log 'xgate\.gateway\.c/audit'"):
        node.cosign(node_pb2.CosignRequest(checkpoint=note, old_size=0))
    # A replica's log signed by any other key is refused: each state trusts its replica's key alone.
    forged = Signer(ORIGINS["a"], generate_key())
    with AuditLog.open(tmp_path / "forged.sqlite", signer=forged, origin=ORIGINS["a"]) as log:
        log.append_many([record(i) for i in range(8)])
        note = log.publish_checkpoint().text().encode()
    with pytest.raises(XgateError):
        node.cosign(node_pb2.CosignRequest(checkpoint=note, old_size=4))


def test_replicated_mode_with_an_audit_log_needs_a_replica_name(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from gateway.config import GatewaySettings

    base = {"mask_key_file": tmp_path / "mask.key", "database": "postgresql://db/x", "audit_db": tmp_path / "a.sqlite"}
    with pytest.raises(ValidationError, match=r"needs \[gateway\] replica"):
        GatewaySettings(**base)
    assert GatewaySettings(**base, replica="a").replica == "a"
    with pytest.raises(ValidationError, match="replica"):
        GatewaySettings(**base, replica="A b")  # a name goes into the log's origin: refused, not escaped


def test_verify_federation_refuses_a_malformed_log_argument(federation: Any, tmp_path: Path) -> None:
    from audit.cli import app

    manifest, _ = federation
    (tmp_path / "m.json").write_text(json.dumps(manifest_document(manifest)))
    result = CliRunner().invoke(app, ["verify-federation", "--manifest", str(tmp_path / "m.json"), "--log", "a.sqlite"])
    assert result.exit_code != 0 and "--log must be AUDIT_DB=PUBKEY.pem" in result.output


def test_two_processes_writing_one_replicas_log_are_found_out(tmp_path: Path) -> None:
    """Attack (found by review): a second gateway process configured as replica "a" (a copied
    config: the same origin and key, its own audit database) passed registration; both signed
    diverging trees under one origin, the manifest kept whichever published last, and
    verify-federation said OK over that fork while the other process's accesses were nowhere.
    Now each process checks its log against the manifest's checkpoint of its origin: at start
    (refused) and before recording each checkpoint (its log marked compromised, nothing recorded)."""
    import asyncio

    from audit.checkpoints import save_keypair
    from gateway.audit import GatewayAudit

    registry = AuditLogRegistry(tmp_path / "audit_logs.sqlite")
    save_keypair(generate_key(), tmp_path / "a")
    key = tmp_path / "a.key.pem"

    def open_(db: str) -> GatewayAudit:
        return GatewayAudit.open(tmp_path / db, key, {}, writer="thread", replica="a", registry=registry)

    class NoWitnesses:
        pass

    first, second = open_("first.sqlite"), open_("second.sqlite")  # both start before any checkpoint
    first.log.append_many([record(i, request_id=f"req-first-{i}") for i in range(5)])
    second.log.append_many([record(i, request_id=f"req-second-{i}") for i in range(7)])
    asyncio.run(second.publish_and_cosign(NoWitnesses()))  # type: ignore[arg-type]
    assert second.compromised is None
    asyncio.run(first.publish_and_cosign(NoWitnesses()))  # type: ignore[arg-type]
    assert first.compromised is not None and first.compromised.details["reason"] == "forked"
    recorded = registry.checkpoint("xgate.gateway.a/audit")
    assert recorded is not None and recorded.startswith("xgate.gateway.a/audit\n7\n")  # second's, untouched
    first.close()
    second.close()
    with pytest.raises(ConfigError, match="another gateway process writes this log"):
        open_("third.sqlite")  # a third copy, started later, is refused at once
    reopened = open_("second.sqlite")  # the real writer restarting is fine
    assert reopened.compromised is None
    reopened.close()
