"""AES-256-GCM column sealing: round trips, every refusal, key loading rules, crash-safe rotation."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.at_rest import (
    ColumnCipher,
    ColumnKeyring,
    blob_key_id,
    generate_key_file,
    load_key,
    rotate,
    rotate_sqlite,
)
from xgate.errors import ConfigError, CryptoError, InvalidInput

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
AAD = b"tax.monthly_income\x00p_abc"


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_round_trip_any_int64(value: int) -> None:
    c = ColumnCipher(KEY_A)
    assert c.decrypt_int(c.encrypt_int(value, AAD), AAD) == value


def test_blob_is_versioned_and_names_key() -> None:
    c = ColumnCipher(KEY_A, "k1")
    blob = c.encrypt_int(5, AAD)
    assert blob[0] == 1 and blob_key_id(blob) == "k1"
    assert c.encrypt_int(5, AAD) != blob  # fresh nonce each time


def test_value_out_of_range_refused() -> None:
    with pytest.raises(InvalidInput):
        ColumnCipher(KEY_A).encrypt_int(2**63, AAD)


def test_blob_swapped_between_rows_refused() -> None:
    c = ColumnCipher(KEY_A)
    blob = c.encrypt_int(1200, AAD)
    with pytest.raises(CryptoError, match="moved from another row"):
        c.decrypt_int(blob, b"tax.monthly_income\x00p_other")


def test_tampered_blob_refused() -> None:
    c = ColumnCipher(KEY_A)
    blob = bytearray(c.encrypt_int(1200, AAD))
    blob[-20] ^= 1
    with pytest.raises(CryptoError, match="tampered"):
        c.decrypt_int(bytes(blob), AAD)


def test_relabelled_key_id_refused() -> None:
    blob = ColumnCipher(KEY_A, "k1").encrypt_int(7, AAD)
    relabelled = blob[:2] + b"k2" + blob[4:]
    with pytest.raises(CryptoError):
        ColumnCipher(KEY_A, "k2").decrypt_int(relabelled, AAD)


def test_wrong_key_refused() -> None:
    blob = ColumnCipher(KEY_A).encrypt_int(7, AAD)
    with pytest.raises(CryptoError, match="another column key"):
        ColumnCipher(KEY_B).decrypt_int(blob, AAD)


def test_malformed_blob_refused() -> None:
    with pytest.raises(CryptoError):
        ColumnCipher(KEY_A).decrypt_int(b"\x02junk", AAD)
    with pytest.raises(CryptoError):
        ColumnCipher(KEY_A).decrypt_int(b"\x01\x03abc", AAD)


def test_short_key_refused() -> None:
    with pytest.raises(ConfigError):
        ColumnCipher(b"short")


def test_key_file_round_trip(tmp_path: Path) -> None:
    key_id = generate_key_file(tmp_path / "keys" / "column.key")
    cipher = load_key(tmp_path / "keys" / "column.key", data_dir=tmp_path / "data")
    assert cipher.key_id == key_id
    assert "column.key" not in repr(cipher) and KEY_A.hex() not in repr(cipher)


def test_key_file_inside_data_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="data directory"):
        generate_key_file(tmp_path / "data" / "column.key", data_dir=tmp_path / "data")
    generate_key_file(tmp_path / "data" / "k")  # e.g. created by hand
    with pytest.raises(ConfigError, match="data directory"):
        load_key(tmp_path / "data" / "k", data_dir=tmp_path / "data")


def test_world_readable_key_file_refused(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(tmp_path / "k")


def test_existing_key_file_not_overwritten(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "k")
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_file(tmp_path / "k")


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XGATE_COLUMN_KEY", KEY_A.hex())
    assert load_key(None).key_id == ColumnCipher(KEY_A).key_id
    monkeypatch.setenv("XGATE_COLUMN_KEY", "zz")
    with pytest.raises(ConfigError, match="not hex"):
        load_key(None)


def test_no_key_configured_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XGATE_COLUMN_KEY", raising=False)
    with pytest.raises(ConfigError, match="no column key"):
        load_key(None)


def test_keyring_reads_both_keys_writes_primary() -> None:
    old, new = ColumnCipher(KEY_A), ColumnCipher(KEY_B)
    ring = ColumnKeyring(new, old)
    assert ring.decrypt_int(old.encrypt_int(3, AAD), AAD) == 3
    assert blob_key_id(ring.encrypt_int(4, AAD)) == new.key_id
    with pytest.raises(CryptoError, match="unknown column key"):
        ColumnKeyring(new).decrypt_int(ColumnCipher(bytes(32)).encrypt_int(1, AAD), AAD)


def _db(cipher: ColumnCipher, n: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE v (element TEXT, pseudonym TEXT, value BLOB, PRIMARY KEY (element, pseudonym))")
    with conn:
        conn.executemany(
            "INSERT INTO v VALUES (?, ?, ?)",
            [("e.x", f"p{i}", cipher.encrypt_int(i * 100 - 7, f"e.x\x00p{i}".encode())) for i in range(n)],
        )
    return conn


def _rows(conn: sqlite3.Connection) -> list[tuple[tuple[str, str], bytes, bytes]]:
    return [
        ((e, p), blob, f"{e}\x00{p}".encode())
        for e, p, blob in conn.execute("SELECT element, pseudonym, value FROM v ORDER BY pseudonym")
    ]


UPDATE = "UPDATE v SET value = ? WHERE element = ? AND pseudonym = ?"


class _CrashingCipher(ColumnCipher):
    def __init__(self, key: bytes, crash_after: int) -> None:
        super().__init__(key)
        self.left = crash_after

    def encrypt_int(self, value: int, aad: bytes) -> bytes:
        if self.left == 0:
            raise RuntimeError("simulated crash")
        self.left -= 1
        return super().encrypt_int(value, aad)


def test_rotation_crash_halfway_loses_nothing_and_rerun_completes() -> None:
    old, new = ColumnCipher(KEY_A), ColumnCipher(KEY_B)
    conn = _db(old, 40)
    before = [old.decrypt_int(b, aad) for _, b, aad in _rows(conn)]
    with pytest.raises(RuntimeError):
        rotate_sqlite(conn, _rows(conn), old, _CrashingCipher(KEY_B, crash_after=20), UPDATE)
    assert {blob_key_id(b) for _, b, _ in _rows(conn)} == {old.key_id}  # nothing half-written
    assert rotate_sqlite(conn, _rows(conn), old, new, UPDATE) == 40
    assert [new.decrypt_int(b, aad) for _, b, aad in _rows(conn)] == before


def test_rotation_crash_during_writes_rolls_back() -> None:
    old, new = ColumnCipher(KEY_A), ColumnCipher(KEY_B)
    conn = _db(old, 10)
    rows = _rows(conn)
    rows[5] = (("e.x", "missing"), rows[5][1], rows[5][2])  # update matches no row -> abort mid-write
    with pytest.raises(CryptoError, match="exactly one row"):
        rotate_sqlite(conn, rows, old, new, UPDATE)
    assert {blob_key_id(b) for _, b, _ in _rows(conn)} == {old.key_id}


def test_rotation_resumes_from_mixed_state() -> None:
    old, new = ColumnCipher(KEY_A), ColumnCipher(KEY_B)
    conn = _db(old, 30)
    before = [old.decrypt_int(b, aad) for _, b, aad in _rows(conn)]
    rotate_sqlite(conn, _rows(conn)[:12], old, new, UPDATE)  # an earlier run committed a first batch
    assert rotate_sqlite(conn, _rows(conn), ColumnKeyring(new, old), new, UPDATE) == 18
    assert [new.decrypt_int(b, aad) for _, b, aad in _rows(conn)] == before


def test_rotation_refuses_tampered_blob_before_writing() -> None:
    old, new = ColumnCipher(KEY_A), ColumnCipher(KEY_B)
    rows = [(1, old.encrypt_int(1, b"a"), b"a"), (2, old.encrypt_int(2, b"b"), b"wrong-aad")]
    with pytest.raises(CryptoError):
        rotate(rows, old, new)


def test_blobs_interoperate_with_pycryptodome_gcm() -> None:
    """The blob tail is plain AES-256-GCM: pycryptodome opens ours and we open pycryptodome's."""
    from Crypto.Cipher import AES

    key = bytes(range(32))
    cipher = ColumnCipher(key, key_id="k1")
    header = bytes([1, 2]) + b"k1"
    aad = header + b"\x00" + b"tax.monthly_income|p"
    blob = cipher.encrypt_int(-1234567, b"tax.monthly_income|p")
    nonce, ct, tag = blob[len(header) : len(header) + 12], blob[len(header) + 12 : -16], blob[-16:]
    theirs = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    theirs.update(aad)
    assert int.from_bytes(theirs.decrypt_and_verify(ct, tag), "big", signed=True) == -1234567

    nonce = bytes(12)
    sealer = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    sealer.update(aad)
    ct, tag = sealer.encrypt_and_digest((987654).to_bytes(8, "big", signed=True))
    assert cipher.decrypt_int(header + nonce + ct + tag, b"tax.monthly_income|p") == 987654


def test_truncated_blob_is_refused() -> None:
    cipher = ColumnCipher(bytes(32), key_id="k1")
    blob = cipher.encrypt_int(5, b"a")
    with pytest.raises(CryptoError):
        cipher.decrypt_int(blob[:-1], b"a")
