"""A node's own secrets for training, kept beside its ledger (0600), each made once.

`label-dp.key` keys the label holder's randomized-response draws (federated/label_dp.py);
`data-digest.key` keys the digest a node attests of the data it trained on (`data_digest`), so
that nobody without the key can test a guess of the data against it offline. Concurrent
ClientApps of one node end up with the same key: a new one is linked into place atomically and
the first link wins.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from crypto import keyed_draws
from federated import datasets

LABEL_DP_KEY = "label-dp.key"
DATA_DIGEST_KEY = "data-digest.key"


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def node_key(ledger: Path, name: str) -> bytes:
    """The node's secret `name` beside its ledger, made on first use."""
    path = ledger.parent / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        write_private(fresh, keyed_draws.new_key())
        try:
            os.link(fresh, path)
        except FileExistsError:
            pass  # another ClientApp made it first: use theirs
        finally:
            fresh.unlink()
    key = path.read_bytes()
    if len(key) != keyed_draws.KEY_BYTES:
        raise ValueError(f"this node's {path.name} is damaged (not {keyed_draws.KEY_BYTES} bytes)")
    return key


def data_digest(store: Path, ledger: Path, elements: Sequence[str]) -> str:
    """What a node attests it trained on: `datasets.store_digest` keyed with its own digest key."""
    return datasets.store_digest(store, elements, node_key(ledger, DATA_DIGEST_KEY))
