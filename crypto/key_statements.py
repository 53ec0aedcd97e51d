"""Signed key statements: a node binds a per-job X25519 agreement key to its agency, so that a
coordinator relaying the keys cannot swap in one of its own.

A statement is an ECDSA P-256 / SHA-256 signature, by the node's CA-certified SuperNode key (a
`flower-supernode` certificate of its agency, crypto/flower_keys.py), over the versioned,
length-prefixed job id, agency, agreement key and the SHA-256 of the blinded list the node sent
with the key (so that nobody can make the label holder blind another list in its place). Whoever
holds the federation CA's certificate checks it: the certificate is the CA's, valid, unrevoked and
of that agency's SuperNode, and the signature is over exactly this job, agency, key and list.
`verify_statement` raises CryptoError naming what failed; it never returns a key it could not
verify.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.peers import load_cert, verify_peer_certificate
from xgate.errors import CryptoError

VERSION = b"xgate-agreement-key-v2"  # v2: the statement covers the node's hello list too
KIND = "flower-supernode"  # the certificate a node's statement must come with


@dataclass(frozen=True)
class KeyStatement:
    """`agency` says `key` is its agreement key for one job, and `list_sha256` the digest of the
    blinded list it sent with it; `certificate` (PEM) vouches for the signer."""

    agency: str
    key: bytes
    certificate: bytes
    signature: bytes
    list_sha256: bytes


def signed_message(job_id: str, agency: str, key: bytes, list_sha256: bytes) -> bytes:
    """What is signed: version, job id, agency, key and list digest, each length-prefixed (no two
    statements collide)."""
    return _length_prefixed((VERSION, job_id.encode(), agency.encode(), key, list_sha256))


def sign_statement(
    identity: ec.EllipticCurvePrivateKey,
    certificate: bytes,
    job_id: str,
    agency: str,
    key: bytes,
    list_sha256: bytes,
) -> KeyStatement:
    """The statement for `key` and the list sent with it, signed with `identity` (the key
    `certificate` certifies)."""
    if load_cert(certificate).public_key() != identity.public_key():
        raise CryptoError("the identity certificate certifies another key than the signing key")
    signature = identity.sign(signed_message(job_id, agency, key, list_sha256), ec.ECDSA(hashes.SHA256()))
    return KeyStatement(agency, key, certificate, signature, list_sha256)


def verify_statement(
    statement: KeyStatement,
    job_id: str,
    ca: bytes | Path | x509.Certificate,
    crl: bytes | Path | x509.CertificateRevocationList | None,
    now: dt.datetime | None = None,
) -> bytes:
    """The statement's key, once its certificate is a valid, unrevoked SuperNode certificate of its
    agency from this CA and its signature covers this job, agency, key and list digest; CryptoError
    otherwise."""
    who = f"agency '{statement.agency}'"
    if not statement.certificate or not statement.signature:
        raise CryptoError(f"{who} sent its agreement key unsigned (its SuperNode needs a CA-certified key)")
    try:
        cert = load_cert(statement.certificate)
        verify_peer_certificate(cert, ca, crl, statement.agency, KIND, now=now)
    except CryptoError as exc:
        raise CryptoError(f"{who}'s agreement key comes with a certificate that fails: {exc.message}") from None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CryptoError(f"{who}'s certificate does not certify an EC key")
    try:
        signed = signed_message(job_id, statement.agency, statement.key, statement.list_sha256)
        public.verify(statement.signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(
            f"{who}'s agreement key or list is not the one its certified key signed for this job"
        ) from None
    return statement.key


ROWS_VERSION = b"xgate-aligned-rows-v1"


def rows_message(job_id: str, run_id: int, agency: str, aligned: bytes, rows: bytes) -> bytes:
    """What a node signs at PSI `partners`: that in this run of this job it holds the aligned rows
    `aligned` (label holder positions) at `rows` (positions in the list the label holder returned)."""
    digests = (hashlib.sha256(aligned).digest(), hashlib.sha256(rows).digest())
    return _length_prefixed((ROWS_VERSION, job_id.encode(), str(run_id).encode(), agency.encode(), *digests))


def _length_prefixed(fields: tuple[bytes, ...]) -> bytes:
    """Each field with its 4-byte length: no two field sequences give the same bytes."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def sign_rows(
    identity: ec.EllipticCurvePrivateKey, job_id: str, run_id: int, agency: str, aligned: bytes, rows: bytes
) -> bytes:
    return identity.sign(rows_message(job_id, run_id, agency, aligned, rows), ec.ECDSA(hashes.SHA256()))


def verify_rows(
    certificate: bytes, signature: bytes, job_id: str, run_id: int, agency: str, aligned: bytes, rows: bytes
) -> None:
    """CryptoError unless `certificate`'s key (already verified as `agency`'s, `verify_statement`)
    signed these aligned rows and positions for this run."""
    public = load_cert(certificate).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CryptoError(f"agency '{agency}''s certificate does not certify an EC key")
    try:
        public.verify(signature, rows_message(job_id, run_id, agency, aligned, rows), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(f"agency '{agency}' did not sign these aligned subjects and positions for this run") from None


SECAGG_VERSION = b"xgate-secagg-keys-v1"


@dataclass(frozen=True)
class SecAggBinding:
    """Where a node's SecAgg+ public keys are used: one setup of one round of one run of one job."""

    job_id: str
    job_digest: str
    run_id: int
    round: str  # the setup message's group id (Flower's SecAgg+ workflow: the server round)


def secagg_message(binding: SecAggBinding, agency: str, node_id: int, pk1: bytes, pk2: bytes) -> bytes:
    """What a node signs at SecAgg+ setup: that in this round of this run of this job its Flower
    node `node_id` (of `agency`) masks and shares under exactly `pk1` and `pk2`."""
    fields = (binding.job_id, binding.job_digest, str(binding.run_id), binding.round, agency, str(node_id))
    return _length_prefixed((SECAGG_VERSION, *(f.encode() for f in fields), pk1, pk2))


def sign_secagg_keys(
    identity: ec.EllipticCurvePrivateKey,
    certificate: bytes,
    binding: SecAggBinding,
    agency: str,
    node_id: int,
    pk1: bytes,
    pk2: bytes,
) -> bytes:
    """The signature, by `identity` (the key `certificate` certifies), over `secagg_message`."""
    if load_cert(certificate).public_key() != identity.public_key():
        raise CryptoError("the identity certificate certifies another key than the signing key")
    return identity.sign(secagg_message(binding, agency, node_id, pk1, pk2), ec.ECDSA(hashes.SHA256()))


def verify_secagg_keys(
    certificate: bytes,
    signature: bytes,
    binding: SecAggBinding,
    agency: str,
    node_id: int,
    pk1: bytes,
    pk2: bytes,
    ca: bytes | Path | x509.Certificate,
    crl: bytes | Path | x509.CertificateRevocationList | None,
    now: dt.datetime | None = None,
) -> str:
    """The certificate's SHA-256 fingerprint, once it is a valid, unrevoked SuperNode certificate of
    `agency` from this CA and its key signed exactly these SecAgg+ keys for this node, job, run and
    round; CryptoError naming what failed otherwise."""
    who = f"node {node_id} (listed as agency '{agency}')"
    if not certificate or not signature:
        raise CryptoError(f"{who} sent its SecAgg+ keys unsigned (its SuperNode needs a CA-certified key)")
    try:
        cert = load_cert(certificate)
        ident = verify_peer_certificate(cert, ca, crl, agency, KIND, now=now)
    except CryptoError as exc:
        raise CryptoError(f"{who}: its SecAgg+ keys come with a certificate that fails: {exc.message}") from None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CryptoError(f"{who}: its certificate does not certify an EC key")
    try:
        public.verify(signature, secagg_message(binding, agency, node_id, pk1, pk2), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(
            f"{who}: the SecAgg+ keys relayed are not the ones its certified key signed for this job, run and round"
        ) from None
    return ident.fingerprint


CONSISTENCY_VERSION = b"xgate-secagg-consistency-v1"


def consistency_message(binding: SecAggBinding, node_id: int, keys: str, active: list[int], dead: list[int]) -> bytes:
    """What a node signs before SecAgg+ unmask (Bonawitz et al. 2017, ConsistencyCheck): that in this
    round of this run of this job its Flower node `node_id`, masking under the keys whose
    fingerprint is `keys` (secagg_keys.key_fingerprint), unmasks for exactly these active and dead
    node lists (sorted)."""
    fields = (binding.job_id, binding.job_digest, str(binding.run_id), binding.round, str(node_id), keys)
    lists = (",".join(str(n) for n in sorted(active)), ",".join(str(n) for n in sorted(dead)))
    return _length_prefixed((CONSISTENCY_VERSION, *(f.encode() for f in (*fields, *lists))))


def sign_consistency(
    identity: ec.EllipticCurvePrivateKey,
    binding: SecAggBinding,
    node_id: int,
    keys: str,
    active: list[int],
    dead: list[int],
) -> bytes:
    return identity.sign(consistency_message(binding, node_id, keys, active, dead), ec.ECDSA(hashes.SHA256()))


def verify_consistency(
    certificate: bytes,
    signature: bytes,
    binding: SecAggBinding,
    node_id: int,
    keys: str,
    active: list[int],
    dead: list[int],
) -> None:
    """CryptoError unless `certificate`'s key (already verified as the node's, at share-keys) signed
    exactly these lists for this node, keys, job, run and round."""
    public = load_cert(certificate).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CryptoError(f"node {node_id}'s certificate does not certify an EC key")
    try:
        public.verify(signature, consistency_message(binding, node_id, keys, active, dead), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(f"node {node_id} did not sign these unmask lists for this job, run and round") from None
