"""Which PSI agreement keys a node accepts: one per agency of the job, each signed for this job by
that agency's CA-certified SuperNode key (crypto/key_statements.py).

The coordinator relays every node's agreement key (federated/psi.py). Unchecked, it could hand a
node a key of its own in place of a peer's and then open the group seed sealed to it, or learn a
pair's mask seed, and read which nodes hold which rows. So the label holder checks the keys it
seals to, and every other node the keys it agrees with: with the federation CA at hand every key
must carry a valid statement of the agency it is listed for, each agency listed once, at least
the job's min_nodes less one peers, and the label holder's must be the agency the job names. The
seed is sealed for that exact roster (federated/psi.py `roster`), so a node sent another list
cannot open it. A node without a CA (an insecure federation) checks the listing only.

Each statement also covers the digest of the blinded list its node sent at hello, and the label
holder blinds only lists that match their statements (`check_lists`). Otherwise a coordinator could
put candidates, each blinded with a scalar of its own, in a node's place and read from the finished
list which of them the label holder holds (tests/attacks/test_psi_candidate_list.py).

Which agencies take part is the coordinator's to say (an agency's node may hold any element), so
a coordinator with a certified accomplice agency could list it as one more node. The accomplice
then opens its own group seed and, with the shares the coordinator sees, learns per label holder
row how many nodes miss it (as a coordinator colluding with the label holder would), never which.
Revocation is checked when the node has the CA's CRL (`crl`); a node's CRL must stay fresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.flower_keys import load_private_key
from crypto.key_statements import KeyStatement, sign_rows, sign_statement, verify_rows, verify_statement
from federated import psi
from federated.node import NodeConfig


@dataclass(frozen=True)
class Identity:
    """A node's SuperNode key (OpenSSH, as Flower reads it) and its `flower-supernode` certificate."""

    key: Path
    certificate: Path


@dataclass(frozen=True)
class Trust:
    """The federation CA's certificate and, when given, its CRL."""

    ca_cert: Path
    crl: Path | None = None


def statement_fields(job_id: str, agency: str, key: bytes, tags: bytes, identity: Identity | None) -> dict[str, bytes]:
    """What `hello` sends beside its agreement key and its blinded list `tags`: the statement
    signed over both, or nothing to sign with."""
    if identity is None:
        return {"agree_cert": b"", "agree_sig": b""}
    certificate = identity.certificate.read_bytes()
    signed = sign_statement(load_private_key(identity.key), certificate, job_id, agency, key, list_digest(tags))
    return {"agree_cert": signed.certificate, "agree_sig": signed.signature}


def list_digest(tags: bytes) -> bytes:
    """The digest of a node's hello list, as its statement covers it."""
    return hashlib.sha256(tags).digest()


def relayed(cfg: Mapping[str, Any], prefix: str = "") -> list[KeyStatement]:
    """The statements a coordinator's message lists (`agencies`, `agree`, `agree_cert`, `agree_sig`,
    `agree_list`: the digests of the nodes' hello lists)."""
    names = ("agencies", "agree", "agree_cert", "agree_sig", "agree_list")
    columns = [cfg.get(f"{prefix}{name}") for name in names]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns if isinstance(c, list)}) != 1:
        raise ValueError("the coordinator sent a malformed list of agreement keys")
    agencies, keys, certs, sigs, lists = (list(c) for c in columns if isinstance(c, list))
    if not all(isinstance(a, str) for a in agencies) or not all(
        isinstance(b, bytes) for b in (*keys, *certs, *sigs, *lists)
    ):
        raise ValueError("the coordinator sent a malformed list of agreement keys")
    return [KeyStatement(*row) for row in zip(agencies, keys, certs, sigs, lists, strict=True)]


def check_lists(statements: Sequence[KeyStatement], lists: Sequence[bytes]) -> None:
    """The label holder blinds only the lists the listed nodes sent at hello (each statement, once
    verified, covers its node's list): a coordinator passing a list of candidates off as a node's
    would otherwise learn which candidates the label holder holds."""
    if len(lists) != len(statements):
        raise ValueError(f"the coordinator sent {len(lists)} lists for {len(statements)} nodes")
    for statement, tags in zip(statements, lists, strict=True):
        if list_digest(tags) != statement.list_sha256:
            raise ValueError(f"the coordinator sent a list as agency '{statement.agency}''s that it did not send")


def rows_signature(
    job_id: str, run_id: int, agency: str, aligned: bytes, rows: bytes, identity: Identity | None
) -> bytes:
    """A node's signature over the aligned rows it was asked about and its answer (`partners`), or
    nothing without a certified key."""
    if identity is None:
        return b""
    return sign_rows(load_private_key(identity.key), job_id, run_id, agency, aligned, rows)


def check_partners(
    job_id: str,
    run_id: int,
    peers: Sequence[tuple[str, bytes]],
    aligned: bytes,
    partners: Sequence[bytes],
    signatures: object,
) -> None:
    """The label holder translates positions only for the aligned rows every other node signed, each
    with its own answer: `peers` are (agency, certificate) as it verified them at `blind`, in the
    order of `partners`. Unchecked, a coordinator colluding with one node could name rows outside
    the intersection as aligned and learn which of that node's subjects the label holder holds."""
    if not isinstance(signatures, list) or len(signatures) != len(peers) or len(partners) != len(peers):
        raise ValueError("the coordinator sent no signature of every other node over the aligned rows")
    for (agency, certificate), rows, signature in zip(peers, partners, signatures, strict=True):
        if not isinstance(signature, bytes):
            raise ValueError(f"the coordinator sent no signature of agency '{agency}' over the aligned rows")
        verify_rows(certificate, signature, job_id, run_id, agency, aligned, rows)


def label_key(job_id: str, statements: Sequence[KeyStatement], label_holder: str, trust: Trust | None) -> bytes:
    """The label holder's key, listed alone and (with `trust`) verified as the job's label holder's."""
    if [s.agency for s in statements] != [label_holder]:
        listed = [s.agency for s in statements]
        raise ValueError(f"the coordinator listed {listed} as the label holder, the job names '{label_holder}'")
    return _verified(job_id, statements, trust)[0]


def peer_keys(
    job_id: str, statements: Sequence[KeyStatement], label_holder: str, trust: Trust | None, min_peers: int
) -> list[bytes]:
    """The other nodes' keys in their listed order: at least `min_peers` (the job's min_nodes less
    the label holder), each agency once, the label holder not among them, and (with `trust`) each
    verified as the agency it is listed for."""
    listed = [s.agency for s in statements]
    if len(listed) < min_peers:
        raise ValueError(f"the coordinator listed {len(listed)} other nodes, the job needs at least {min_peers}")
    if len(set(listed)) != len(listed):
        raise ValueError(f"the coordinator listed an agency's agreement key twice: {sorted(listed)}")
    if label_holder in listed:
        raise ValueError(f"the coordinator listed the label holder '{label_holder}' among the other nodes")
    return _verified(job_id, statements, trust)


def roster(job_id: str, label_holder: str, label_key: bytes, statements: Sequence[KeyStatement]) -> bytes:
    """`psi.roster` of the label holder and the listed peers, in their listed order."""
    return psi.roster(job_id, (label_holder, label_key), [(s.agency, s.key) for s in statements])


def _verified(job_id: str, statements: Sequence[KeyStatement], trust: Trust | None) -> list[bytes]:
    if trust is None:
        return [s.key for s in statements]
    return [verify_statement(s, job_id, trust.ca_cert, trust.crl) for s in statements]


def identity_of(nc: NodeConfig) -> Identity | None:
    if nc.identity_key is None or nc.identity_cert is None:
        return None
    return Identity(nc.identity_key, nc.identity_cert)


def trust_of(nc: NodeConfig) -> Trust | None:
    return None if nc.ca_cert is None else Trust(nc.ca_cert, nc.crl)
