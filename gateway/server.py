"""Assemble the gateway from its config and run it under uvicorn."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

import grpc
import uvicorn
from fastapi import FastAPI

from exchange.he_compute import HeCompute, InlineHeCompute
from exchange.pads import PadPools
from gateway.app import create_app
from gateway.audit import GatewayAudit
from gateway.checks import CheckCoordinator
from gateway.config import GatewayConfig, GatewayTls
from gateway.fanout import NodeDirectory, NodeEndpoint
from gateway.he_workers import ProcessHeCompute, default_workers
from gateway.http_protocol import protocol_with
from gateway.metered import MeteredCheckService
from gateway.preflight import gateway_problems, load_mask_key
from gateway.services import Services, public_key_of
from policies.catalogue import load_catalogue
from policies.programs import ProgramRegistry
from xgate.errors import ConfigError
from xgate.logging import get_logger

log = get_logger("xgate.gateway")
GRACEFUL_SHUTDOWN_S = 3


def _renewed_credentials(
    tls: GatewayTls, agencies: list[str]
) -> Callable[[], dict[str, tuple[grpc.ChannelCredentials, str]] | None]:
    """New client credentials towards the nodes once our certificate was renewed, else None."""
    from crypto.pki import target_name
    from crypto.tls import TlsFileWatch, channel_credentials

    watch = TlsFileWatch(tls.cert, tls.key)

    def renewed() -> dict[str, tuple[grpc.ChannelCredentials, str]] | None:
        if not watch.changed():
            return None
        creds = channel_credentials(tls)
        return {agency: (creds, target_name(agency, "node")) for agency in agencies}

    return renewed


async def _follow_rest_certificate(context: ssl.SSLContext, tls: GatewayTls) -> None:
    """Serve new TLS handshakes with a renewed REST certificate (`xgate pki install`): the context's
    certificate is replaced in the event loop's thread, between handshakes; no restart."""
    from crypto.tls import TlsFileWatch

    watch = TlsFileWatch(tls.cert, tls.key)
    while True:
        await asyncio.sleep(1.0)
        if watch.changed():
            context.load_cert_chain(str(tls.cert), str(tls.key))


def node_directory(config: GatewayConfig) -> NodeDirectory:
    """The gateway's clients of the agencies' nodes: pinned mTLS, signed envelopes and renewal, or plaintext."""
    settings = config.gateway
    endpoints = {agency: NodeEndpoint(agency, ref.address) for agency, ref in config.nodes.items()}
    credentials = None
    envelopes = None
    if config.tls is not None:
        from crypto.directory import DirectoryKeyring, SigningKeyFile
        from crypto.envelope import Envelopes

        # Re-read when the CA re-issues federation.json (revocations, new nodes): no restart needed.
        keyring = DirectoryKeyring(config.tls.federation_directory, config.tls.ca)
        envelopes = Envelopes(SigningKeyFile(config.tls.signing_key), keyring)  # follows renewals
        from crypto.pki import target_name
        from crypto.tls import channel_credentials

        # Pin each node: the handshake fails unless its certificate names <agency>.node.xgate.
        creds = channel_credentials(config.tls)
        credentials = {agency: (creds, target_name(agency, "node")) for agency in endpoints}
    elif not settings.insecure:
        raise ConfigError("gateway has no [tls] section; pass --insecure for plaintext gRPC (development only)")
    server_check = None
    if config.tls is not None:
        from crypto.tls import verify_server

        tls = config.tls

        def server_check(address: str, agency: str) -> None:
            verify_server(address, agency, tls)  # chain, validity, CRL, agency, kind

    renewed = None
    if config.tls is not None:
        renewed = _renewed_credentials(config.tls, list(endpoints))
    return NodeDirectory(endpoints, settings.max_message_mb, credentials, envelopes, server_check, renewed=renewed)


def build_app(config: GatewayConfig, on_ready: Callable[[], None] | None = None) -> FastAPI:
    settings = config.gateway
    catalogue, _ = load_catalogue(settings.catalogue)
    programs = ProgramRegistry.load(settings.program_dir, catalogue)
    nodes = node_directory(config)
    # HE flooding and combining in worker processes: TenSEAL holds the GIL, and in threads it
    # starved the event loop that admits and refuses requests (gateway/he_workers.py).
    workers = default_workers() if settings.he_workers is None else settings.he_workers
    compute: HeCompute = ProcessHeCompute(workers) if workers else InlineHeCompute()
    service = MeteredCheckService(  # counts checks for /metrics
        programs=programs,
        nodes=nodes,
        mask_key=load_mask_key(settings.mask_key_file),
        deadline_s=settings.deadline_seconds,
        max_subjects=settings.max_subjects,
        allow_plaintext_mode=settings.allow_plaintext_mode,
        compute=compute,
        pads=PadPools(settings.pad_batches, settings.pad_batch_checks) if settings.one_time_pads else None,
    )
    coordinator = CheckCoordinator(service, nodes)
    from gateway.wiring import authenticator_for, contexts_for, idempotency_for, policy_for, training_for
    from policies.approvals import ApprovalRegistry

    authenticate = authenticator_for(config)
    policy, consents, requesters = policy_for(config)
    service.policy = policy
    service.requesters = requesters.usable  # every check is signed by its requester (THREAT_MODEL I1b)
    requesters.warn_if_none()
    audit = None
    if settings.audit_db is not None:
        if settings.audit_key is None:
            raise ConfigError("gateway config has audit_db but no audit_key to sign checkpoints")
        witness_keys = {a: ref.witness_key for a, ref in config.nodes.items() if ref.witness_key is not None}
        from gateway.audit_registry import AuditLogRegistry
        from gateway.state import shared_database
        from gateway.wiring import state_dir_of

        registry = AuditLogRegistry(shared_database(config) or state_dir_of(config) / "audit_logs.sqlite")
        audit = GatewayAudit.open(
            settings.audit_db,
            settings.audit_key,
            witness_keys,
            settings.audit_writer,
            replica=settings.replica,
            registry=registry,
        )
        service.auditor = audit
    training = training_for(config, policy, audit.log if audit else None)
    if config.tls is not None:
        from xgate.metrics import watch_expiry

        certs = {"gateway": config.tls.cert}
        if config.training is not None and config.training.superlink_cert is not None:
            certs["flower-superlink"] = config.training.superlink_cert
        watch_expiry(certs, config.tls.crl)
    services = Services(
        authenticate=authenticate,
        coordinator=coordinator,
        policy=policy,
        audit=audit,
        consents=consents,
        approvals=policy.approvals if isinstance(policy.approvals, ApprovalRegistry) else None,
        training=training,
        nodes=nodes,
        public_key=public_key_of(settings.audit_key) if audit else None,
        witnesses=list(audit.witnesses.values()) if audit else (),
        federation_directory=config.tls.federation_directory if config.tls else None,
        ca_cert=config.tls.ca if config.tls else None,
        crl=config.tls.crl if config.tls else None,
        gateway_cert=config.tls.cert if config.tls else None,
        jobs_dir=training.jobs_dir,
        privacy_ledger=training.ledger,
        idempotency=idempotency_for(config),
        contexts=contexts_for(config),
    )
    return create_app(
        services,
        max_body_bytes=settings.max_body_mb * 1024 * 1024,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        on_ready=on_ready,
        admission=settings.admission,
        on_shutdown=[training.close, compute.close],
    )


def serve(config: GatewayConfig) -> None:
    gateway_problems(config).raise_if_any("gateway config")
    settings = config.gateway
    if config.tls is None:
        print("WARNING: serving the REST API WITHOUT TLS (--insecure); development use only", file=sys.stderr)  # noqa: T201  # operator warning on stderr
    # Bind first so an ephemeral port (0) can be announced before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)  # accept (queue) connections as soon as "ready" is announced
    port = sock.getsockname()[1]
    scheme = "https" if config.tls is not None else "http"

    def announce() -> None:
        print(json.dumps({"event": "ready", "port": port, "url": f"{scheme}://{settings.host}:{port}"}), flush=True)  # noqa: T201  # the readiness line the launcher reads
        log.info("gateway_ready", port=port)

    tasks: list[asyncio.Task[None]] = []  # held: the loop keeps only weak references to tasks

    def ready() -> None:
        announce()
        if uvicorn_config.ssl is not None and config.tls is not None:
            follow = _follow_rest_certificate(uvicorn_config.ssl, config.tls)
            tasks.append(asyncio.get_running_loop().create_task(follow))

    app = build_app(config, on_ready=ready)
    ssl_kwargs = {}
    if config.tls is not None:
        ssl_kwargs = {
            "ssl_certfile": str(config.tls.cert),
            "ssl_keyfile": str(config.tls.key),
        }
    # A kept-alive TLS connection would hold a graceful shutdown for the TLS close timeout (30 s):
    # requests in flight get GRACEFUL_SHUTDOWN_S, then the app shuts down (within 5 s of SIGTERM).
    admission = settings.admission
    config_kwargs: dict[str, Any] = {
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # a request head has a deadline, and connections a ceiling (gateway/http_protocol.py)
        "http": protocol_with(admission.header_read_timeout_s, admission.max_head_kb * 1024),
        "limit_concurrency": admission.max_connections,
        **ssl_kwargs,
    }
    uvicorn_config = uvicorn.Config(app, log_level="warning", access_log=False, **config_kwargs)
    uvicorn_config.load()  # the SSL context exists now, so a renewal can replace its certificate later
    server = uvicorn.Server(uvicorn_config)
    server.run(sockets=[sock])
