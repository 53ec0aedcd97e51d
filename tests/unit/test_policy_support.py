"""Shared helpers for the policy tests: a writable copy of the shipped policy directory."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from policies.decision import DEFAULT_POLICY_DIR

# 11:00 in Asia/Shanghai on a Monday: inside every agreement's business hours.
DAYTIME = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
NIGHT = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)  # 22:30 local

DIBAO_ELEMENTS = [
    "tax.monthly_income",
    "tax.registered_businesses",
    "hrss.monthly_pension",
    "civil_affairs.monthly_benefits",
    "household.alive_resident",
]


def copy_policies(dst: Path) -> Path:
    shutil.copytree(DEFAULT_POLICY_DIR, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.pyc"))
    return dst
