"""Cost of xgate's transport security, measured against a baseline in the same run.

1. Envelope sign + verify per message (1 KB and 4 MB EncryptRequest bodies) vs. the
   deterministic serialisation the message needs anyway.
2. gRPC round trip on loopback: insecure vs. mTLS (with the peer-check interceptor) vs. mTLS +
   signed envelopes both ways, for a small message and a ~4 MB request.

    python -m bench.security [--quick]      -> bench/results/security.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from crypto import pki, tls
from crypto.envelope import Keyring, SigningKey, method_name, request_digest, sign_message, verify_message
from crypto.replay import ReplayGuard
from protos.xgate.v1 import node_pb2, node_pb2_grpc

RESULTS = Path(__file__).parent / "results" / "security.json"
MB = 1024 * 1024
M = method_name("EncryptValues")


def _median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _request(size: int) -> node_pb2.EncryptRequest:
    req = node_pb2.EncryptRequest(pseudonyms=["p"] * 8, public_context=b"\x5a" * size)
    req.context.request_id = "bench"
    return req


def bench_envelope(sizes: dict[str, int], n: int) -> dict[str, Any]:
    gw = SigningKey.generate("gateway", "gateway")
    ring = Keyring.of(gw)
    out: dict[str, Any] = {}
    for label, size in sizes.items():
        msg = _request(size)
        serialise = _median_ms(lambda m=msg: m.SerializeToString(deterministic=True), n)
        sign = _median_ms(lambda m=msg: sign_message(m, M, gw), n)

        def verify(m: node_pb2.EncryptRequest = msg) -> None:
            verify_message(m, M, ring, ReplayGuard())  # fresh guard: the same nonce is verified n times

        ver = _median_ms(verify, n)
        out[label] = {
            "bytes": size,
            "serialise_ms": round(serialise, 4),
            "sign_ms": round(sign, 4),
            "verify_ms": round(ver, 4),
            "sign_plus_verify_ms": round(sign + ver, 4),
            "ratio_to_serialise": round((sign + ver) / serialise, 2) if serialise else None,
        }
    return out


class _Servicer(node_pb2_grpc.AgencyNodeServicer):
    def __init__(self, signer: SigningKey | None, ring: Keyring | None) -> None:
        self.signer, self.ring, self.guard = signer, ring, ReplayGuard()

    async def Health(self, request: node_pb2.HealthRequest, context: Any) -> node_pb2.HealthResponse:
        return node_pb2.HealthResponse(agency="tax", status="serving")

    async def EncryptValues(self, request: node_pb2.EncryptRequest, context: Any) -> node_pb2.EncryptResponse:
        resp = node_pb2.EncryptResponse(agency="tax", request_id=request.context.request_id)
        if self.signer is not None and self.ring is not None:
            verify_message(request, M, self.ring, self.guard)
            sign_message(resp, M, self.signer, request_digest(request))
        return resp


async def _rtt(mode: str, files: dict[str, tls.TlsPaths], sizes: dict[str, int], n: int) -> dict[str, float]:
    gw, node = SigningKey.generate("gateway", "gateway"), SigningKey.generate("tax", "node")
    ring = Keyring.of(gw, node)
    signed = mode == "mtls+envelope"
    opts = [("grpc.max_receive_message_length", 64 * MB), ("grpc.max_send_message_length", 64 * MB)]
    interceptors = [] if mode == "insecure" else [tls.AioPeerCheckInterceptor(tls.node_peer_verifier(files["node"]))]
    server = grpc.aio.server(interceptors=interceptors, options=opts)
    node_pb2_grpc.add_AgencyNodeServicer_to_server(_Servicer(node if signed else None, ring), server)
    if mode == "insecure":
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts)
    else:
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(files["node"]))
        channel = tls.secure_channel(f"127.0.0.1:{port}", "tax", files["gateway"], options=opts)
    await server.start()
    out: dict[str, float] = {}
    try:
        stub = node_pb2_grpc.AgencyNodeStub(channel)
        await stub.Health(node_pb2.HealthRequest(), timeout=10)  # handshake outside the timing
        for label, size in sizes.items():
            times = []
            for i in range(n + 2):
                req = _request(size)
                t0 = time.perf_counter()
                if signed:
                    sign_message(req, M, gw)
                resp = await stub.EncryptValues(req, timeout=60)
                if signed:
                    verify_message(resp, M, ring, None, expected_request_digest=request_digest(req))
                if i >= 2:  # warm-up
                    times.append((time.perf_counter() - t0) * 1000)
            out[label] = round(statistics.median(times), 3)
    finally:
        await channel.close()
        await server.stop(None)
    return out


def bench_grpc(n_small: int, n_large: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki.init_ca(root / "ca", "bench")
        node = pki.issue(root / "ca", "node", "tax", root / "n")
        gw = pki.issue(root / "ca", "gateway", "gateway", root / "g")
        ca, crl = root / "ca" / pki.CA_CERT, root / "ca" / pki.CRL
        files = {
            "node": tls.TlsPaths(node.cert_path, node.key_path, ca, crl),
            "gateway": tls.TlsPaths(gw.cert_path, gw.key_path, ca, crl),
        }
        results: dict[str, dict[str, float]] = {}
        for mode in ("insecure", "mtls", "mtls+envelope"):
            small = asyncio.run(_rtt(mode, files, {"small_1kb": 1024}, n_small))
            large = asyncio.run(_rtt(mode, files, {"large_4mb": 4 * MB}, n_large))
            results[mode] = small | large
    base = results["insecure"]
    ratios = {
        mode: {k: round(v / base[k], 2) for k, v in r.items()} for mode, r in results.items() if mode != "insecure"
    }
    return {"median_rtt_ms": results, "ratio_to_insecure": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    args = parser.parse_args()
    n_env, n_small, n_large = (5, 20, 3) if args.quick else (50, 300, 20)
    report = {
        "benchmark": "security",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "grpc": grpc.__version__,
        },
        "envelope": bench_envelope({"1kb": 1024, "4mb": 4 * MB}, n_env),
        "grpc_loopback": bench_grpc(n_small, n_large),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
