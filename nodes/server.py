"""Run an agency node: a gRPC server in its own process over its own store."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc

from crypto.envelope import Envelopes
from nodes.audit import open_node_audit
from nodes.config import NodeConfig
from nodes.policy import node_authorizer
from nodes.service import NodeService
from nodes.store import open_node_store
from protos.xgate.v1 import node_pb2, node_pb2_grpc
from xgate import metrics
from xgate.errors import ConfigError, XgateError
from xgate.grpc_edge import call_guarded
from xgate.logging import get_logger

log = get_logger("xgate.node")
T = TypeVar("T")


class NodeServicer(node_pb2_grpc.AgencyNodeServicer):
    """Translation only: protobuf in, protobuf out, errors to status codes."""

    def __init__(self, service: NodeService) -> None:
        self.service = service

    def Health(self, request: node_pb2.HealthRequest, context: grpc.ServicerContext) -> node_pb2.HealthResponse:
        return call_guarded(context, "Health", _metered("Health", self.service.health))

    def Describe(self, request: node_pb2.DescribeRequest, context: grpc.ServicerContext) -> node_pb2.DescribeResponse:
        return call_guarded(context, "Describe", _metered("Describe", self.service.describe))

    def EncryptValues(
        self, request: node_pb2.EncryptRequest, context: grpc.ServicerContext
    ) -> node_pb2.EncryptResponse:
        return call_guarded(
            context,
            "EncryptValues",
            _metered("EncryptValues", lambda: self.service.encrypt_values(request, lambda: not context.is_active())),
        )

    def CosignCheckpoint(
        self, request: node_pb2.CosignRequest, context: grpc.ServicerContext
    ) -> node_pb2.CosignResponse:
        return call_guarded(
            context, "CosignCheckpoint", _metered("CosignCheckpoint", lambda: self.service.cosign(request))
        )


def _metered(rpc: str, handler: Callable[[], T]) -> Callable[[], T]:
    """Count the call by outcome (ok or the error code) and time it (xgate_node_request*)."""

    def run() -> T:
        t0 = time.perf_counter()
        outcome = "internal_error"
        try:
            result = handler()
            outcome = "ok"
            return result
        except XgateError as exc:
            outcome = exc.code
            raise
        finally:
            metrics.NODE_REQUESTS.labels(rpc, outcome).inc()
            metrics.NODE_REQUEST_SECONDS.labels(rpc).observe(time.perf_counter() - t0)

    return run


def build_service(config: NodeConfig) -> NodeService:
    settings = config.node
    if not settings.store.exists():
        raise ConfigError(f"node store {settings.store} does not exist; run `xgate node load` first")
    store = open_node_store(settings)
    audit = open_node_audit(settings)
    return NodeService(
        agency=settings.agency,
        store=store,
        max_subjects=settings.max_subjects,
        civil_register=settings.civil_register,
        allow_plaintext_mode=settings.allow_plaintext_mode,
        envelopes=envelopes_for(config),
        authorize=node_authorizer(
            settings.agency,
            settings.policy_dir,
            signed_by=config.tls.ca if settings.signed_policies and config.tls else None,
        ),
        audit=audit.record if audit else None,
        cosigner=audit.cosign if audit else None,
        closers=[audit.close] if audit else [],
        gateway_agency=config.tls.gateway_agency if config.tls else "gateway",
    )


def envelopes_for(config: NodeConfig) -> Envelopes | None:
    """Signed envelopes are mandatory with TLS; without TLS (--insecure) there is no PKI to bind keys."""
    if config.tls is None:
        return None
    settings = config.node
    if settings.signing_key is None or settings.federation_directory is None:
        raise ConfigError("a TLS node needs signing_key and federation_directory for signed envelopes")
    from crypto.directory import DirectoryKeyring, SigningKeyFile

    # Re-read when the CA re-issues federation.json (revocations, new parties): no restart needed.
    keyring = DirectoryKeyring(settings.federation_directory, config.tls.ca)
    return Envelopes(SigningKeyFile(settings.signing_key), keyring)  # follows `xgate pki install`


def _start_metrics(config: NodeConfig, service: NodeService, address: str) -> None:
    """/metrics and /healthz on [node].metrics_listen (plain HTTP: no data, only counts and states)."""
    settings = config.node
    if config.tls is not None:
        metrics.watch_expiry({"node": config.tls.cert}, config.tls.crl)

    def health() -> tuple[bool, dict[str, object]]:
        try:
            answer = service.health()
        except XgateError as exc:
            return False, {"status": "failing", "agency": settings.agency, "error": exc.code}
        return True, {"status": answer.status, "agency": settings.agency, "subjects": answer.subjects}

    server = metrics.serve_metrics(address, health)
    log.info("node_metrics_listening", agency=settings.agency, address=address,
             port=server.server_address[1])  # fmt: skip


def serve(config: NodeConfig, ready_file: Path | None = None) -> None:
    from nodes.preflight import listen_address, node_problems

    node_problems(config).raise_if_any(f"node config of '{config.node.agency}'")
    service = build_service(config)
    settings = config.node
    listen, listen_source = listen_address(config)
    limit = settings.max_message_mb * 1024 * 1024
    interceptors = []
    if config.tls is not None:
        from crypto.tls import node_interceptors

        # mTLS: only the federation gateway's certificate (checked against the CRL) gets through.
        interceptors = node_interceptors(config.tls, gateway_agency=config.tls.gateway_agency)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    node_pb2_grpc.add_AgencyNodeServicer_to_server(NodeServicer(service), server)  # type: ignore[no-untyped-call]  # generated
    if config.tls is None:
        if not settings.insecure:
            raise ConfigError("node has no [tls] section; pass --insecure to serve plaintext gRPC (development only)")
        print("WARNING: serving gRPC WITHOUT TLS (--insecure); development use only", file=sys.stderr)  # noqa: T201  # operator warning on stderr
        port = server.add_insecure_port(listen)
    else:
        from crypto.tls import reloading_server_credentials

        # A renewed certificate (`xgate pki install`) serves the next handshake: no restart.
        port = server.add_secure_port(listen, reloading_server_credentials(config.tls))
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} ({listen_source}); set [node].listen to a local address")
    server.start()
    if settings.metrics_listen:
        _start_metrics(config, service, settings.metrics_listen)
    announcement = {"event": "ready", "agency": settings.agency, "port": port, "listen": listen}
    log.info("node_ready", agency=settings.agency, port=port, listen=listen, listen_source=listen_source)
    if ready_file is not None:
        ready_file.write_text(json.dumps(announcement))
    print(json.dumps(announcement), flush=True)  # noqa: T201  # the readiness line the launcher reads
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    for close in service.closers:
        close()
    service.store.close()
    log.info("node_stopped", agency=settings.agency)
