"""Assemble the gateway from its config and run it under uvicorn."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from crypto.masks import MASK_KEY_BYTES
from gateway.app import create_app
from gateway.checks import CheckCoordinator
from gateway.config import GatewayConfig
from gateway.fanout import NodeDirectory, NodeEndpoint
from policies.programs import ProgramRegistry
from xgate.catalogue import load_catalogue
from xgate.errors import ConfigError
from xgate.logging import get_logger

log = get_logger("xgate.gateway")


def load_mask_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"mask key file {path}: {exc.strerror}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"mask key file {path}: expected {2 * MASK_KEY_BYTES} hex characters") from None
    if len(key) != MASK_KEY_BYTES:
        raise ConfigError(f"mask key file {path}: expected {MASK_KEY_BYTES} bytes")
    return key


def build_app(config: GatewayConfig) -> FastAPI:
    settings = config.gateway
    catalogue, _ = load_catalogue(settings.catalogue)
    programs = ProgramRegistry.load(settings.program_dir, catalogue)
    endpoints = {agency: NodeEndpoint(agency, ref.address) for agency, ref in config.nodes.items()}
    credentials = None
    envelopes = None
    if config.tls is not None:
        from crypto.envelope import Envelopes, SigningKey
        from crypto.pki import load_directory

        keyring = load_directory(config.tls.federation_directory, config.tls.ca).keyring()
        envelopes = Envelopes(SigningKey.load(config.tls.signing_key), keyring)
        from crypto.pki import target_name
        from crypto.tls import channel_credentials

        # Pin each node: the handshake fails unless its certificate names <agency>.node.xgate.
        creds = channel_credentials(config.tls)
        credentials = {agency: (creds, target_name(agency, "node")) for agency in endpoints}
    elif not settings.insecure:
        raise ConfigError("gateway has no [tls] section; pass --insecure for plaintext gRPC (development only)")
    nodes = NodeDirectory(endpoints, settings.max_message_mb, credentials, envelopes)
    coordinator = CheckCoordinator(
        programs=programs,
        nodes=nodes,
        mask_key=load_mask_key(settings.mask_key_file),
        deadline_s=settings.deadline_seconds,
        max_subjects=settings.max_subjects,
        allow_plaintext_mode=settings.allow_plaintext_mode,
    )
    from gateway.wiring import authenticator_for, policy_for

    authenticate = authenticator_for(config)
    coordinator.policy, routers = policy_for(config, authenticate)
    return create_app(
        coordinator, authenticate, max_body_bytes=settings.max_body_mb * 1024 * 1024, extra_routers=routers
    )


def serve(config: GatewayConfig) -> None:
    app = build_app(config)
    settings = config.gateway
    if config.tls is None:
        print("WARNING: serving the REST API WITHOUT TLS (--insecure); development use only", file=sys.stderr)
    # Bind first so an ephemeral port (0) can be announced before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    ssl_kwargs = {}
    if config.tls is not None:
        ssl_kwargs = {
            "ssl_certfile": str(config.tls.cert),
            "ssl_keyfile": str(config.tls.key),
        }
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **ssl_kwargs))  # type: ignore[arg-type]
    scheme = "https" if config.tls is not None else "http"
    print(json.dumps({"event": "ready", "port": port, "url": f"{scheme}://{settings.host}:{port}"}), flush=True)
    log.info("gateway_ready", port=port)
    server.run(sockets=[sock])
