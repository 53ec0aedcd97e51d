"""The loader refuses malformed extracts and mappings by file and line, never with a traceback:
cell counts, repeated header names, a UTF-8 BOM, non-UTF-8 bytes, directories, corrupt Parquet,
two columns on one element, non-ASCII or underscored integers, line numbers after blank lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.synth import write_mapping
from nodes.loader import parse_file
from policies.catalogue import Catalogue, Classification, DataElement, ElementType, load_catalogue
from xgate.errors import ConfigError, InvalidInput
from xgate.pseudonym import Pseudonymiser, id_checksum

CATALOGUE, _ = load_catalogue()
PS = Pseudonymiser(b"\x01" * 32)
HEADER = "national_id,monthly_income,monthly_wage_income,registered_businesses"
BYO = Path(__file__).resolve().parents[1] / "data" / "byo"


def nid(body17: str) -> str:
    return body17 + id_checksum(body17)


A, B, C = nid("11010119800101001"), nid("11010119900202002"), nid("31010120000303003")


@pytest.fixture
def mapping(tmp_path: Path) -> Path:
    path = tmp_path / "tax.mapping.toml"
    write_mapping(path, "tax")
    return path


def _parse(tmp_path: Path, mapping: Path, text: str | bytes, name: str = "data.csv") -> str:
    """The refusal's message (InvalidInput) for a file with this content."""
    data = tmp_path / name
    data.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InvalidInput) as info:
        parse_file(data, mapping, CATALOGUE, PS)
    return info.value.message


def test_rows_with_another_number_of_cells_than_the_header_are_refused_with_their_line(
    tmp_path: Path, mapping: Path
) -> None:
    short = _parse(tmp_path, mapping, f"{HEADER}\n{A},1,2,3\n{B},1,2\n")
    assert short == f"{tmp_path / 'data.csv'} line 3: 3 cells, the header has 4"
    long = _parse(tmp_path, mapping, f"{HEADER}\n{A},1,2,3,4\n")
    assert long.endswith("data.csv line 2: 5 cells, the header has 4")


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path, mapping: Path) -> None:
    message = _parse(tmp_path, mapping, f"{HEADER},monthly_income\n{A},1,2,3,4\n")
    assert message.endswith("data.csv line 1: the header names column 'monthly_income' twice")

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array([A]), pa.array([1]), pa.array([2])], ["national_id", "x", "x"])
    pq.write_table(table, tmp_path / "data.parquet")
    with pytest.raises(InvalidInput, match="names column 'x' twice"):
        parse_file(tmp_path / "data.parquet", mapping, CATALOGUE, PS)


def test_a_utf8_bom_does_not_hide_the_first_column(tmp_path: Path, mapping: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\n{A},1,2,3\n".encode())
    parsed = parse_file(data, mapping, CATALOGUE, PS)
    assert parsed.rows == 1 and len(parsed.values) == 3


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path: Path, mapping: Path) -> None:
    message = _parse(tmp_path, mapping, f"{HEADER}\n{A},1,2,3\n".encode() + b"\xff\xfe,1,2,3\n")
    assert message.endswith("data.csv line 3: not UTF-8 text (byte 0xff); save the file as UTF-8")


def test_a_directory_or_a_corrupt_parquet_file_is_refused_by_name(tmp_path: Path, mapping: Path) -> None:
    (tmp_path / "extract").mkdir()
    with pytest.raises(InvalidInput, match="extract is a directory"):
        parse_file(tmp_path / "extract", mapping, CATALOGUE, PS)
    message = _parse(tmp_path, mapping, b"PAR1 this is not parquet", name="data.parquet")
    assert message.startswith(f"{tmp_path / 'data.parquet'}: not a readable Parquet file (")


def test_a_mapping_feeding_one_element_twice_or_naming_a_column_twice_is_refused(tmp_path: Path, mapping: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text(f"{HEADER},other\n{A},1,2,3,4\n")
    text = mapping.read_text()
    two_on_one = tmp_path / "a.mapping.toml"
    two_on_one.write_text(text.replace('column = "monthly_wage_income"\nelement = "tax.monthly_wage_income"',
                                       'column = "other"\nelement = "tax.monthly_income"'))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_file(data, two_on_one, CATALOGUE, PS)
    assert info.value.message == (
        f"mapping {two_on_one} line 17: element 'tax.monthly_income' is fed by two columns, "
        "'monthly_income' and 'other'"
    )
    same_column = tmp_path / "b.mapping.toml"
    same_column.write_text(text.replace('column = "monthly_wage_income"', 'column = "monthly_income"'))
    with pytest.raises(ConfigError, match=r"line 16: column 'monthly_income' is mapped twice"):
        parse_file(data, same_column, CATALOGUE, PS)


@pytest.mark.parametrize("cell", ["2_6", "٤٣", "２６", "0x1a", "1e3", "+ 5"])
def test_only_ascii_integers_are_integers(tmp_path: Path, mapping: Path, cell: str) -> None:
    message = _parse(tmp_path, mapping, f"{HEADER}\n{A},{cell},2,3\n")
    assert "row 2: column 'monthly_income' is not an integer" in message


def test_signs_and_surrounding_spaces_are_still_accepted(tmp_path: Path, mapping: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text(f"{HEADER}\n{A}, 26 ,+7,-0\n")
    assert sorted(v for _, _, v in parse_file(data, mapping, CATALOGUE, PS).values) == [0, 7, 26]


def test_a_category_cell_in_another_scripts_digits_is_a_label_not_a_code(tmp_path: Path) -> None:
    catalogue, _ = load_catalogue(BYO / "catalogue.toml")
    data = tmp_path / "civil.csv"
    data.write_text(f"national_id,age,sex,marital_status,household_size\n{A},30,١,single,2\n")
    with pytest.raises(InvalidInput, match="row 2: column 'sex' holds a label that is not one of"):
        parse_file(data, BYO / "civil.mapping.toml", catalogue, PS)


def test_row_numbers_are_the_files_line_numbers(tmp_path: Path, mapping: Path) -> None:
    text = f'{HEADER}\n\n{A},1,2,3\n\n\n{B},x,2,3\n{C},"1\n2",2,3\n{nid("31010120000303004")},1,2,-1\n'
    message = _parse(tmp_path, mapping, text)
    # B is on line 6; C's record starts on line 7 and spans two lines; the last starts on line 9.
    assert "3 invalid row(s) of 4" in message
    assert "row 6: column 'monthly_income' is not an integer" in message
    assert "row 7: column 'monthly_income' is not an integer" in message
    assert "row 9: column 'registered_businesses' is outside 0..1000" in message


def _people(n: int) -> list[str]:
    return [nid(f"110101198001{i:05d}") for i in range(n)]


def test_a_stray_quote_that_swallows_whole_rows_is_refused_with_its_line_and_column(
    tmp_path: Path, mapping: Path
) -> None:
    # Line 11's note opens a quote that line 21's closes: lines 12-21 would vanish into one cell.
    lines = [f"{HEADER},note"] + [f"{p},1,2,3,ok" for p in _people(30)]
    lines[10] = lines[10].replace(",ok", ',"see file')
    lines[20] = lines[20].replace(",ok", ',call back"')
    message = _parse(tmp_path, mapping, "\n".join(lines) + "\n")
    assert message == (
        f"{tmp_path / 'data.csv'} line 11: column 'note' opens a quote that runs to line 21 "
        "and holds what look like 10 whole rows (an unbalanced quote?)"
    )


def test_quoted_newlines_in_an_unmapped_column_still_load_with_accurate_line_numbers(
    tmp_path: Path, mapping: Path
) -> None:
    a, b, c = _people(3)
    text = f'{HEADER},note\n{a},1,2,3,"called twice,\nno answer\r\n, again"\n{b},1,2,3,\n{c},x,2,3,"a\nb"\n'
    data = tmp_path / "data.csv"
    data.write_text(text[: text.index(f"{c},")])
    assert parse_file(data, mapping, CATALOGUE, PS).rows == 2
    message = _parse(tmp_path, mapping, text)
    assert "1 invalid row(s) of 3" in message and "row 6: column 'monthly_income' is not an integer" in message


def test_a_quote_left_open_at_the_end_of_the_file_is_refused_as_such(tmp_path: Path, mapping: Path) -> None:
    a, b, c = _people(3)
    # The last column: the record keeps the header's cell count, so only the open quote tells.
    message = _parse(tmp_path, mapping, f'{HEADER},note\n{a},1,2,3,ok\n{b},1,2,3,"see file\n{c},1,2,3,x\n')
    assert message == f"{tmp_path / 'data.csv'} line 3: column 'note' opens a quote that is never closed"
    message = _parse(tmp_path, mapping, f'{HEADER}\n{a},1,2,3\n"{b},1,2,3\n{c},1,2,3')
    assert message.endswith("data.csv line 3: column 'national_id' opens a quote that is never closed")
    message = _parse(tmp_path, mapping, f'{HEADER}\n{a},1,"\n2\n",3\n{b},1,2,"3\n')
    assert message.endswith("data.csv line 5: column 'registered_businesses' opens a quote that is never closed")


def _categories(tmp_path: Path) -> tuple[Catalogue, Path]:
    """A catalogue with integer-looking labels (grade) and labels differing only in case (region)."""
    elements = {"grade": ("1", "2", "3", "4"), "region": ("north", "North", "south")}
    catalogue = Catalogue(
        elements=tuple(
            DataElement(
                id=f"civil.{name}",
                agency="civil",
                type=ElementType.CATEGORY,
                unit="label",
                min=0,
                max=len(labels) - 1,
                classification=Classification.GENERAL,
                categories=labels,
            )
            for name, labels in elements.items()
        )
    )
    columns = "".join(
        f'[[columns]]\ncolumn = "{name}"\nelement = "civil.{name}"\ntype = "category"\nunit = "label"\n'
        f'min = 0\nmax = {len(labels) - 1}\nclassification = "general"\n\n'
        for name, labels in elements.items()
    )
    path = tmp_path / "civil.mapping.toml"
    path.write_text(f'[dataset]\nname = "civil_extract"\nagency = "civil"\nsubject_column = "id"\n\n{columns}')
    return catalogue, path


def _codes(tmp_path: Path, catalogue: Catalogue, mapping: Path, rows: list[str]) -> list[dict[str, int]]:
    """Each row's stored codes by column, in the file's order."""
    people = _people(len(rows))
    data = tmp_path / "civil.csv"
    data.write_text("id,grade,region\n" + "".join(f"{p},{row}\n" for p, row in zip(people, rows, strict=True)))
    values = {(e, p): v for e, p, v in parse_file(data, mapping, catalogue, PS).values}
    return [{name: values[f"civil.{name}", PS.pseudonym(p)] for name in ("grade", "region")} for p in people]


def test_integer_looking_category_labels_are_read_as_labels_never_as_codes(tmp_path: Path) -> None:
    catalogue, mapping = _categories(tmp_path)
    codes = _codes(tmp_path, catalogue, mapping, ["1,north", " 4 ,2", "2,South"])
    # "1" is the label "1" (code 0), not code 1; the region's labels are words, so "2" is its code.
    assert codes == [{"grade": 0, "region": 0}, {"grade": 3, "region": 2}, {"grade": 1, "region": 2}]
    data = tmp_path / "civil.csv"
    data.write_text(f"id,grade,region\n{_people(1)[0]},0,south\n")
    with pytest.raises(InvalidInput) as info:
        parse_file(data, mapping, catalogue, PS)
    assert (
        "row 2: column 'grade' holds a label that is not one of the catalogue's categories "
        "('1', '2', '3', '4'; its labels look like integers, so it takes no codes)"
    ) in info.value.message
    assert "unknown labels: grade='0'" in info.value.message


def test_labels_differing_only_in_case_are_matched_exactly_or_refused_as_ambiguous(tmp_path: Path) -> None:
    catalogue, mapping = _categories(tmp_path)
    codes = _codes(tmp_path, catalogue, mapping, ["1,north", "1,North", "1, SOUTH "])
    assert [c["region"] for c in codes] == [0, 1, 2]
    data = tmp_path / "civil.csv"
    a, b = _people(2)
    data.write_text(f"id,grade,region\n{a},1,south\n{b},2,NORTH\n")
    with pytest.raises(InvalidInput) as info:
        parse_file(data, mapping, catalogue, PS)
    assert info.value.message.endswith(
        "1 invalid row(s) of 2, nothing loaded: row 3: column 'region' holds 'NORTH', "
        "which matches several of the catalogue's labels ('north', 'North'): write one exactly"
    )


def test_a_quote_left_open_in_a_large_file_names_the_line_it_opens_on(tmp_path: Path, mapping: Path) -> None:
    # The cell outgrows the csv module's size limit long before the file ends.
    lines = [f"{HEADER},note"] + [f"{p},1,2,3,ok" for p in _people(5000)]
    lines[10] = lines[10].replace(",ok", ',"see file')
    message = _parse(tmp_path, mapping, "\n".join(lines) + "\n")
    assert message.startswith(f"{tmp_path / 'data.csv'} line 11: field larger than field limit (")
    assert message.endswith("(an unbalanced quote?)") and ", running to line " in message


def test_a_trailing_line_of_spaces_is_a_blank_line(tmp_path: Path, mapping: Path) -> None:
    """Review: a last line of spaces was refused as '1 cells, the header has 4', although blank
    lines are skipped."""
    data = tmp_path / "data.csv"
    data.write_text(f"{HEADER}\n{A},1,2,3\n   \n")
    assert parse_file(data, mapping, CATALOGUE, PS).rows == 1


def test_a_missing_column_names_the_header_that_differs_only_in_case_or_spaces(tmp_path: Path, mapping: Path) -> None:
    header = HEADER.replace("monthly_income", " Monthly_Income")
    message = _parse(tmp_path, mapping, f"{header}\n{A},1,2,3\n")
    assert "missing column(s) monthly_income (the header has ' Monthly_Income')" in message


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolons"), ("\t", "tabs")])
def test_a_file_separated_by_something_else_says_so(tmp_path: Path, mapping: Path, sep: str, name: str) -> None:
    """It listed every column as missing, with no hint (thirteenth session's review)."""
    hint = f"(the header is one column holding {name}: the file must be separated by commas)"
    assert hint in _parse(tmp_path, mapping, f"{HEADER.replace(',', sep)}\n{A}{sep}1{sep}2{sep}3\n")
    # A cell holding a comma (a decimal comma) splits the row: the row's cell count is refused, with the hint.
    assert hint in _parse(tmp_path, mapping, f"{HEADER.replace(',', sep)}\n{A}{sep}1,5{sep}2{sep}3\n")
