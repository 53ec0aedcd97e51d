"""Observability over real processes: /readyz and /metrics on the gateway, /healthz and /metrics on a
node, and the gateway's service log naming a failed agency with its reason, then its recovery."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import tomli_w

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from client.sdk import GatewayError
from client.subjects import read_subjects
from nodes.config import load_node_config

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """A TCP forwarder on a fixed port (the node's "link"): up() and down() like a cable. Until the
    first up() the port is held bound, never listening: connecting is refused, and no other
    process's bind can take it meanwhile (a port probed free and closed again could be)."""

    def __init__(self, upstream: int) -> None:
        self._held: socket.socket | None = socket.socket()
        self._held.bind(("127.0.0.1", 0))
        self.port, self.upstream = int(self._held.getsockname()[1]), upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def up(self) -> None:
        if self._held is not None:  # handed over to the server at once
            self._held.close()
            self._held = None

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _metric(text: str, metric: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(metric) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _check(federation, url: str, ids: list[str]):  # type: ignore[no-untyped-def]
    with federation.client("caseworker", url) as client:
        return client.check("dibao", ids, "dibao", LEGAL_BASIS["dibao"], "case-obs", approval_ref=DEV_APPROVAL_REF)


def _events(log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def test_readiness_metrics_and_node_failure_logs(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    supervisor = federation.supervisor
    # A second tax node process with a metrics port (same store, its own audit log).
    original = federation.node_config("tax")
    config = load_node_config(original)
    metrics_port = _free_port()
    doc = {"node": config.node.model_dump(mode="json", exclude_none=True), "tls": config.tls.model_dump(mode="json")}
    doc["node"] |= {"listen": "127.0.0.1:0", "metrics_listen": f"127.0.0.1:{metrics_port}",
                    "audit_db": str(tmp_path / "tax-obs.audit.sqlite")}  # fmt: skip
    path = tmp_path / "tax-obs.toml"
    path.write_text(tomli_w.dumps(doc))
    node = supervisor.start("node-tax-obs", ["node", "serve", "--config", str(path)])
    health = httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["agency"] == "tax"

    # The gateway reaches tax through a link we can take down and bring up.
    link = Forwarder(node.port)
    link_port = link.port
    addresses = {a: f"127.0.0.1:{p}" for a, p in federation.node_ports.items()} | {"tax": f"127.0.0.1:{link_port}"}
    gw_config = write_gateway_config(federation, addresses, config_path=federation.gateway_dir / "gw-obs.toml")
    url = start_gateway(federation, supervisor, config_path=gw_config, name="gw-obs")
    gw_log = federation.log_dir / "gw-obs.log"
    verify = ssl.create_default_context(cafile=str(federation.ca_cert))
    ids = read_subjects(federation.applicants)

    ready = httpx.get(f"{url}/readyz", verify=verify, timeout=20)
    assert ready.status_code == 503
    body = ready.json()
    assert (
        body["checks"]["nodes"]["tax"]["ok"] is False and body["checks"]["nodes"]["tax"]["error"] == "node_unavailable"
    )
    assert body["checks"]["nodes"]["hrss"]["ok"] is True and body["checks"]["audit"]["ok"] is True
    with pytest.raises(GatewayError) as info:
        _check(federation, url, ids[:5])
    assert info.value.code == "node_unavailable" and "tax" in info.value.message
    failed = _events(gw_log, "node_failed")
    assert failed and failed[0]["agency"] == "tax" and failed[0]["error"] == "node_unavailable"
    assert "errno 111 ECONNREFUSED" in str(failed[0]["reason"]) or "Connection refused" in str(failed[0]["reason"])

    link.up()
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{url}/readyz", verify=verify, timeout=20)).status_code != 200:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.5)
    assert ready.json()["checks"]["crl"]["ok"] is True and ready.json()["checks"]["policies"]["ok"] is True
    result = _check(federation, url, ids[5:25])
    assert len(result.subjects) == 20 and all(len(v) == 20 for v in result.passes.values())
    recovered = _events(gw_log, "node_recovered")
    assert recovered and recovered[0]["agency"] == "tax"

    text = httpx.get(f"{url}/metrics", verify=verify, timeout=10).text
    assert _metric(text, "xgate_checks_total", program="dibao", outcome="ok") >= 1
    assert _metric(text, "xgate_checks_total", program="dibao", outcome="node_unavailable") >= 1
    assert _metric(text, "xgate_check_seconds_count", program="dibao") >= 2
    assert _metric(text, "xgate_node_errors_total", agency="tax", kind="node_unavailable") >= 1
    assert _metric(text, "xgate_node_up", agency="tax") == 1
    assert _metric(text, "xgate_audit_append_seconds_count") >= 1
    assert _metric(text, "xgate_certificate_expiry_timestamp_seconds", name="gateway") > time.time()
    assert _metric(text, "xgate_crl_next_update_timestamp_seconds") > time.time()
    assert "xgate_audit_queue_depth" in text
    node_text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert _metric(node_text, "xgate_node_requests_total", rpc="EncryptValues", outcome="ok") >= 1
    assert _metric(node_text, "xgate_certificate_expiry_timestamp_seconds", name="node") > time.time()
    link.down()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_readyz_says_not_ready_when_the_audit_writer_is_gone(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Before /readyz, /healthz said ok while every request failed with audit_unavailable."""
    import os
    import signal

    addresses = {a: f"127.0.0.1:{p}" for a, p in federation.node_ports.items()}
    config = write_gateway_config(federation, addresses, config_path=federation.gateway_dir / "gw-noaudit.toml")
    supervisor = federation.supervisor
    url = start_gateway(federation, supervisor, config_path=config, name="gw-noaudit")
    gateway = next(c for c in supervisor.children if c.name == "gw-noaudit")
    verify = ssl.create_default_context(cafile=str(federation.ca_cert))
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{url}/readyz", verify=verify, timeout=20)).status_code != 200:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.5)
    writers = _children(gateway.process.pid)  # the audit writer process (audit_writer = "process")
    assert writers, "the gateway has no audit writer process"
    for pid in writers:
        os.kill(pid, signal.SIGKILL)  # a process this test's gateway started
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{url}/readyz", verify=verify, timeout=20)).status_code != 503:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.5)
    audit = ready.json()["checks"]["audit"]
    assert audit["ok"] is False and audit["error"]
    assert httpx.get(f"{url}/healthz", verify=verify, timeout=10).status_code == 200  # liveness only
    supervisor.stop(gateway)
