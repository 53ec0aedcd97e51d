"""Pseudonyms and node loading: bad rows are refused with row numbers, nothing half-loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.synth import write_mapping
from nodes.loader import load_file
from nodes.store import NodeStore
from policies.catalogue import load_catalogue
from xgate.errors import ConfigError, InvalidInput
from xgate.pseudonym import PSEUDONYM_RE, Pseudonymiser, id_checksum, normalise_national_id

CATALOGUE, _ = load_catalogue()
PS = Pseudonymiser(b"\x01" * 32)


def nid(body17: str) -> str:
    return body17 + id_checksum(body17)


A, B, C = nid("11010119800101001"), nid("11010119900202002"), nid("31010120000303003")


@given(st.from_regex(r"[0-9]{17}", fullmatch=True))
def test_pseudonyms_are_stable_normalised_and_keyed(body):
    national_id = nid(body)
    p = PS.pseudonym(national_id)
    assert PSEUDONYM_RE.match(p)
    assert PS.pseudonym(" " + national_id.lower() + " ") == p
    assert Pseudonymiser(b"\x02" * 32).pseudonym(national_id) != p


def test_pseudonym_is_hmac_sha256_as_pycryptodome_computes_it():
    import base64

    from Crypto.Hash import HMAC, SHA256

    reference = HMAC.new(b"\x01" * 32, A.encode(), digestmod=SHA256).digest()[:16]
    assert PS.pseudonym(A) == base64.b32encode(reference).decode().rstrip("=").lower()


def test_bad_national_ids():
    with pytest.raises(InvalidInput, match="17 digits"):
        normalise_national_id("12345")
    bad_check = A[:17] + ("0" if A[17] != "0" else "1")
    with pytest.raises(InvalidInput, match="check character"):
        normalise_national_id(bad_check)


def _setup(tmp_path: Path, rows: list[str]) -> tuple[NodeStore, Path, Path]:
    mapping = tmp_path / "tax.mapping.toml"
    write_mapping(mapping, "tax")
    data = tmp_path / "tax.csv"
    data.write_text("national_id,monthly_income,monthly_wage_income,registered_businesses\n" + "\n".join(rows) + "\n")
    return NodeStore.open(tmp_path / "tax.sqlite"), data, mapping


def test_load_good_file(tmp_path):
    store, data, mapping = _setup(tmp_path, [f"{A},1000,900,0", f"{B},0,0,2", f"{C},,,0"])
    report = load_file(store, data, mapping, CATALOGUE, PS)
    assert report.rows == 3 and report.values == 7  # C has two empty cells
    values = store.values_for("tax.monthly_income", [PS.pseudonym(A), PS.pseudonym(C), "a" * 26], if_missing=-1)
    assert values.tolist() == [1000, -1, -1]
    assert {e.element.id for e in store.elements()} == {
        "tax.monthly_income",
        "tax.monthly_wage_income",
        "tax.registered_businesses",
    }


def test_bad_rows_refuse_whole_file_with_row_numbers(tmp_path):
    store, data, mapping = _setup(
        tmp_path,
        [
            f"{A},1000,900,0",
            "12345,1,1,1",  # row 3: bad id
            f"{B},-4,0,0",  # row 4: out of range
            f"{C},12.5,0,0",  # row 5: not an integer
            f"{A},1,1,1",  # row 6: duplicate subject
        ],
    )
    with pytest.raises(InvalidInput) as info:
        load_file(store, data, mapping, CATALOGUE, PS)
    message = info.value.message
    for fragment in ("4 invalid row(s)", "row 3", "row 4", "outside 0..2000000", "row 5", "not an integer", "row 6"):
        assert fragment in message
    assert store.element_ids() == []  # nothing loaded


def test_missing_column_and_mapping_disagreement(tmp_path):
    store, data, mapping = _setup(tmp_path, [f"{A},1,1,1"])
    data.write_text("national_id,monthly_income\n" + f"{A},1\n")
    with pytest.raises(InvalidInput, match="missing column"):
        load_file(store, data, mapping, CATALOGUE, PS)
    mapping.write_text(mapping.read_text().replace("max = 2000000", "max = 9", 1))
    with pytest.raises(ConfigError, match="disagrees with the catalogue"):
        load_file(store, data, mapping, CATALOGUE, PS)


def test_core_elements_need_a_column_key(tmp_path):
    mapping = tmp_path / "household.mapping.toml"
    write_mapping(mapping, "household")
    data = tmp_path / "household.csv"
    data.write_text(f"national_id,alive_resident,deceased\n{A},1,0\n")
    store = NodeStore.open(tmp_path / "h.sqlite")
    with pytest.raises(InvalidInput, match="no column key"):
        load_file(store, data, mapping, CATALOGUE, PS)


@pytest.mark.parametrize(
    "content", [b"z" * 64, b"\xf4" * 64, b"ab" * 20], ids=["64-non-hex", "64-binary", "40-hex-digits"]
)
def test_a_malformed_pseudonym_key_file_is_a_config_error_naming_it(tmp_path: Path, content: bytes) -> None:
    """`bytes.fromhex` raised ValueError (a traceback in `node load`, `check`, `audit query`, ...)."""
    from xgate.pseudonym import load_key

    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"pseudonym key file {path}: .*64 hex digits") as info:
        load_key(path)
    assert content.decode("latin-1")[:8] not in info.value.message  # what the key file holds is never echoed
    assert len(load_key(_written(tmp_path / "good.key", b"ab" * 32))) == 32


def test_a_malformed_pseudonym_key_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from xgate.pseudonym import load_key

    monkeypatch.setenv("XGATE_PSEUDONYM_KEY", "zzzz")
    with pytest.raises(ConfigError, match="XGATE_PSEUDONYM_KEY: not hex digits"):
        load_key()


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path
