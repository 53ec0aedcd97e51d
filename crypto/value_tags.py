"""Value tags: a node's keyed fingerprint of each value it answers with (pure, no I/O).

The gateway's masks (crypto/masks.py) stay the same for a repeated question in one epoch, so a
repeat gives the requester no fresh sample. Keyed to the question alone they also stayed the same
when the data changed: two checks either side of a reload gave v1 - v2 = r * (d1 - d2), hence r and
the exact difference. So each node sends, beside each element's ciphertexts, one tag per subject
over the value it holds, and the gateway folds the tags of what a criterion compares into that
criterion's masks: unchanged values keep their masks, a changed value gets fresh, independent ones.

A tag is BLAKE2b (RFC 7693) keyed with the node's own secret, which the gateway never holds, over
the epoch the gateway names, the node's own period (`NODE_PERIOD_S`, from its clock), the element,
the pseudonym and the value as stored, before any clamp (for a subject it holds no record of, a
mark saying so, not the default the gateway names: two defaults would tell it whom the node holds).
So the gateway learns whether a subject's stored value changed between two checks within one node
period, and nothing about the value: it cannot try candidate values without
the node's key, and the clamps it asks for do not enter the tag (tagging the clamped value let it
ask with clamps [t, t + 1] and read where a changed value crossed t). A stored value that changed
while its clamped value stayed put is masked afresh all the same: a fresh sample of the same
comparison, counted like any check. Tags of two node periods cannot be compared, whatever epoch the
gateway names.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence

TAG_BYTES = 8  # a collision (a changed value keeping its masks) is a 2^-64 event per change
TAG_KEY_BYTES = 32
NODE_PERIOD_S = 30 * 86400  # as the shipped programs' epochs, so their boundaries coincide
_DOMAIN = b"xgate-value-tag/2"


def value_tags(
    key: bytes, epoch: int, node_period: int, element: str, pseudonyms: Sequence[str], values: Sequence[int | None]
) -> bytes:
    """TAG_BYTES per subject, in the given order, for one element's stored values (None: the node
    holds no record for that subject, tagged as such whatever default it is encrypted with)."""
    if len(key) != TAG_KEY_BYTES:
        raise ValueError(f"value tag key must be {TAG_KEY_BYTES} bytes")
    if len(pseudonyms) != len(values):
        raise ValueError("one value per pseudonym")
    if epoch < 0 or node_period < 0:
        raise ValueError("epoch and node period must not be negative")
    base = hashlib.blake2b(key=key, digest_size=TAG_BYTES)
    base.update(b"\x00".join((_DOMAIN, str(epoch).encode(), str(node_period).encode(), element.encode(), b"")))
    out = bytearray()
    for pseudonym, value in zip(pseudonyms, values, strict=True):
        h = base.copy()
        h.update(f"{pseudonym}\x00{'none' if value is None else int(value)}".encode())
        out += h.digest()
    return bytes(out)


def tag_table(
    key: bytes, epoch: int, values: Mapping[str, Sequence[int]], pseudonyms: Sequence[str], node_period: int = 0
) -> dict[str, list[bytes]]:
    """Each element's tags, one per subject, as the gateway reads them from the nodes' answers:
    for code that computes a check without nodes (benchmarks, tests)."""
    n = len(pseudonyms)
    return {e: split_tags(value_tags(key, epoch, node_period, e, pseudonyms, v), n) for e, v in values.items()}


def split_tags(blob: bytes, subjects: int) -> list[bytes]:
    """A node's tag bytes for one element as one tag per subject; ValueError on a wrong length."""
    if len(blob) != subjects * TAG_BYTES:
        raise ValueError(f"expected {subjects * TAG_BYTES} bytes of value tags, got {len(blob)}")
    return [blob[i : i + TAG_BYTES] for i in range(0, len(blob), TAG_BYTES)]


def new_tag_key() -> bytes:
    """A node's fresh value-tag key (OS CSPRNG)."""
    return secrets.token_bytes(TAG_KEY_BYTES)


__all__ = ["NODE_PERIOD_S", "TAG_BYTES", "TAG_KEY_BYTES", "new_tag_key", "split_tags", "tag_table", "value_tags"]
