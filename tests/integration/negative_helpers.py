"""Tools for the negative security suite (test_negative_security.py).

Everything here acts on the session federation's real processes without disturbing other test
files that share it: extra certificates are issued from a *scratch copy* of the federation CA
(same CA key, so they chain to the real CA, but the real index and signed directory stay as
they are), and variant processes read a *pinned* directory that lists exactly the parties that
are running (other tests' `pki.issue` calls rotate entries in the shared directory).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import tenseal as ts
import tomli_w

from app.devfed import DEV_APPROVAL_REF, GATEWAY_ID, LEGAL_BASIS, DevFederation
from crypto import pki
from crypto.envelope import Envelopes, SigningKey, request_digest, sign_message
from crypto.tls import TlsPaths, channel_options, server_credentials
from protos.xgate.v1 import node_pb2, node_pb2_grpc
from xgate.pseudonym import Pseudonymiser, id_checksum, load_key

ENCRYPT = "/xgate.v1.AgencyNode/EncryptValues"
_serial = iter(range(1, 10**12))


def fresh_ids(n: int) -> list[str]:
    """Valid national ids nobody else uses: probing budgets are real, so good checks never repeat a person."""
    out = []
    for _ in range(n):
        body = f"4399{next(_serial):013d}"
        out.append(body + id_checksum(body))
    return out


# -- credentials --------------------------------------------------------------------------------
def party_tls(fed: DevFederation, kind: str, agency: str) -> TlsPaths:
    """The real TLS files of a running party (gateway or node)."""
    base = fed.gateway_dir / "tls" if kind == "gateway" else fed.node_dir(agency) / "tls"
    return TlsPaths(
        base / f"{kind}-{agency}.cert.pem",
        base / f"{kind}-{agency}.key.pem",
        fed.ca_cert,
        fed.pki_dir / "ca" / "crl.pem",
    )


def party_signer(fed: DevFederation, kind: str, agency: str) -> SigningKey:
    base = fed.gateway_dir / "tls" if kind == "gateway" else fed.node_dir(agency) / "tls"
    return SigningKey.load(base / f"{kind}-{agency}.sign.pem")


def scratch_ca(fed: DevFederation, where: Path) -> Path:
    """A copy of the federation CA directory: issue/revoke there without touching the shared index."""
    if not where.exists():
        shutil.copytree(fed.pki_dir / "ca", where)
    return where


def issue_client(
    fed: DevFederation, scratch: Path, kind: str, agency: str, out: Path, **kwargs: Any
) -> tuple[TlsPaths, pki.Issued]:
    issued = pki.issue(scratch, kind, agency, out, **kwargs)
    return TlsPaths(issued.cert_path, issued.key_path, fed.ca_cert, fed.pki_dir / "ca" / "crl.pem"), issued


def revoke_in_federation(fed: DevFederation, scratch: Path, serial: int) -> None:
    """Revoke a scratch-issued serial and publish the CA-signed CRL where the nodes read it.

    The scratch index first takes in every entry of the real index, so the published CRL still
    lists whatever the federation CA revoked meanwhile.
    """
    ca = pki.load_ca(scratch)
    entries = pki._index(ca)
    by_serial = {e["serial"]: e for e in entries}
    for real in json.loads((fed.pki_dir / "ca" / pki.INDEX).read_text())["certificates"]:
        if real["serial"] not in by_serial:
            entries.append(real)
        elif real["revoked_at"]:
            by_serial[real["serial"]]["revoked_at"] = real["revoked_at"]
    pki._save_index(ca, entries)
    pki.revoke(scratch, serial)
    tmp = fed.pki_dir / "ca" / "crl.pem.neg-tmp"
    shutil.copyfile(scratch / pki.CRL, tmp)
    tmp.replace(fed.pki_dir / "ca" / "crl.pem")


def pinned_directory(fed: DevFederation, scratch: Path) -> Path:
    """A CA-signed directory whose gateway/node entries are the running parties' keys."""
    ca = pki.load_ca(scratch)
    entries = pki._index(ca)
    parties = [("gateway", GATEWAY_ID)] + [("node", a) for a in fed.agencies]
    for kind, agency in parties:
        paths = party_tls(fed, kind, agency)
        cert = pki.load_cert(paths.cert)
        signer = party_signer(fed, kind, agency)
        entries.append(
            {
                "serial": str(cert.serial_number),
                "agency": agency,
                "kind": kind,
                "fingerprint": pki.fingerprint(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "revoked_at": None,
                "address": "",
                "key_id": signer.key_id,
                "ed25519_public": base64.b64encode(signer.public_raw).decode(),
            }
        )
    pki._save_index(ca, entries)
    pki._write_directory(ca, dt.datetime.now(dt.UTC))
    # Keep a copy: later issue() calls in the scratch CA re-write its federation.json.
    pinned = scratch.parent / "pinned-federation.json"
    shutil.copyfile(scratch / pki.DIRECTORY, pinned)
    return pinned


def gateway_envelopes(fed: DevFederation, directory: Path) -> Envelopes:
    """The gateway's signer and the federation keyring, as the gateway process has them."""
    return Envelopes(party_signer(fed, "gateway", GATEWAY_ID), pki.load_directory(directory, fed.ca_cert).keyring())


# -- gRPC calls to a node -------------------------------------------------------------------------
def node_channel(address: str, agency: str, tls: TlsPaths | None, creds: grpc.ChannelCredentials | None = None):  # type: ignore[no-untyped-def]
    """Sync channel to a node; tls=None and creds=None means plaintext."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if tls is None and creds is None:
        return grpc.insecure_channel(address, options=options)
    if creds is None:
        assert tls is not None
        creds = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())
    return grpc.secure_channel(address, creds, options=options + channel_options(agency))


def encrypt(address: str, agency: str, tls: TlsPaths | None, request: Any, timeout: float = 30.0) -> Any:
    with node_channel(address, agency, tls) as channel:
        return node_pb2_grpc.AgencyNodeStub(channel).EncryptValues(request, timeout=timeout)


def health(address: str, agency: str, tls: TlsPaths | None, timeout: float = 10.0) -> node_pb2.HealthResponse:
    with node_channel(address, agency, tls) as channel:
        return node_pb2_grpc.AgencyNodeStub(channel).Health(node_pb2.HealthRequest(), timeout=timeout)


def raw_call(address: str, agency: str, tls: TlsPaths, method: str, payload: bytes, timeout: float = 30.0) -> bytes:
    """A unary call with arbitrary request bytes (no protobuf serialisation on our side)."""
    with node_channel(address, agency, tls) as channel:
        return channel.unary_unary(method)(payload, timeout=timeout)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    error: str
    message: str
    raw: str


def refusal(call: Callable[[], Any]) -> Refusal:
    """Run a call that must fail; return its status code and the JSON reason (if any)."""
    try:
        call()
    except grpc.RpcError as exc:
        details = exc.details() or ""  # type: ignore[attr-defined]
        try:
            body = json.loads(details)
        except ValueError:
            body = {}
        return Refusal(exc.code(), str(body.get("error", "")), str(body.get("message", "")), details)  # type: ignore[attr-defined]
    raise AssertionError("the call was accepted; expected a refusal")


def build_request(
    fed: DevFederation,
    public_context: bytes,
    national_ids: list[str],
    elements: tuple[str, ...] = ("tax.registered_businesses",),
    mode: int = node_pb2.EXCHANGE_MODE_HE,
    request_id: str = "neg-1",
) -> node_pb2.EncryptRequest:
    from crypto.he import HE_PARAMS_ID, context_fingerprint

    pseudonymiser = Pseudonymiser(load_key(fed.pseudonym_key))
    context = node_pb2.RequestContext(
        request_id=request_id,
        requester_agency="civil_affairs",
        requester_user="cw-zhang",
        requester_role="caseworker",
        requester_tier="gold",
        purpose="dibao",
        legal_basis=LEGAL_BASIS["dibao"],
        case_id="neg-case",
        program_id="dibao",
        program_version="2026.1",
        approval_ref=DEV_APPROVAL_REF,
        approval_artefact=fed.dev_approval.read_text(),  # forwarded as the gateway forwards it
    )
    pseudonyms = [pseudonymiser.pseudonym(i) for i in national_ids]
    he = mode == node_pb2.EXCHANGE_MODE_HE
    question = {
        "program": "dibao",
        "purpose": context.purpose,
        "legal_basis": context.legal_basis,
        "case_id": context.case_id,
        "approval_ref": context.approval_ref,
        "pseudonyms": pseudonyms,
        "context_fingerprint": context_fingerprint(public_context) if he else "",
        "mode": "he" if he else "plaintext",
    }
    # cw-zhang's own statement, as the gateway forwards it (policies/check_statements.py)
    context.requester_statement = fed.signed_check("caseworker", question)["requester_statement"]
    return node_pb2.EncryptRequest(
        context=context,
        mode=mode,
        pseudonyms=pseudonyms,
        elements=[node_pb2.ElementQuery(element=e, if_missing=0) for e in elements],
        public_context=public_context if mode == node_pb2.EXCHANGE_MODE_HE else b"",
        he_params_id=HE_PARAMS_ID if mode == node_pb2.EXCHANGE_MODE_HE else "",
    )


def wait_until_listening(url: str, timeout_s: float = 15.0) -> None:
    """Poll until the port accepts TCP connections (bounded; raises if it never does)."""
    import socket
    import time

    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- variant processes ------------------------------------------------------------------------------
def write_variant_node_config(
    fed: DevFederation, agency: str, workdir: Path, directory: Path, **node_overrides: object
) -> Path:
    """A second node process for `agency` (own copy of the store, own audit log) with other settings."""
    from nodes.config import load_node_config

    workdir.mkdir(parents=True, exist_ok=True)
    config = load_node_config(fed.node_config(agency)).model_dump(mode="json", exclude_none=True)
    shutil.copyfile(config["node"]["store"], workdir / "store.sqlite")
    config["node"].update(
        listen="127.0.0.1:0",
        store=str(workdir / "store.sqlite"),
        audit_db=str(workdir / "audit.sqlite"),
        federation_directory=str(directory),
        insecure=False,
        **node_overrides,
    )
    path = workdir / "node.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def pin_gateway_directory(config_path: Path, directory: Path) -> None:
    """Point a written gateway config at the pinned directory, and give it no audit log.

    A second gateway writing its own log under the federation's log key and origin would look,
    to the nodes witnessing the real gateway's checkpoints, like a forked history.
    """
    import tomllib

    config = tomllib.loads(config_path.read_text())
    config["tls"]["federation_directory"] = str(directory)
    for name in ("audit_db", "audit_key"):
        config["gateway"].pop(name, None)
    config_path.write_text(tomli_w.dumps(config))


# -- a rogue tax node: a man in the middle holding (some of) tax's credentials ----------------------
def flip_bit(blob: bytes, position: int) -> bytes:
    data = bytearray(blob)
    data[position % len(data)] ^= 0x01
    return bytes(data)


def _ciphertext_of(element: node_pb2.ElementValues) -> bytes:
    """The ciphertext to tamper with: the pad a small check's node opens its batch with, else a chunk."""
    return element.pad_ciphertext or element.ciphertexts[0]


def _replace_ciphertext(element: node_pb2.ElementValues, blob: bytes, digest: bool = True) -> None:
    """Put `blob` where the element's ciphertext was (its pad, or its first chunk), with its digest
    updated unless `digest` is False (a MITM cannot re-sign the answer)."""
    if element.pad_ciphertext:
        element.pad_ciphertext = blob
        if digest:
            element.pad_ciphertext_sha256 = hashlib.sha256(blob).digest()
    else:
        element.ciphertexts[0] = blob
        if digest:
            element.ciphertext_sha256[0] = hashlib.sha256(blob).digest()


def _foreign_ciphertext(count: int) -> bytes:
    """A well-formed BFV ciphertext under other parameters (plain modulus 1032193, not ours)."""
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    return bytes(ts.bfv_vector(ctx, [0] * count).serialize())


class RogueTax:
    """Sits at the address the gateway believes is tax's node; forwards to the real tax node.

    It presents tax's real TLS certificate (a compromised host) and, per behaviour, rewrites the
    real answer, optionally re-signing it with tax's (or another party's) signing key.
    """

    def __init__(self, fed: DevFederation, upstream: str, server_tls: TlsPaths | None = None) -> None:
        self.fed = fed
        self.upstream = upstream
        self.behaviour = "honest"
        self.tax_key = party_signer(fed, "node", "tax")
        self.hrss_key = party_signer(fed, "node", "hrss")
        self.gateway_key = party_signer(fed, "gateway", GATEWAY_ID)
        self.previous: tuple[node_pb2.EncryptRequest, node_pb2.EncryptResponse] | None = None
        self.seen = 0
        self._gateway_tls = party_tls(fed, "gateway", GATEWAY_ID)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
        )
        handler = grpc.method_handlers_generic_handler(
            "xgate.v1.AgencyNode",
            {
                "EncryptValues": grpc.unary_unary_rpc_method_handler(
                    self._encrypt_values,
                    request_deserializer=node_pb2.EncryptRequest.FromString,
                    response_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(),
                ),
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        identity = server_tls or party_tls(fed, "node", "tax")
        self.port = self._server.add_secure_port("127.0.0.1:0", server_credentials(identity))
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)

    def _resign(self, response: Any, request: Any, key: SigningKey | None = None, **kwargs: Any) -> None:
        response.ClearField("envelope")
        sign_message(response, ENCRYPT, key or self.tax_key, request_digest(request), **kwargs)

    def _forward(self, request: node_pb2.EncryptRequest, context: grpc.ServicerContext) -> Any:
        """The real tax node's answer to the gateway's own signed request; its refusal (e.g.
        context_unknown, so the gateway resends with the context's bytes) is passed on as it is."""
        try:
            return encrypt(self.upstream, "tax", self._gateway_tls, request)
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")
            raise  # abort raises; for the type checker

    def _encrypt_values(self, request: node_pb2.EncryptRequest, context: grpc.ServicerContext) -> Any:
        self.seen += 1
        real = self._forward(request, context)
        previous, self.previous = self.previous, (request, real)
        behaviour = self.behaviour
        if behaviour == "honest":
            return real
        response = node_pb2.EncryptResponse()
        response.CopyFrom(real)
        first = response.elements[0]
        if behaviour == "flip_ciphertext_bit":  # MITM without tax's key: the signed digest no longer matches
            blob = _ciphertext_of(first)
            _replace_ciphertext(first, flip_bit(blob, len(blob) // 2), digest=False)
        elif behaviour == "corrupt_ciphertext_resigned":  # tax's key holder sends a broken ciphertext
            _replace_ciphertext(first, flip_bit(_ciphertext_of(first), 100))
            self._resign(response, request)
        elif behaviour == "foreign_he_params":
            for element in response.elements:
                slots = 8192 if element.pad_ciphertext else len(request.pseudonyms)
                _replace_ciphertext(element, _foreign_ciphertext(slots))
            self._resign(response, request)
        elif behaviour == "bound_to_other_request":
            assert previous is not None
            response.ClearField("envelope")
            sign_message(response, ENCRYPT, self.tax_key, request_digest(previous[0]))
        elif behaviour == "replay_previous_response":
            assert previous is not None
            return previous[1]
        elif behaviour == "signed_by_other_agency":
            self._resign(response, request, key=self.hrss_key)
        elif behaviour == "signed_by_gateway_key":
            self._resign(response, request, key=self.gateway_key)
        elif behaviour == "unsigned":
            response.ClearField("envelope")
        elif behaviour == "stale_signature":
            old = int((dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)).timestamp() * 1000)
            self._resign(response, request, now_ms=lambda: old)
        elif behaviour == "impostor_agency":
            response.agency = "hrss"
            self._resign(response, request)
        elif behaviour == "not_protobuf":
            return b"\xff\xff\xff\xff this is not a protobuf message"
        else:
            raise AssertionError(f"unknown behaviour {behaviour}")
        return response
