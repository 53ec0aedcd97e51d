"""Numbers as extracts write them: whole numbers written as decimals ("43.0", as pandas writes an
integer column with gaps), columns scaled by a mapping's `decimals` (exactly, never rounded), and
booleans in flag columns (as Parquet writes them). Every refusal names the row and the column."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodes.loader import parse_file
from policies.catalogue import load_catalogue
from xgate.errors import ConfigError, InvalidInput
from xgate.pseudonym import Pseudonymiser, id_checksum

BYO = Path(__file__).resolve().parents[1] / "data" / "byo"
CATALOGUE, _ = load_catalogue(BYO / "catalogue.toml")
PS = Pseudonymiser(b"\x02" * 32)
CIVIL = "national_id,age,sex,marital_status,household_size"
TAX = "national_id,annual_income,sector,late_filing"
INCOME_MAX = 50_000_000  # tax.annual_income's range in the catalogue: 0..50,000,000 CNY/year


def _people(n: int) -> list[str]:
    bodies = [f"1101011980{m:02d}{d:02d}{s:03d}" for m in range(1, 13) for d in range(1, 28) for s in range(1, 10)]
    return [b + id_checksum(b) for b in bodies[:n]]


def _tax_mapping(directory: Path, decimals: int) -> Path:
    """The walkthrough's tax mapping, its income column written in units of 10^-decimals CNY."""
    text = (BYO / "tax.mapping.toml").read_text()
    path = directory / "tax.mapping.toml"
    path.write_text(
        text.replace('classification = "general"\n', f'classification = "general"\ndecimals = {decimals}\n', 1)
    )
    return path


def _stored(data: Path, mapping: Path, element: str) -> list[int | None]:
    """The values stored for one element, in the file's row order (None: no value)."""
    values = {(e, p): v for e, p, v in parse_file(data, mapping, CATALOGUE, PS).values}
    people = [line.split(",")[0] for line in data.read_text().splitlines()[1:]]
    return [values.get((element, PS.pseudonym(p))) for p in people]


def _refusal(data: Path, mapping: Path) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_file(data, mapping, CATALOGUE, PS)
    return info.value.message


def _civil(tmp_path: Path, ages: list[str]) -> Path:
    data = tmp_path / "civil.csv"
    rows = [f"{p},{age},female,single,2" for p, age in zip(_people(len(ages)), ages, strict=True)]
    data.write_text("\n".join([CIVIL, *rows]) + "\n")
    return data


def _tax(tmp_path: Path, incomes: list[str], flags: list[str] | None = None) -> Path:
    data = tmp_path / "tax.csv"
    flags = flags or ["0"] * len(incomes)
    people = _people(len(incomes))
    rows = [f"{p},{i},services,{f}" for p, i, f in zip(people, incomes, flags, strict=True)]
    data.write_text("\n".join([TAX, *rows]) + "\n")
    return data


def test_whole_numbers_written_as_decimals_load_as_integers(tmp_path: Path) -> None:
    data = _civil(tmp_path, ["43.0", "26.", "+7.000", " 30.00 ", "0.0"])
    assert _stored(data, BYO / "civil.mapping.toml", "civil.age") == [43, 26, 7, 30, 0]


def test_a_fraction_in_an_integer_column_is_refused_naming_the_remedy(tmp_path: Path) -> None:
    message = _refusal(_civil(tmp_path, ["43", "43.5", "40.000001"]), BYO / "civil.mapping.toml")
    assert "2 invalid row(s) of 3" in message
    remedy = "column 'age' is not an integer (it has a fractional part; a mapping's decimals scales such a column)"
    assert f"row 3: {remedy}" in message and f"row 4: {remedy}" in message


def test_decimals_scale_a_column_exactly(tmp_path: Path) -> None:
    # Income written in thousands of CNY: 0.3 * 1000 is 300 exactly, where a float gives 300.00000000000006.
    data = _tax(tmp_path, ["23.5", "0.001", "1200", "49999.999", "0.3", "-0"])
    assert _stored(data, _tax_mapping(tmp_path, 3), "tax.annual_income") == [23_500, 1, 1_200_000, 49_999_999, 300, 0]


def test_more_places_than_decimals_are_refused_not_rounded(tmp_path: Path) -> None:
    message = _refusal(_tax(tmp_path, ["23.5004", "1.0001"]), _tax_mapping(tmp_path, 3))
    wrong = "column 'annual_income' has more decimal places than its mapping's decimals = 3"
    assert f"row 2: {wrong}" in message and f"row 3: {wrong}" in message


@pytest.mark.parametrize("cell", ["1e3", "NaN", "inf", "0x10", "1_000", "١٢", "1.2.3", "--1", ".", "9" * 65])
def test_only_ascii_decimals_are_numbers(tmp_path: Path, cell: str) -> None:
    message = _refusal(_tax(tmp_path, [cell]), _tax_mapping(tmp_path, 2))
    assert "row 2: column 'annual_income' is not a number" in message


def test_the_range_applies_to_the_scaled_value(tmp_path: Path) -> None:
    message = _refusal(_tax(tmp_path, ["50000", "50000.001"]), _tax_mapping(tmp_path, 3))
    assert message.endswith(
        f"1 invalid row(s) of 2, nothing loaded: row 3: column 'annual_income' is outside 0..{INCOME_MAX}"
    )


@settings(max_examples=60, deadline=None)
@given(value=st.integers(0, INCOME_MAX), decimals=st.integers(0, 6), padding=st.integers(0, 3))
def test_a_value_written_with_its_decimals_loads_as_itself(
    tmp_path_factory: pytest.TempPathFactory, value: int, decimals: int, padding: int
) -> None:
    whole, part = divmod(value, 10**decimals)
    cell = f"{whole}.{part:0{decimals}d}" + "0" * padding if decimals or padding else str(whole)
    directory = tmp_path_factory.mktemp("numbers")
    assert _stored(_tax(directory, [cell]), _tax_mapping(directory, decimals), "tax.annual_income") == [value]


@pytest.mark.parametrize(("column", "kind"), [("sector", "category"), ("late_filing", "flag")])
def test_decimals_on_a_category_or_flag_column_is_refused(tmp_path: Path, column: str, kind: str) -> None:
    text = (BYO / "tax.mapping.toml").read_text()
    mapping = tmp_path / "tax.mapping.toml"
    mapping.write_text(text.replace(f'column = "{column}"\n', f'column = "{column}"\ndecimals = 1\n'))
    with pytest.raises(
        ConfigError, match=rf"line \d+: column '{column}' is a {kind}; only an int column takes decimals"
    ):
        parse_file(_tax(tmp_path, ["1"]), mapping, CATALOGUE, PS)


def test_a_flag_column_takes_true_and_false_in_any_case(tmp_path: Path) -> None:
    data = _tax(tmp_path, ["1"] * 6, ["True", "false", "TRUE", "1", "0", "0.0"])
    assert _stored(data, BYO / "tax.mapping.toml", "tax.late_filing") == [1, 0, 1, 1, 0, 0]
    message = _refusal(_tax(tmp_path, ["1"] * 3, ["yes", "2", "true"]), BYO / "tax.mapping.toml")
    assert "row 2: column 'late_filing' is not a flag (0, 1, true or false)" in message
    assert "row 3: column 'late_filing' is outside 0..1" in message and "row 4" not in message


def test_parquet_floats_with_gaps_and_booleans_load(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    people = _people(3)
    table = pa.table(
        {
            "national_id": people,
            "annual_income": pa.array([23500.0, None, 0.0], pa.float64()),  # pandas' int column with a gap
            "sector": ["services", "public", "services"],
            "late_filing": pa.array([True, False, True], pa.bool_()),  # required: no gap
        }
    )
    data = tmp_path / "tax.parquet"
    pq.write_table(table, data)
    values = {(e, p): v for e, p, v in parse_file(data, BYO / "tax.mapping.toml", CATALOGUE, PS).values}
    income = [values.get(("tax.annual_income", PS.pseudonym(p))) for p in people]
    assert income == [23_500, None, 0]
    assert [values.get(("tax.late_filing", PS.pseudonym(p))) for p in people] == [1, 0, 1]


_DIGITS = st.text("0123456789", min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@example(a=("", "1" + "0" * 29, "0"), b=("", "1" + "0" * 28 + "1", "0"))  # equal to 28 digits
@given(
    a=st.tuples(st.sampled_from(["", "+", "-"]), _DIGITS, _DIGITS),
    b=st.tuples(st.sampled_from(["", "+", "-"]), _DIGITS, _DIGITS),
)
def test_cells_compare_as_numbers_by_their_exact_value(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    """`train split --column` matches "1", "1.0" and "+1.00" alike, and never two numbers that
    differ, however far down (28 significant digits, decimal's default, would merge some)."""
    import decimal

    from nodes.loader import cell_key

    left, right = f"{a[0]}{a[1]}.{a[2]}", f"{b[0]}{b[1]}.{b[2]}"
    assert (cell_key(left) == cell_key(right)) == (decimal.Decimal(left) == decimal.Decimal(right))
    assert cell_key(f" {left}0 ") == cell_key(left)
