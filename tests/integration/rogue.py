"""Misbehaving nodes for failure tests: real gRPC servers with valid federation certificates
that answer slowly, with garbage, or with bytes that are not protobuf at all."""

from __future__ import annotations

import os
import time
from concurrent import futures
from pathlib import Path

import grpc

from crypto import pki
from crypto.tls import TlsPaths, server_credentials
from exchange.eligibility import echo_clamp
from protos.xgate.v1 import node_pb2, node_pb2_grpc


class RogueNode(node_pb2_grpc.AgencyNodeServicer):
    def __init__(self, agency: str, behaviour: str) -> None:
        self.agency = agency
        self.behaviour = behaviour
        self.started: list[str] = []  # request ids of calls received ("hold")
        self.cancelled: list[str] = []  # request ids of calls the gateway cancelled ("hold")

    def EncryptValues(self, request, context):
        if self.behaviour == "slow":
            time.sleep(10)
        if self.behaviour == "hold":  # work until the caller cancels (or 30 s), recording what it saw
            self.started.append(request.context.request_id)
            until = time.monotonic() + 30
            while context.is_active() and time.monotonic() < until:
                time.sleep(0.02)
            if not context.is_active():
                self.cancelled.append(request.context.request_id)
        response = node_pb2.EncryptResponse(agency=self.agency, request_id=request.context.request_id)
        for query in request.elements:
            element = echo_clamp(response.elements.add(element=query.element), query)
            chunks = -(-len(request.pseudonyms) // 8192)
            for _ in range(chunks):
                blob = os.urandom(4096) if self.behaviour == "garbage" else b""
                import hashlib

                element.ciphertexts.append(blob)
                element.ciphertext_sha256.append(hashlib.sha256(blob).digest())
        if self.behaviour == "impostor":
            response.agency = "hrss"
        return response


def _not_protobuf(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"\xff\xff\xff\xff this is not a protobuf message"


def start_rogue(
    ca_dir: Path, workdir: Path, agency: str, behaviour: str, node: RogueNode | None = None, workers: int = 4
) -> tuple[grpc.Server, int]:
    # Issue from a copy of the CA: issuing in the shared one would re-sign the federation
    # directory with a new key for this agency, changing what later processes trust.
    import shutil

    ca_copy = workdir / "ca-copy"
    shutil.copytree(ca_dir, ca_copy, dirs_exist_ok=True)
    issued = pki.issue(ca_copy, "node", agency, workdir)
    tls = TlsPaths(cert=issued.cert_path, key=issued.key_path, ca=ca_dir / "ca.cert.pem")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    if behaviour == "not_protobuf":
        handler = grpc.method_handlers_generic_handler(
            "xgate.v1.AgencyNode",
            {"EncryptValues": grpc.unary_unary_rpc_method_handler(_not_protobuf)},
        )
        server.add_generic_rpc_handlers((handler,))
    else:
        node_pb2_grpc.add_AgencyNodeServicer_to_server(node or RogueNode(agency, behaviour), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    server.start()
    return server, port
