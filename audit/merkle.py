"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and verifiers (pure, no I/O).

Conventions (those of the transparency-dev/merkle Go verifier, which the conformance vectors encode):
leaf hashes and roots are 32 bytes, a proof must have exactly the expected length, and a consistency
proof from size 0 is rejected (it proves nothing).

Storage model: a *node* ``(level, index)`` is the hash of the complete subtree of ``2**level`` leaves
starting at leaf ``index * 2**level`` (level 0 = leaf hashes). Complete subtrees never change once
written, so a log stores each one once, at append time, and any root or proof needs only O(log n)
node lookups. Planning (which nodes are needed) is separated from fetching, so a store can fetch
all nodes of one proof in a single query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from xgate.errors import IntegrityError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_SIZE = 1 << 63  # sizes and indices are uint64 in the wire formats; refuse anything larger

NodeId = tuple[int, int]  # (level, index)
FetchNodes = Callable[[Sequence[NodeId]], Mapping[NodeId, bytes]]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_pow2_below(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2): the RFC 9162 split point k."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, O(n) hashing with O(log n) memory."""
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


class Frontier:
    """The right edge of a growing tree: one complete-subtree hash per set bit of ``size``.

    Appending a leaf returns the interior nodes it completed, which is exactly what a store must
    persist so that later proofs need no rehashing.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise IntegrityError("frontier does not match tree size")
        self.size = size
        self._hashes = list(hashes)  # highest level first
        self._levels = [lvl for lvl in range(size.bit_length() - 1, -1, -1) if size >> lvl & 1]

    @staticmethod
    def node_ids(size: int) -> list[NodeId]:
        """Nodes whose hashes form the frontier of a tree of ``size`` leaves (highest first)."""
        out: list[NodeId] = []
        offset = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out.append((level, offset >> level))
                offset += 1 << level
        return out

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self._hashes))

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the completed interior nodes as (level, index, hash)."""
        if len(leaf) != HASH_SIZE:
            raise IntegrityError("leaf hash must be 32 bytes")
        self._hashes.append(leaf)
        self._levels.append(0)
        self.size += 1
        created: list[tuple[int, int, bytes]] = []
        while len(self._levels) >= 2 and self._levels[-1] == self._levels[-2]:
            right = self._hashes.pop()
            left = self._hashes.pop()
            level = self._levels.pop() + 1
            self._levels[-1] = level
            h = node_hash(left, right)
            self._hashes.append(h)
            created.append((level, (self.size >> level) - 1, h))
        return created

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc


def subtree_nodes(start: int, end: int) -> list[NodeId]:
    """Complete subtrees covering leaves [start, end), left to right.

    Valid for every range RFC 9162 recursion produces (start aligned to the next power of two
    at or above end - start): their MTH is the right fold of these nodes.
    """
    out: list[NodeId] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _materialise(ranges: Sequence[tuple[int, int]], fetch: FetchNodes) -> list[bytes]:
    plans = [subtree_nodes(a, b) for a, b in ranges]
    wanted = sorted({n for plan in plans for n in plan})
    got = fetch(wanted) if wanted else {}
    missing = [n for n in wanted if n not in got]
    if missing:
        raise IntegrityError(f"{len(missing)} tree node(s) missing from storage", first_missing=list(missing[0]))
    return [_fold([got[n] for n in plan]) for plan in plans]


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= MAX_SIZE:
        raise IntegrityError(f"{name} is out of range")


def root_plan(size: int) -> list[NodeId]:
    return subtree_nodes(0, size)


def root_from_nodes(size: int, fetch: FetchNodes) -> bytes:
    _check_size("tree size", size)
    return EMPTY_ROOT if size == 0 else _materialise([(0, size)], fetch)[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PATH(index, D[0:size]) (RFC 9162 2.1.3.1), leaf to root."""
    _check_size("tree size", size)
    _check_size("leaf index", index)
    if index >= size:
        raise IntegrityError("leaf index is not below tree size", index=index, size=size)
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_pow2_below(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PROOF(old, D[0:new]) (RFC 9162 2.1.4.1)."""
    _check_size("old size", old)
    _check_size("new size", new)
    if old == 0:
        raise IntegrityError("consistency proof from an empty tree is meaningless")
    if old > new:
        raise IntegrityError("old size is larger than new size", old=old, new=new)
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _largest_pow2_below(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, fetch: FetchNodes) -> list[bytes]:
    return _materialise(inclusion_ranges(index, size), fetch)


def consistency_proof(old: int, new: int, fetch: FetchNodes) -> list[bytes]:
    return _materialise(consistency_ranges(old, new), fetch)


def fetch_from_leaves(leaf_hashes: Sequence[bytes]) -> FetchNodes:
    """A FetchNodes over an in-memory list of leaf hashes (tests, small trees): O(n) per call."""

    def fetch(ids: Sequence[NodeId]) -> dict[NodeId, bytes]:
        out: dict[NodeId, bytes] = {}
        for level, index in ids:
            start = index << level
            chunk = leaf_hashes[start : start + (1 << level)]
            if len(chunk) == 1 << level:
                out[(level, index)] = root_of(chunk)
        return out

    return fetch


def _need_hash(name: str, value: bytes) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise IntegrityError(f"{name} must be {HASH_SIZE} bytes")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2 steps 1-5: the root implied by a leaf and its audit path."""
    _check_size("tree size", size)
    _check_size("leaf index", index)
    if index >= size:
        raise IntegrityError("leaf index is not below tree size", index=index, size=size)
    _need_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        _need_hash("proof node", p)
        if sn == 0:
            raise IntegrityError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise IntegrityError("inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise IntegrityError unless ``leaf`` is at ``index`` in the tree of ``size`` with ``root``."""
    _need_hash("root", root)
    if root_from_inclusion_proof(index, size, leaf, proof) != bytes(root):
        raise IntegrityError("inclusion proof does not lead to the root", index=index, size=size)


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:  # noqa: C901  # RFC 9162 2.1.4.2, step by step as the RFC writes it
    """Raise IntegrityError unless the tree of ``new`` leaves extends the tree of ``old`` leaves."""
    _check_size("old size", old)
    _check_size("new size", new)
    if old > new:
        raise IntegrityError("old size is larger than new size", old=old, new=new)
    if old == 0:
        raise IntegrityError("consistency proof from an empty tree is meaningless")
    if old == new:
        if proof:
            raise IntegrityError("consistency proof between equal sizes must be empty")
        if bytes(old_root) != bytes(new_root):
            raise IntegrityError("roots differ at equal tree sizes (forked history)", size=new)
        return
    _need_hash("old root", old_root)
    _need_hash("new root", new_root)
    if not proof:
        raise IntegrityError("consistency proof is empty")
    for p in proof:
        _need_hash("proof node", p)
    path = list(proof)
    if old & (old - 1) == 0:  # old tree is a complete subtree: its root is the first path element
        path.insert(0, bytes(old_root))
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise IntegrityError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise IntegrityError("consistency proof is too short")
    if fr != bytes(old_root):
        raise IntegrityError("consistency proof does not match the old root", old=old)
    if sr != bytes(new_root):
        raise IntegrityError("consistency proof does not match the new root", new=new)


def hashes_from_hex(values: Iterable[str]) -> list[bytes]:
    try:
        return [bytes.fromhex(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise IntegrityError("proof node is not hex") from exc
