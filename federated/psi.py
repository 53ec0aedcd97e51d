"""Private set intersection for vertical alignment: commutative blinding with X25519 (ECDH-PSI).

Each node hashes its pseudonyms (SHA-256 of a job-bound label: a 32-byte X25519 u-coordinate)
and blinds them with a secret X25519 scalar drawn for the job (pyca/cryptography's `exchange`:
x([a]P)). Blinded lists travel through every other node, each applying its own scalar; since
[a][b]P = [b][a]P, a pseudonym every node holds ends as the same tag x([a_1]...[a_K] H(p)) in
every list, and nobody without all K scalars can link a tag to a pseudonym (decisional
Diffie-Hellman). The coordinator compares fully blinded tags, so it learns each node's set size
and the intersection's size, never a pseudonym; since it holds every node's list fully blinded, it
can also count the overlap of any subset of nodes (how many subjects civil and tax share, say),
which is more than the intersection's size; each node gets its own fully blinded list back
(in its own shuffled order) and learns which of its own subjects are aligned. Honest-but-curious
parties; a coordinator colluding with all K nodes learns what they know anyway.

No curve arithmetic here: X25519 from pyca/cryptography does all of it.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

TAG_BYTES = 32
_DOMAIN = b"xgate-psi-v1\x00"


def new_key() -> bytes:
    """A fresh secret scalar for one job (raw X25519 private key bytes)."""
    return X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def hash_to_u(job_id: str, pseudonym: str) -> bytes:
    return hashlib.sha256(_DOMAIN + job_id.encode() + b"\x00" + pseudonym.encode()).digest()


def blind(key: bytes, tags: bytes) -> bytes:
    """Apply this node's scalar to every 32-byte tag (order kept)."""
    if len(tags) % TAG_BYTES:
        raise ValueError("a tag list must be a whole number of 32-byte tags")
    secret = X25519PrivateKey.from_private_bytes(key)
    return b"".join(
        secret.exchange(X25519PublicKey.from_public_bytes(tags[i : i + TAG_BYTES]))
        for i in range(0, len(tags), TAG_BYTES)
    )


def first_tags(key: bytes, job_id: str, pseudonyms: list[str]) -> bytes:
    """This node's own pseudonyms, hashed and blinded once (in the given order)."""
    return blind(key, b"".join(hash_to_u(job_id, p) for p in pseudonyms))


def split(tags: bytes) -> list[bytes]:
    return [tags[i : i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES)]


def intersect(full: list[bytes]) -> list[bytes]:
    """Tags present in every node's fully blinded list, in canonical (sorted) order."""
    common = set(split(full[0]))
    for other in full[1:]:
        common &= set(split(other))
    return sorted(common)
