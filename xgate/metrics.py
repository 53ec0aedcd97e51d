"""Prometheus metrics (prometheus-client) shared by the gateway (`/metrics` on its REST port) and the
nodes (`[node].metrics_listen`, a small HTTP port serving `/metrics` and `/healthz`).

Labels never carry personal data or caller-chosen strings: programs are the registry's ids (an
unknown one is "unknown"), agencies the configured ones, outcomes error codes from xgate/errors.py.
Certificate and CRL expiry are read from the files at scrape time, so a renewal shows at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Gateway
CHECKS = Counter("xgate_checks_total", "Eligibility checks by program and outcome (ok or an error code)",
                 ["program", "outcome"])  # fmt: skip
CHECK_SECONDS = Histogram("xgate_check_seconds", "Eligibility check latency at the gateway", ["program"],
                          buckets=_LATENCY)  # fmt: skip
NODE_ERRORS = Counter("xgate_node_errors_total", "Failed calls to agency nodes by agency and kind (error code)",
                      ["agency", "kind"])  # fmt: skip
NODE_UP = Gauge("xgate_node_up", "1 while the last call to the agency's node succeeded, 0 after a failure", ["agency"])
REFUSALS = Counter("xgate_refusals_total", "Checks refused by policy: reason budget, consent or policy", ["reason"])
_AUDIT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
AUDIT_APPEND_SECONDS = Histogram("xgate_audit_append_seconds", "Audit append latency (queued to committed)",
                                 buckets=_AUDIT)  # fmt: skip
AUDIT_QUEUE_DEPTH = Gauge("xgate_audit_queue_depth", "Audit appends waiting for their commit")
# Nodes
NODE_REQUESTS = Counter("xgate_node_requests_total", "Node RPCs served by method and outcome", ["rpc", "outcome"])
NODE_REQUEST_SECONDS = Histogram("xgate_node_request_seconds", "Node RPC latency", ["rpc"], buckets=_LATENCY)


class ExpiryCollector(Collector):
    """`xgate_certificate_expiry_timestamp_seconds{name}` and `xgate_crl_next_update_timestamp_seconds`,
    read from the files at each scrape (an unreadable file is left out: `config check` names it)."""

    def __init__(self, certificates: Mapping[str, Path], crl: Path | None) -> None:
        self.certificates = dict(certificates)
        self.crl = crl

    def collect(self) -> Iterable[GaugeMetricFamily]:
        certs = GaugeMetricFamily(
            "xgate_certificate_expiry_timestamp_seconds", "notAfter of this party's certificates", labels=["name"]
        )
        for name, path in self.certificates.items():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            certs.add_metric([name], cert.not_valid_after_utc.timestamp())
        yield certs
        crl = GaugeMetricFamily("xgate_crl_next_update_timestamp_seconds", "nextUpdate of the CRL in force")
        if self.crl is not None:
            try:
                nxt = x509.load_pem_x509_crl(self.crl.read_bytes()).next_update_utc
            except (OSError, ValueError):
                nxt = None
            if nxt is not None:
                crl.add_metric([], nxt.timestamp())
        yield crl


_expiry: ExpiryCollector | None = None
_lock = threading.Lock()


def watch_expiry(certificates: Mapping[str, Path], crl: Path | None) -> None:
    """Export the expiry of these files (one set per process; a second call replaces the first)."""
    global _expiry
    with _lock:
        if _expiry is not None:
            REGISTRY.unregister(_expiry)
        _expiry = ExpiryCollector(certificates, crl)
        REGISTRY.register(_expiry)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(address: str, health: Callable[[], tuple[bool, dict[str, object]]]) -> ThreadingHTTPServer:
    """A small HTTP server (a daemon thread) with /metrics and /healthz; returns it (port in server_address)."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server hook name
            if self.path == "/metrics":
                body, ctype, status = *exposition(), 200
            elif self.path == "/healthz":
                ok, detail = health()
                body, ctype, status = json.dumps(detail).encode(), "application/json", 200 if ok else 503
            else:
                body, ctype, status = b"not found\n", "text/plain", 404
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # no access log on stderr
            return

    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)  # noqa: S104  # operator-chosen
    threading.Thread(target=server.serve_forever, name="xgate-metrics", daemon=True).start()
    return server
