"""Organisation-level mutual TLS for gRPC (gateway ↔ nodes) and TLS settings for the REST API.

gRPC's TLS stack checks the chain to the federation CA and the validity window during the
handshake; a server interceptor adds what gRPC cannot: the CRL (fail closed when stale),
the peer's kind and agency. Clients pin the node they meant to reach by overriding the TLS
target name to `<agency>.node.xgate`, a DNS SAN only that agency's node certificate carries;
`verify_server()` is an optional pre-flight that also checks the node's certificate against
the CRL (gRPC Python never exposes the server's certificate to the client).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import errno
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from cryptography import x509

from crypto import pki
from crypto.pki import PeerIdentity
from xgate.errors import (
    ConfigError,
    CryptoError,
    NodeUnavailable,
    PolicyDenied,
    TlsHandshakeFailed,
    Unauthenticated,
    XgateError,
)
from xgate.logging import get_logger

log = get_logger("xgate.tls")

# The peer the current RPC was verified as (set by the interceptors for the handler's duration).
_current_peer: contextvars.ContextVar[PeerIdentity | None] = contextvars.ContextVar("xgate_peer", default=None)


def current_peer() -> PeerIdentity | None:
    """Identity of the mTLS peer of the RPC being handled (None outside an intercepted RPC)."""
    return _current_peer.get()


class TlsFiles(Protocol):
    """Anything with these attributes (nodes.config.TlsConfig satisfies it)."""

    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...
    @property
    def ca(self) -> Path: ...
    @property
    def crl(self) -> Path | None: ...


@dataclass(frozen=True)
class TlsPaths:
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that REQUIRE a client certificate chaining to the federation CA."""
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "TLS key"), _read(tls.cert, "TLS certificate"))],
        root_certificates=_read(tls.ca, "CA certificate"),
        require_client_auth=True,
    )


node_server_credentials = server_credentials  # name the node server imports


def reloading_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Like server_credentials, but a renewed certificate and key (`xgate pki install`) serve the
    next handshake without a restart. gRPC asks the fetcher before each handshake; it answers
    with new material only when the files changed and the new key matches the new certificate
    (mid-install states are skipped), else None (keep what is in force)."""

    def material() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(tls.key, "TLS key"), _read(tls.cert, "TLS certificate"))],
            root_certificates=_read(tls.ca, "CA certificate"),
        )

    def stamp() -> tuple[int, ...]:
        return tuple(x for p in (tls.cert, tls.key, tls.ca) for x in (p.stat().st_mtime_ns, p.stat().st_size))

    state = {"stamp": stamp()}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        from crypto.preflight import private_key_public

        try:
            now = stamp()
            if now == state["stamp"] or private_key_public(tls.key) != pki.load_cert(tls.cert).public_key():
                return None
            fresh = material()
        except (OSError, ConfigError, CryptoError):
            return None
        state["stamp"] = now
        log.info("tls_material_reloaded", cert=tls.cert.name)
        return fresh

    return grpc.dynamic_ssl_server_credentials(material(), fetch, require_client_authentication=True)  # type: ignore[arg-type]  # gRPC documents None as "no change"; the stub does not


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials: trust only the federation CA, present our own certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "CA certificate"),
        private_key=_read(tls.key, "TLS key"),
        certificate_chain=_read(tls.cert, "TLS certificate"),
    )


class TlsFileWatch:
    """Notices when a certificate/key pair was renewed (`xgate pki install`): `changed()` is True once
    per renewal, and only when the new key matches the new certificate (a mid-install state is not a
    change yet). Looks at the files (stat) at most once per `check_every_s`."""

    def __init__(self, cert: Path, key: Path, check_every_s: float = 1.0) -> None:
        self.cert, self.key, self.check_every_s = cert, key, check_every_s
        self._stamp = self._read_stamp()
        self._next = time.monotonic() + check_every_s

    def _read_stamp(self) -> tuple[int, ...]:
        return tuple(x for p in (self.cert, self.key) for x in (p.stat().st_mtime_ns, p.stat().st_size))

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.check_every_s
        from crypto.preflight import private_key_public

        try:
            stamp = self._read_stamp()
            if stamp == self._stamp or private_key_public(self.key) != pki.load_cert(self.cert).public_key():
                return False
        except (OSError, ConfigError, CryptoError):
            return False
        self._stamp = stamp
        log.info("tls_material_reloaded", cert=self.cert.name)
        return True


def channel_options(agency: str, kind: str = "node") -> list[tuple[str, Any]]:
    """Pin the peer: the handshake fails unless its certificate names <agency>.<kind>.xgate."""
    return [("grpc.ssl_target_name_override", pki.target_name(agency, kind))]


def secure_channel(
    address: str,
    agency: str,
    tls: TlsFiles,
    *,
    kind: str = "node",
    aio: bool = True,
    options: Iterable[tuple[str, Any]] = (),
) -> Any:
    """mTLS channel to `agency`'s party at `address` (grpc.aio by default)."""
    opts = channel_options(agency, kind) + list(options)
    factory = grpc.aio.secure_channel if aio else grpc.secure_channel
    return factory(address, channel_credentials(tls), options=opts)


class PeerVerifier:
    """Checks the client certificate of each RPC: CA, validity, CRL, kind, agency.

    The CRL file is re-read when it changes on disk; a configured but missing, unsigned or
    stale CRL refuses every peer (fail closed). crl=None disables revocation checks (logged).
    """

    def __init__(
        self,
        ca: Path,
        crl: Path | None,
        allowed_kinds: Iterable[str],
        allowed_agencies: Iterable[str] | None = None,
        crl_grace: dt.timedelta = pki.DEFAULT_CRL_GRACE,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ca = pki.load_cert(_read(ca, "CA certificate"))
        self.crl_path = crl
        self.allowed_kinds = frozenset(allowed_kinds)
        self.allowed_agencies = None if allowed_agencies is None else frozenset(allowed_agencies)
        self.crl_grace = crl_grace
        self.clock = clock
        self._lock = threading.Lock()
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_stamp: tuple[float, int] | None = None
        if crl is None:
            log.warning("crl_disabled", reason="no CRL configured: revoked certificates are not refused")

    def _current_crl(self) -> x509.CertificateRevocationList | None:
        if self.crl_path is None:
            return None
        try:
            st = self.crl_path.stat()
        except OSError:
            raise Unauthenticated("revocation list unavailable: refusing all peers") from None
        with self._lock:
            if self._crl is None or self._crl_stamp != (st.st_mtime, st.st_size):
                try:
                    self._crl = pki.load_crl(self.crl_path.read_bytes())
                except (OSError, CryptoError):
                    raise Unauthenticated("revocation list unreadable: refusing all peers") from None
                self._crl_stamp = (st.st_mtime, st.st_size)
            return self._crl

    def check_pem(self, cert_pem: bytes) -> PeerIdentity:
        """Raise Unauthenticated (bad/unknown/expired/revoked) or PolicyDenied (wrong kind/agency)."""
        try:
            ident = pki.verify_peer_certificate(
                cert_pem, self.ca, self._current_crl(), None, None, now=self.clock(), crl_grace=self.crl_grace
            )
        except CryptoError as exc:
            raise Unauthenticated(f"client certificate refused: {exc.message}") from None
        if ident.kind not in self.allowed_kinds:
            raise PolicyDenied(f"certificate kind '{ident.kind}' may not call this service", agency=ident.agency)
        if self.allowed_agencies is not None and ident.agency not in self.allowed_agencies:
            raise PolicyDenied(f"agency '{ident.agency}' may not call this service")
        return ident

    def check_auth_context(self, auth_context: Mapping[str, Iterable[bytes]]) -> PeerIdentity:
        certs = list(auth_context.get("x509_pem_cert", []))
        if not certs:
            raise Unauthenticated("no client certificate (mutual TLS required)")
        return self.check_pem(certs[0])


def _auth_context(context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any]) -> Mapping[str, Iterable[bytes]]:
    # grpc returns a list of values per key; types-grpcio declares a single bytes value.
    return cast("Mapping[str, Iterable[bytes]]", context.auth_context())


def _details(exc: XgateError) -> str:
    return json.dumps(exc.to_public())


def _status(exc: XgateError) -> grpc.StatusCode:
    status: grpc.StatusCode = getattr(grpc.StatusCode, exc.grpc_status)
    return status


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], wrap_call: Callable[[Any], Any]) -> grpc.RpcMethodHandler[Any, Any]:
    for attr, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return factory(
                wrap_call(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ConfigError("unsupported gRPC handler")


class PeerCheckInterceptor(grpc.ServerInterceptor):
    """Sync grpc.server interceptor: refuse RPCs whose mTLS peer fails PeerVerifier."""

    def __init__(self, verifier: PeerVerifier) -> None:
        self.verifier = verifier

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_call(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def checked(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    peer = self.verifier.check_auth_context(_auth_context(context))
                except XgateError as exc:
                    log.warning("peer_refused", method=method, error=exc.code, reason=exc.message)
                    context.abort(_status(exc), _details(exc))
                token = _current_peer.set(peer)
                try:
                    return behaviour(request, context)
                finally:
                    _current_peer.reset(token)

            return checked

        return _wrap(handler, wrap_call)


class AioPeerCheckInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio server interceptor: refuse RPCs whose mTLS peer fails PeerVerifier."""

    def __init__(self, verifier: PeerVerifier) -> None:
        self.verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_call(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    peer = self.verifier.check_auth_context(_auth_context(context))
                except XgateError as exc:
                    log.warning("peer_refused", method=method, error=exc.code, reason=exc.message)
                    await context.abort(_status(exc), _details(exc))
                token = _current_peer.set(peer)
                try:
                    result = behaviour(request, context)
                    return await result if hasattr(result, "__await__") else result
                finally:
                    _current_peer.reset(token)

            return checked

        return _wrap(handler, wrap_call)


def node_peer_verifier(tls: TlsFiles, gateway_agency: str = "gateway") -> PeerVerifier:
    """A node accepts only the federation gateway's certificate."""
    return PeerVerifier(tls.ca, tls.crl, allowed_kinds={"gateway"}, allowed_agencies={gateway_agency})


def node_interceptors(tls: TlsFiles, gateway_agency: str = "gateway", aio: bool = False) -> list[Any]:
    """Interceptors for a node's gRPC server (pass as grpc.server(..., interceptors=...))."""
    verifier = node_peer_verifier(tls, gateway_agency)
    return [AioPeerCheckInterceptor(verifier) if aio else PeerCheckInterceptor(verifier)]


def verify_server(
    address: str,
    agency: str,
    tls: TlsFiles,
    *,
    kind: str = "node",
    timeout: float = 5.0,
    crl_grace: dt.timedelta = pki.DEFAULT_CRL_GRACE,
) -> PeerIdentity:
    """Pre-flight TLS handshake to a node: hostname pin, chain, validity, CRL, agency, kind.

    Raise NodeUnavailable when nothing answers, TlsHandshakeFailed when the handshake fails (chain,
    name pin, protocol: typed from ssl.SSLError, no text matching), Unauthenticated when the
    certificate it presented is refused afterwards (CRL, agency, kind). Use once per connection
    set-up (e.g. when the gateway opens its channel to a node), since gRPC hides the server certificate.
    """
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=pki.target_name(agency, kind)) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except ssl.SSLError as exc:  # an OSError subclass: before the generic case
        raise TlsHandshakeFailed(agency, f"TLS handshake with the {kind} failed: {type(exc).__name__}") from None
    except (OSError, ValueError) as exc:
        raise NodeUnavailable(agency, f"unreachable: {os_reason(exc)}") from None
    if der is None:
        raise Unauthenticated("server presented no certificate")
    try:
        return pki.verify_peer_certificate(
            x509.load_der_x509_certificate(der),
            _read(tls.ca, "CA certificate"),
            tls.crl,
            agency,
            kind,
            crl_grace=crl_grace,
        )
    except CryptoError as exc:
        raise Unauthenticated(f"server certificate refused: {exc.message}") from None


def os_reason(exc: BaseException) -> str:
    """An OS error as an operator reads it: class, errno (number and name) and text, never a bare OSError."""
    number = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc) or "no detail"
    if isinstance(number, int):
        return f"{type(exc).__name__} [errno {number} {errno.errorcode.get(number, '?')}] {text}"
    return f"{type(exc).__name__}: {text}"


def uvicorn_ssl_kwargs(
    cert: Path, key: Path, ca: Path | None = None, require_client_cert: bool = False
) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run/Config serving the REST API over TLS (≥1.2)."""
    for p, what in ((cert, "TLS certificate"), (key, "TLS key")):
        _read(p, what)
    kwargs: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    if ca is not None:
        kwargs["ssl_ca_certs"] = str(ca)
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ConfigError("require_client_cert needs the federation CA certificate")
    return kwargs


def warn_insecure(component: str) -> None:
    """The one warning every --insecure mode prints (stderr and log)."""
    print(  # noqa: T201  # a warning for the operator's terminal, beside the log
        f"WARNING: {component} running WITHOUT TLS (--insecure): development use only; "
        "traffic and credentials travel in plaintext",
        file=sys.stderr,
    )
    log.warning("insecure_mode", component=component)
