"""Program files: shipped ones load; malformed ones are refused naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, CriterionKind, ProgramRegistry, load_program
from xgate.errors import ConfigError, NotFound

CATALOGUE, _ = load_catalogue()

GOOD = """
[program]
id = "pp"
version = "1"
title = "t"
requester_agencies = ["civil_affairs"]
purposes = ["dibao"]

[[criteria]]
id = "income"
kind = "sum_at_most"
threshold = 1100
terms = [{ element = "tax.monthly_income" }, { element = "hrss.monthly_pension" }]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_shipped_programs_load():
    registry = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE)
    dibao = registry.get("dibao")
    assert [c.id for c in dibao.criteria] == ["income_within_threshold", "alive_and_resident", "no_registered_business"]
    assert set(dibao.elements_by_agency()) == {"tax", "hrss", "civil_affairs", "household"}
    assert len(dibao.sha256) == 64
    with pytest.raises(NotFound):
        registry.get("nope")


def test_good_program(tmp_path):
    program = load_program(_write(tmp_path, GOOD), CATALOGUE)
    (criterion,) = program.criteria
    assert criterion.kind is CriterionKind.SUM_AT_MOST and criterion.direction == -1 and criterion.bound == 1100
    assert criterion.passes(1100) and not criterion.passes(1101)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (("threshold = 1100", 'threshold = "a lot"'), r"line 12, field 'criteria\.0\.threshold'"),
        (('kind = "sum_at_most"', 'kind = "sum_at_mostest"'), r"line 11, field 'criteria\.0\.kind'"),
        (("threshold = 1100\n", ""), "needs a threshold"),
        (('"tax.monthly_income"', '"tax.no_such_thing"'), "not in the federation catalogue"),
        (('id = "pp"', 'id = "P!"'), r"field 'program\.id'"),
        (("threshold = 1100", "threshold = 90000000"), "HE masking bound"),
        (("[[criteria]]", "[[criterion]]"), "field .criteria.: Field required"),
        (('version = "1"', 'version = "1"\nversion = "2"'), "TOML syntax error"),
    ],
)
def test_malformed_programs_are_refused_with_location(tmp_path, mutation, message):
    old, new = mutation
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_program(path, CATALOGUE)
    assert str(path) in info.value.message


def test_register_kinds_need_flags(tmp_path):
    text = GOOD.replace('kind = "sum_at_most"\nthreshold = 1100', 'kind = "in_register"').replace(
        '[{ element = "tax.monthly_income" }, { element = "hrss.monthly_pension" }]',
        '[{ element = "tax.monthly_income" }]',
    )
    with pytest.raises(ConfigError, match="needs a flag element"):
        load_program(_write(tmp_path, text), CATALOGUE)


def test_if_missing_must_be_in_range(tmp_path):
    text = GOOD.replace('{ element = "tax.monthly_income" }', '{ element = "tax.monthly_income", if_missing = -5 }')
    with pytest.raises(ConfigError, match="if_missing -5 is outside"):
        load_program(_write(tmp_path, text), CATALOGUE)


def test_duplicate_program_ids(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    with pytest.raises(ConfigError, match="also defined"):
        ProgramRegistry.load(tmp_path, CATALOGUE)
