"""Private set intersection for vertical alignment: commutative blinding with X25519 (ECDH-PSI)
in a star around the label holder, and a masked membership sum so that the coordinator learns the
intersection and nothing else about who holds what.

Each node hashes its pseudonyms (SHA-256 of a job-bound label: a 32-byte X25519 u-coordinate)
and blinds them with a secret X25519 scalar drawn for the job (pyca/cryptography's `exchange`:
x([a]P)). Blinding commutes ([a][b]P = [b][a]P), so a pseudonym held by the label holder L and by
node i ends as the same doubly blinded tag whether L or i blinded last. One exchange round: every
node i finishes L's list (`finish`: its key last, then a `MATCH_BYTES` digest) and keeps it; L
finishes every node's list and returns each in a fresh secret order (`new_order`, `reorder`).

Membership (`membership`, at each node i): the coordinator hands node i its own list as L
finished it; i matches it against L's list as i finished it (`matches`) and learns which of L's
rows (shuffled, unlinkable) it holds, and where they sit in the list L returned. It answers with
one field element per L row, `share_i = rho * (held_i - 1) + r_i mod p` (`membership_share`):
rho, fresh and non-zero per row, expands a group seed that L draws and seals to each node
(X25519 agreement + HKDF + AES-GCM, `seal_seed`, bound to the roster of nodes), so the
coordinator cannot read it, nor hand a node a shorter list of peers than L sealed for; r_i are
pairwise masks between the nodes (an agreed seed per pair, expanded with SHAKE-256) that cancel in
the sum. The coordinator adds the shares (`intersect`): the sum is `-rho * (number of nodes
missing the row)`, zero exactly where every node holds it, a uniform non-zero value elsewhere. So
it learns the intersection (as positions in L's shuffled list), the list sizes, and nothing of
which node holds which other row. For the aligned rows, each node then tells where they sit in
the list L returned (`partner_rows`), and L translates those into the node's own positions
(`unshuffle`) at the split.

Who learns what beyond the intersection: node i learns how many of its subjects L holds (not
which: L's order is secret), and which of L's anonymous rows it holds. A coordinator colluding
with node i learns that much; with L, how many nodes hold each of L's rows, not which (with at
least three other nodes: the pairwise masks hide each share). The coordinator relays the
agreement keys, each signed by its agency's CA-certified SuperNode key and checked by the nodes
that use it (federated/psi_keys.py), so it cannot swap in one of its own.

Bytes per subject with K nodes (all lists of the same size): 32K at hello, 64(K-1) out to be
blinded, 16(K-1) back from L, 16(K-1) on to each node, 8(K-1) shares: 32K + 104(K-1), 712 for
K = 6. Per aligned subject: 8(K-1) for the nodes' positions in L's returned lists, then 8K to
and from L for the split, 4 per node at setup.

No curve, cipher or hash arithmetic here: pyca/cryptography and hashlib do all of it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

TAG_BYTES = 32
# A doubly blinded tag is only compared; 128 bits keep a false match among 10^5 x 10^5 pairs
# below 2^-94.
MATCH_BYTES = 16
ROW_BYTES = 4  # positions in a node's list travel as little-endian uint32
_DOMAIN = b"xgate-psi-v1\x00"
_MATCH_DOMAIN = b"xgate-psi-match-v1\x00"
# Membership shares are elements of GF(p), p the Mersenne prime 2^61 - 1, as little-endian uint64.
FIELD = (1 << 61) - 1
SHARE_BYTES = 8
SEED_BYTES = 32
_PAIR_INFO = b"xgate-psi-pair-v1\x00"
_SEAL_INFO = b"xgate-psi-seal-v1\x00"
_TRANSPORT_INFO = b"xgate-vertical-transport-v1\x00"
_NONCE_BYTES = 12


_P = 2**255 - 19
# The u-coordinates, below p, of the points of small order on Curve25519 and its twist: X25519 of
# any of them is the all-zero point, which pyca refuses ("Error computing shared key").
_LOW_ORDER = frozenset(
    u.to_bytes(TAG_BYTES, "little")
    for u in (
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P - 1,
    )
)


def check_tags(tags: bytes) -> None:
    """Refuse a blinded list holding a tag that X25519 never outputs: a u-coordinate not reduced
    modulo p (bit 255 set, or p <= u), which names the same point as a reduced one (a repeat the
    byte comparison misses), or a point of small order. So a bad list fails where it is first seen,
    naming who sent it, not at whoever blinds it next."""
    if len(tags) % TAG_BYTES:
        raise ValueError("a tag list must be a whole number of 32-byte tags")
    for i in range(0, len(tags), TAG_BYTES):
        tag = tags[i : i + TAG_BYTES]
        if tag[-1] & 0x80 or int.from_bytes(tag, "little") >= _P or tag in _LOW_ORDER:
            raise ValueError("a blinded tag is not a point X25519 outputs (unreduced or of small order)")


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


def finish(key: bytes, tags: bytes) -> bytes:
    """Apply the second and last scalar to another party's blinded list, and shorten each doubly
    blinded tag to a `MATCH_BYTES` digest for comparison (order kept)."""
    doubled = blind(key, tags)
    return b"".join(
        hashlib.sha256(_MATCH_DOMAIN + doubled[i : i + TAG_BYTES]).digest()[:MATCH_BYTES]
        for i in range(0, len(doubled), TAG_BYTES)
    )


def new_order(n: int) -> np.ndarray:
    """A secret permutation of n list positions, from OS entropy (never a job's seed)."""
    return np.random.default_rng(secrets.randbits(128)).permutation(n).astype(np.uint32)


def reorder(tags: bytes, order: np.ndarray, size: int = MATCH_BYTES) -> bytes:
    """The list with entry order[k] at position k."""
    entries = split(tags, size)
    if len(entries) != len(order):
        raise ValueError("a list and its order differ in length")
    return b"".join(entries[int(i)] for i in order)


def split(tags: bytes, size: int = TAG_BYTES) -> list[bytes]:
    return [tags[i : i + size] for i in range(0, len(tags), size)]


def count(tags: bytes, size: int = TAG_BYTES) -> int:
    """How many tags a list holds; refuses a list that is not a whole number of them."""
    if len(tags) % size:
        raise ValueError(f"a tag list must be a whole number of {size}-byte tags")
    return len(tags) // size


@dataclass(frozen=True)
class Alignment:
    """The subjects every node holds: `label_rows` are positions in the label holder's list
    (ascending; that list's order is a secret shuffle) of its `label_count`, `rows[node]` the same
    subjects' positions in another node's list, in the same order (nodes by Flower node id). As
    alignment first builds it, `rows` are positions in the secret order the label holder gave that list
    back (`partner_rows`), until the split replaces them with the label holder's translation
    (`unshuffle`)."""

    label_node: int
    label_count: int
    label_rows: list[int]
    rows: dict[int, list[int]]
    counts: dict[int, int] = field(default_factory=dict)  # each other node's list size
    keys_checked: bool = False  # every node said it verified the agreement keys it used (federated/psi_keys.py)
    signatures: dict[int, bytes] = field(default_factory=dict)  # each other node's over its `partners` answer

    def positions(self, node: int, label_rows: Sequence[int]) -> list[int]:
        """Aligned rows, given as label holder positions, as positions in `node`'s list, in the
        same order."""
        if node == self.label_node:
            return list(label_rows)
        theirs = self.rows[node]
        return [theirs[self._index[r]] for r in label_rows]

    @cached_property
    def _index(self) -> dict[int, int]:
        return {r: i for i, r in enumerate(self.label_rows)}


def agreement_public(key: bytes) -> bytes:
    """The X25519 public key of a secret from `new_key` (a node's agreement key for the job)."""
    return X25519PrivateKey.from_private_bytes(key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _agreed(key: bytes, peer: bytes, job_id: str, info: bytes) -> bytes:
    """A 32-byte secret only this node and the holder of `peer` can derive, bound to the job and to
    both public keys (in a fixed order, so both ends derive the same)."""
    if len(peer) != TAG_BYTES:
        raise ValueError("an agreement key must be 32 bytes")
    shared = X25519PrivateKey.from_private_bytes(key).exchange(X25519PublicKey.from_public_bytes(peer))
    both = b"".join(sorted((agreement_public(key), peer)))
    return HKDF(hashes.SHA256(), 32, salt=None, info=info + job_id.encode() + b"\x00" + both).derive(shared)


def transport_key(key: bytes, peer: bytes, job_id: str) -> bytes:
    """The key that seals the embeddings and gradients this node and the holder of `peer` exchange
    through the coordinator (crypto/sealed_arrays.py)."""
    return _agreed(key, peer, job_id, _TRANSPORT_INFO)


def pair_seed(key: bytes, peer: bytes, job_id: str) -> bytes:
    """The seed of the pairwise mask between this node and the holder of `peer`."""
    return _agreed(key, peer, job_id, _PAIR_INFO)


def new_seed() -> bytes:
    """The label holder's group seed for one job (OS entropy)."""
    return secrets.token_bytes(SEED_BYTES)


def roster(job_id: str, label: tuple[str, bytes], peers: Sequence[tuple[str, bytes]]) -> bytes:
    """What a group seed is sealed for: the job, the label holder and the other nodes in their
    order, each (agency, agreement key), length-prefixed and hashed. A node opens its seed only
    under the list it was sent itself, so the coordinator cannot hand one node a shorter list (no
    peers: no pairwise masks, its share in the clear) than the label holder sealed for."""
    fields = [b"xgate-psi-roster-v1", job_id.encode()]
    for agency, key in (label, *peers):
        fields += [agency.encode(), key]
    return hashlib.sha256(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).digest()


def seal_context(roster_digest: bytes, label_list: bytes, node_list: bytes, returned_list: bytes) -> bytes:
    """What one node's seed is sealed for: the roster, and the SHA-256 digests of the label holder's
    list as it left the label holder (as that node received it at `blind`), of that node's list as
    it left the node (as the label holder finished it) and of the list the label holder returned.
    Each end computes it from what it sent or received itself, so a coordinator that hands a node
    another list as the label holder's (say one row repeated, to test that row against every other
    row), or swaps the lists, leaves the seed sealed."""
    return hashlib.sha256(b"xgate-psi-seal-v1" + roster_digest + label_list + node_list + returned_list).digest()


def seal_seed(key: bytes, peer: bytes, job_id: str, seed: bytes, sealed_for: bytes) -> bytes:
    """The group seed encrypted for the holder of `peer` (AES-GCM under an agreed key, its
    `seal_context` as associated data): the coordinator relays it and cannot read it."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(_agreed(key, peer, job_id, _SEAL_INFO)).encrypt(nonce, seed, sealed_for)


def open_seed(key: bytes, sender: bytes, job_id: str, sealed: bytes, sealed_for: bytes) -> bytes:
    """The group seed sealed by the holder of `sender` for `sealed_for`; raises ValueError if it
    does not open (another key, or sealed for another roster or other lists)."""
    try:
        seed = AESGCM(_agreed(key, sender, job_id, _SEAL_INFO)).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], sealed_for
        )
    except (InvalidTag, ValueError):
        raise ValueError(
            "the label holder's group seed does not open with this node's key and the nodes and lists it was sent"
        ) from None
    if len(seed) != SEED_BYTES:
        raise ValueError("the label holder's group seed has the wrong length")
    return seed


def _stream(seed: bytes, label: bytes, n: int) -> np.ndarray:
    """n field elements expanded from a seed with SHAKE-256 (64 bits reduced mod p: bias < 2^-57)."""
    raw = np.frombuffer(hashlib.shake_256(label + seed).digest(SHARE_BYTES * n), dtype="<u8")
    return raw % np.uint64(FIELD)


def matches(label_side: bytes, returned: bytes) -> np.ndarray:
    """For each of the label holder's rows (`label_side`: its list as this node finished it), the
    position of the same subject in `returned` (this node's list as the label holder finished and
    reordered it), or -1. Refuses lists of the wrong shape or with a repeated subject."""
    where = {t: j for j, t in enumerate(split(returned, MATCH_BYTES))}
    if len(where) != count(returned, MATCH_BYTES):
        raise ValueError("the label holder returned this node's list with a subject twice")
    rows = count(label_side, MATCH_BYTES)
    return np.fromiter((where.get(t, -1) for t in split(label_side, MATCH_BYTES)), dtype=np.int64, count=rows)


def membership_share(held: np.ndarray, group_seed: bytes, me: int, pair_seeds: Mapping[int, bytes]) -> bytes:
    """This node's share for each of the label holder's rows: rho * (held - 1) + r mod p, r the sum
    of its pairwise masks, added towards peers after it and subtracted towards peers before it."""
    n = len(held)
    p = np.uint64(FIELD)
    rho = np.uint64(1) + _stream(group_seed, b"rho", n) % np.uint64(FIELD - 1)
    share = np.where(np.asarray(held, dtype=bool), np.uint64(0), p - rho).astype(np.uint64)
    for peer, seed in sorted(pair_seeds.items()):
        if peer == me:
            raise ValueError("a node has no mask with itself")
        mask = _stream(seed, b"mask", n)
        share = (share + (mask if peer > me else (p - mask) % p)) % p
    return share.astype("<u8").tobytes()


def sealed_group_seed(key: bytes, job_id: str, peers: Sequence[bytes], contexts: Sequence[bytes]) -> list[bytes]:
    """The label holder's side: one fresh group seed, sealed to each other node's agreement key for
    that node's `seal_context` (the roster of this job and the lists exchanged with that node)."""
    if len(contexts) != len(peers):
        raise ValueError("one seal context per peer")
    seed = new_seed()
    return [seal_seed(key, peer, job_id, seed, ctx) for peer, ctx in zip(peers, contexts, strict=True)]


def membership(
    key: bytes,
    job_id: str,
    label_side: bytes,
    returned: bytes,
    sealed: bytes,
    label_agree: bytes,
    agree: Sequence[bytes],
    index: int,
    sealed_for: bytes,
) -> tuple[np.ndarray, bytes]:
    """A node's side: its matches (see `matches`) and its share, from its agreement secret `key`,
    the label holder's list as it finished it, its own list as the label holder returned it, the
    sealed group seed, every other node's agreement key (`agree`, its own at `index`) and what the
    seed must have been sealed for (`seal_context`, from the roster and lists this node saw)."""
    if not 0 <= index < len(agree) or agree[index] != agreement_public(key):
        raise ValueError("the coordinator did not list this node's agreement key at its place")
    matched = matches(label_side, returned)
    seed = open_seed(key, label_agree, job_id, sealed, sealed_for)
    pairs = {j: pair_seed(key, peer, job_id) for j, peer in enumerate(agree) if j != index}
    return matched, membership_share(matched >= 0, seed, index, pairs)


def share_values(share: object, label_count: int) -> np.ndarray:
    """A node's share as field elements; refuses anything but one element per label holder row."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES * label_count:
        raise ValueError(f"the membership share is not {label_count} field elements")
    values = np.frombuffer(share, dtype="<u8")
    if values.size and int(values.max()) >= FIELD:
        raise ValueError("the membership share holds a value outside the field")
    return values


def intersect(shares: Mapping[int, bytes], label_count: int) -> list[int]:
    """The label holder's rows every node holds: where the shares sum to zero mod p. With no other
    node, every row."""
    total = np.zeros(label_count, dtype=np.uint64)
    for node in sorted(shares):
        total = (total + share_values(shares[node], label_count)) % np.uint64(FIELD)
    return [int(r) for r in np.flatnonzero(total == 0)]


def partner_rows(matched: np.ndarray, aligned: bytes) -> bytes:
    """Positions, in the list the label holder returned to this node, of the aligned rows (given as
    the label holder's positions); refuses a row this node does not hold."""
    rows = matched[rows_from_bytes(aligned, len(matched))]
    if (rows < 0).any():
        raise ValueError("an aligned subject is not among this node's matches")
    return rows_to_bytes([int(r) for r in rows])


def rows_to_bytes(rows: Sequence[int]) -> bytes:
    return np.asarray(rows, dtype="<u4").tobytes()


def unshuffle(rows: bytes, order: np.ndarray) -> bytes:
    """Positions in a list returned in `order` (see `reorder`) as positions in the list itself;
    refuses what `rows_from_bytes` refuses."""
    return rows_to_bytes([int(order[k]) for k in rows_from_bytes(rows, len(order))])


def rows_from_bytes(data: bytes, size: int) -> list[int]:
    """Positions in a list of `size` entries; refuses a ragged buffer, an out-of-range position
    and a repeated one (each names what is wrong)."""
    if len(data) % ROW_BYTES:
        raise ValueError("a row list must be a whole number of 4-byte positions")
    rows = np.frombuffer(data, dtype="<u4")
    if rows.size and int(rows.max()) >= size:
        raise ValueError(f"a row position is beyond this node's {size} subjects")
    if np.unique(rows).size != rows.size:
        raise ValueError("a row position is repeated")
    return [int(r) for r in rows]
