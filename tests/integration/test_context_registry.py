"""Registered HE contexts over real processes: bytes on the wire, node caches, a node restart.

A fresh requester key is registered once (`POST /v1/contexts`, transparently by the SDK on the
gateway's 404 `context_unknown`); the second check carries only the fingerprint, client to
gateway and gateway to nodes, which is counted both in bytes and in the nodes' own
`context_received` log lines. A node restarted (same address, empty cache) answers
`context_unknown`, the gateway sends it the bytes once more, and the check succeeds.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import httpx
import pytest
import tomli_w

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, DevFederation
from client.sdk import GatewayClient
from client.subjects import read_subjects
from crypto.he import RequesterKeys
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration
DIBAO = LEGAL_BASIS["dibao"]


def _received(federation: DevFederation, agency: str) -> int:
    log = federation.log_dir / f"node-{agency}.log"
    return log.read_text(errors="replace").count("context_received") if log.exists() else 0


def _agencies() -> list[str]:
    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
    return sorted(program.elements_by_agency())


def _client(federation: DevFederation, keys: RequesterKeys) -> GatewayClient:
    return GatewayClient(
        federation.gateway_url,
        federation.api_keys["caseworker"],
        Pseudonymiser(load_key(federation.pseudonym_key)),
        keys,
        verify=str(federation.ca_cert),
        signer=federation.signer("caseworker"),
        identity=federation.identity("caseworker"),
    )


def _restart(federation: DevFederation, agency: str) -> None:
    """Stop the node and start it again on the same address (its store and keys as they were)."""
    supervisor = federation.supervisor  # type: ignore[attr-defined]
    name = f"node-{agency}"
    (child,) = [c for c in supervisor.children if c.name == name and c.alive]
    port = federation.node_ports[agency]
    supervisor.stop(child)
    config = tomllib.loads(federation.node_config(agency).read_text())
    config.setdefault("node", {})["listen"] = f"127.0.0.1:{port}"
    variant: Path = federation.node_config(agency).with_name("node-restarted.toml")
    variant.write_bytes(tomli_w.dumps(config).encode())
    supervisor.start(name, ["node", "serve", "--config", str(variant)])
    _wait_until_the_gateway_reaches_every_node(federation)


def _wait_until_the_gateway_reaches_every_node(federation: DevFederation, timeout_s: float = 20.0) -> None:
    """The node is up once it printed its readiness line; the gateway's channel to it redials on its
    own backoff (at most 1 s apart), so wait for /readyz, which calls every node through it."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{federation.gateway_url}/readyz", verify=str(federation.ca_cert), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not reach the restarted node"
        time.sleep(0.2)


def test_context_goes_over_the_wire_once_and_again_after_a_node_restart(federation: DevFederation) -> None:
    keys = RequesterKeys.generate()  # nobody holds this context yet
    agencies = _agencies()
    before = {a: _received(federation, a) for a in agencies}
    subject = read_subjects(federation.applicants)[286:287]
    context = len(keys.public_context)
    with _client(federation, keys) as client:
        first = client.check("dibao", subject, "dibao", DIBAO, "ctx-1", approval_ref=DEV_APPROVAL_REF)
        assert client.context_registrations == 1
        second = client.check("dibao", subject, "dibao", DIBAO, "ctx-2", approval_ref=DEV_APPROVAL_REF)
        assert client.context_registrations == 1  # registered once, named by fingerprint after
    assert first.rows() == second.rows()
    # Client <-> gateway: the first check carried the registration, the second only a fingerprint.
    assert first.wire_bytes - second.wire_bytes > context
    # Gateway <-> nodes: each node got the context with the first check only.
    after = {a: _received(federation, a) for a in agencies}
    assert {a: after[a] - before[a] for a in agencies} == dict.fromkeys(agencies, 1)
    assert second.node_bytes < first.node_bytes - len(agencies) * context + context // 2
    # One-time pads: the first check opened a pad batch (each node sent Enc(rho) per element), the
    # second got x - rho for its window only: no ciphertext from any node.
    assert second.node_bytes < 20_000 < first.node_bytes - len(agencies) * context

    restarted = agencies[0]
    _restart(federation, restarted)
    with _client(federation, keys) as client:
        third = client.check(
            "dibao", read_subjects(federation.applicants)[287:288], "dibao", DIBAO, "ctx-3",
            approval_ref=DEV_APPROVAL_REF,
        )  # fmt: skip
        assert client.context_registrations == 0  # the gateway still holds it; only the node forgot
    assert third.rows()
    # The restarted node lost the pad batch too: the third check opened a new one (pads again).
    assert third.node_bytes > 4 * 393_000 > 20_000 > second.node_bytes
    final = {a: _received(federation, a) for a in agencies}
    assert final[restarted] - after[restarted] == 1  # asked for it again after the restart
    assert all(final[a] == after[a] for a in agencies if a != restarted)
