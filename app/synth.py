"""Seeded synthetic federation: five agencies' extracts over one overlapping population.

Distributions aim for realism where it matters to the checks: skewed incomes with many zeros,
retirees with pensions of very different sizes, a few deceased people still known to other
agencies, people with no record at some agencies, and a minority on social assistance, so that
every criterion of every shipped program has both passes and fails.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgate.pseudonym import id_checksum

AGENCIES = ("civil_affairs", "tax", "hrss", "household", "medical")
_REGIONS = ("110101", "110102", "110105", "310101", "310104", "440103", "440106", "510104")

# Per agency: (column, element, type, unit, min, max, classification) in catalogue terms.
COLUMNS: dict[str, tuple[tuple[str, str, str, str, int, int, str], ...]] = {
    "tax": (
        ("monthly_income", "tax.monthly_income", "int", "CNY/month", 0, 2000000, "important"),
        ("monthly_wage_income", "tax.monthly_wage_income", "int", "CNY/month", 0, 2000000, "important"),
        ("registered_businesses", "tax.registered_businesses", "int", "count", 0, 1000, "general"),
    ),
    "hrss": (
        ("monthly_pension", "hrss.monthly_pension", "int", "CNY/month", 0, 200000, "important"),
        ("contribution_months", "hrss.contribution_months", "int", "months", 0, 720, "general"),
        ("pension_elsewhere", "hrss.pension_elsewhere", "flag", "flag", 0, 1, "important"),
    ),
    "civil_affairs": (
        ("monthly_benefits", "civil_affairs.monthly_benefits", "int", "CNY/month", 0, 100000, "important"),
        ("enrolled_dibao", "civil_affairs.enrolled_dibao", "flag", "flag", 0, 1, "general"),
    ),
    "household": (
        ("alive_resident", "household.alive_resident", "flag", "flag", 0, 1, "core"),
        ("deceased", "household.deceased", "flag", "flag", 0, 1, "core"),
    ),
    "medical": (
        ("annual_claims", "medical.annual_claims", "int", "CNY/year", 0, 5000000, "important"),
        ("inpatient_days", "medical.inpatient_days", "int", "days/year", 0, 366, "important"),
    ),
}


@dataclass(frozen=True)
class Population:
    national_ids: list[str]
    columns: dict[str, dict[str, np.ndarray]]  # agency -> column -> values
    present: dict[str, np.ndarray]  # agency -> bool mask of people with a record there
    low_income: np.ndarray


def _national_ids(rng: np.random.Generator, n: int, ages: np.ndarray, male: np.ndarray) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    regions = rng.choice(_REGIONS, size=n)
    days = rng.integers(1, 29, size=n)
    months = rng.integers(1, 13, size=n)
    for i in range(n):
        while True:
            seq = int(rng.integers(0, 500)) * 2 + (1 if male[i] else 0)  # odd sequence digit: male
            body = f"{regions[i]}{2026 - int(ages[i]):04d}{months[i]:02d}{days[i]:02d}{seq:03d}"
            candidate = body + id_checksum(body)
            if candidate not in seen:
                seen.add(candidate)
                ids.append(candidate)
                break
    return ids


def generate(n: int = 100_000, seed: int = 20261123) -> Population:
    rng = np.random.default_rng(seed)
    ages = np.clip(rng.normal(46, 18, n), 18, 95).astype(int)
    male = rng.random(n) < 0.5
    retired = ages >= np.where(male, 60, 55)
    deceased = rng.random(n) < np.where(ages > 75, 0.08, 0.01)
    low_income = rng.random(n) < 0.18
    employed = ~retired & ~low_income & (rng.random(n) < 0.85)
    wage = np.where(employed, np.exp(rng.normal(8.6, 0.7, n)), 0.0)
    other = np.where(rng.random(n) < 0.15, np.exp(rng.normal(6.5, 1.2, n)), 0.0)
    other = np.where(low_income, np.minimum(other, 600), other)
    income = np.clip(wage + other, 0, 2_000_000).astype(np.int64)
    businesses = np.where(rng.random(n) < 0.08, rng.integers(1, 4, n), 0)
    rural = rng.random(n) < 0.3
    pension = np.where(
        retired & ~low_income,
        np.where(rural, rng.integers(150, 900, n), np.exp(rng.normal(8.1, 0.4, n))),
        np.where(retired, rng.integers(100, 500, n), 0),
    ).astype(np.int64)
    contribution = np.where(employed | (rng.random(n) < 0.3), rng.integers(0, 361, n), 0)
    elsewhere = (retired & (rng.random(n) < 0.02)).astype(np.int64)
    benefits = np.where(low_income & (rng.random(n) < 0.5), rng.integers(200, 900, n), 0)
    enrolled = (low_income & (rng.random(n) < 0.55)).astype(np.int64)
    resident = (~deceased & (rng.random(n) < 0.93)).astype(np.int64)
    claims = np.where(rng.random(n) < 0.6, np.exp(rng.normal(7.5, 1.3, n)), 0).clip(0, 5_000_000).astype(np.int64)
    inpatient = np.where(claims > 20_000, rng.integers(1, 40, n), 0)

    present = {
        "tax": rng.random(n) < np.where(employed | (businesses > 0), 0.98, 0.6),
        "hrss": retired | (contribution > 0) | (rng.random(n) < 0.5),
        "civil_affairs": low_income | (rng.random(n) < 0.1),
        # the household register knows every registered person (same draw: other columns unchanged)
        "household": rng.random(n) < 1.0,
        "medical": rng.random(n) < 0.9,
    }
    columns = {
        "tax": {
            "monthly_income": income,
            "monthly_wage_income": wage.astype(np.int64),
            "registered_businesses": businesses,
        },
        "hrss": {"monthly_pension": pension, "contribution_months": contribution, "pension_elsewhere": elsewhere},
        "civil_affairs": {"monthly_benefits": benefits, "enrolled_dibao": enrolled},
        "household": {"alive_resident": resident, "deceased": deceased.astype(np.int64)},
        "medical": {"annual_claims": claims, "inpatient_days": inpatient},
    }
    return Population(_national_ids(rng, n, ages, male), columns, present, low_income)


def write_mapping(path: Path, agency: str) -> None:
    lines = [
        "[dataset]",
        f'name = "{agency}_extract"',
        f'agency = "{agency}"',
        'subject_column = "national_id"',
    ]
    for column, element, typ, unit, lo, hi, cls in COLUMNS[agency]:
        lines += [
            "",
            "[[columns]]",
            f'column = "{column}"',
            f'element = "{element}"',
            f'type = "{typ}"',
            f'unit = "{unit}"',
            f"min = {lo}",
            f"max = {hi}",
            f'classification = "{cls}"',
        ]
    path.write_text("\n".join(lines) + "\n")


def write_federation(out: Path, population: Population, applicants: int = 1000, seed: int = 7) -> dict[str, Path]:
    """Write <agency>.csv + <agency>.mapping.toml per agency, and applicants.csv; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for agency in AGENCIES:
        names = [c[0] for c in COLUMNS[agency]]
        data = population.columns[agency]
        csv_path = out / f"{agency}.csv"
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["national_id", *names])
            for i in np.flatnonzero(population.present[agency]):
                writer.writerow([population.national_ids[i], *(int(data[c][i]) for c in names)])
        write_mapping(out / f"{agency}.mapping.toml", agency)
        paths[agency] = csv_path
    # Applicants: half drawn from the low-income group, so the check sees both outcomes often.
    rng = np.random.default_rng(seed)
    low = np.flatnonzero(population.low_income)
    rest = np.flatnonzero(~population.low_income)
    half = min(applicants // 2, len(low))
    chosen = np.concatenate([rng.choice(low, half, replace=False), rng.choice(rest, applicants - half, replace=False)])
    rng.shuffle(chosen)
    applicants_path = out / "applicants.csv"
    with applicants_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["national_id"])
        for i in chosen:
            writer.writerow([population.national_ids[i]])
    paths["applicants"] = applicants_path
    return paths
