"""The live federation keyring: picks up a re-issued directory, refuses forged or rolled-back ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crypto import pki
from crypto.directory import DirectoryKeyring
from xgate.errors import ConfigError, CryptoError


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fed(tmp_path: Path) -> tuple[Path, pki.Issued, DirectoryKeyring, Clock]:
    ca = tmp_path / "ca"
    pki.init_ca(ca, "F")
    node = pki.issue(ca, "node", "tax", tmp_path / "certs", address="127.0.0.1:7001")
    clock = Clock()
    ring = DirectoryKeyring(ca / pki.DIRECTORY, ca / pki.CA_CERT, check_every_s=1.0, clock=clock)
    return ca, node, ring, clock


def test_new_key_and_revocation_take_effect_without_restart(
    fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock], tmp_path: Path
) -> None:
    ca, node, ring, clock = fed
    assert ring.get(node.key_id) is not None and not ring.get(node.key_id).revoked  # type: ignore[union-attr]
    gw = pki.issue(ca, "gateway", "gateway", tmp_path / "certs")
    assert ring.get(gw.key_id) is None  # not looked at again before check_every_s
    clock.t = 1.5
    assert ring.get(gw.key_id) is not None
    pki.revoke(ca, node.serial)
    clock.t = 3.0
    entry = ring.get(node.key_id)
    assert entry is not None and entry.revoked


def test_forged_directory_is_refused_and_the_verified_one_stays(
    fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock],
) -> None:
    ca, node, ring, _ = fed
    doc = json.loads((ca / pki.DIRECTORY).read_text())
    doc["entries"][0]["revoked"] = True  # an attacker without the CA key cannot change anything
    (ca / pki.DIRECTORY).write_text(json.dumps(doc))
    assert ring.refresh() is False
    assert not ring.get(node.key_id).revoked  # type: ignore[union-attr]


def test_rollback_to_an_older_directory_is_refused(
    fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock], tmp_path: Path
) -> None:
    ca, node, ring, _ = fed
    old = tmp_path / "old.json"
    shutil.copy(ca / pki.DIRECTORY, old)
    pki.revoke(ca, node.serial)
    assert ring.refresh() is True and ring.get(node.key_id).revoked  # type: ignore[union-attr]
    shutil.copy(old, ca / pki.DIRECTORY)  # replay the directory from before the revocation
    assert ring.refresh() is False
    assert ring.get(node.key_id).revoked  # type: ignore[union-attr]


def test_missing_file_keeps_the_keyring_but_first_load_fails_closed(
    fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock], tmp_path: Path
) -> None:
    ca, node, ring, _ = fed
    (ca / pki.DIRECTORY).unlink()
    assert ring.refresh() is False and ring.get(node.key_id) is not None
    with pytest.raises(ConfigError):
        DirectoryKeyring(ca / pki.DIRECTORY, ca / pki.CA_CERT)


def test_keys_cannot_be_added_by_hand(fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock]) -> None:
    _, node, ring, _ = fed
    with pytest.raises(ConfigError):
        ring.add(ring.get(node.key_id))  # type: ignore[arg-type]


def test_dropped_key_is_a_crypto_error(fed: tuple[Path, pki.Issued, DirectoryKeyring, Clock]) -> None:
    _, _, ring, _ = fed
    with pytest.raises(CryptoError):
        ring.verifier("no-such-key")
