"""Hot reload: a valid change takes effect; an invalid one keeps the old version in force."""

from __future__ import annotations

import os
import time
from pathlib import Path

from policies.reload import PolicyReloader
from policies.types import AccessRequest
from tests.unit.test_policy_support import DAYTIME, copy_policies

REQUEST = AccessRequest(
    principal="ca-caseworker-bronze",
    action="check",
    resource="DataElement::tax.monthly_income",
    purpose="dibao",
    legal_basis="SAR-2014-art-12",
    case_id="C-1",
    at=DAYTIME,
)


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_valid_change_is_picked_up(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    reloader = PolicyReloader(root)
    before = reloader.version
    assert not reloader.decide(REQUEST).allowed  # bronze is below the agreement's tiers
    assert reloader.check_now() is False  # nothing changed

    agreement = root / "agreements" / "dibao-tax-monthly-income.cedar"
    agreement.write_text(agreement.read_text().replace('["gold", "silver"]', '["gold", "silver", "bronze"]'))
    _touch_later(agreement)
    assert reloader.check_now() is True
    assert reloader.version != before
    assert reloader.decide(REQUEST).allowed
    assert reloader.last_error is None


def test_invalid_change_keeps_old_version(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    reloader = PolicyReloader(root)
    before = reloader.version
    engine_before = reloader.engine

    broken = root / "agreements" / "broken.cedar"
    broken.write_text('@id("broken")\npermit (principal, action, resource) when { nonsense };\n')
    assert reloader.check_now() is False
    assert reloader.version == before
    assert reloader.engine is engine_before
    assert reloader.last_error is not None and "broken.cedar" in reloader.last_error

    broken.unlink()  # fixing the directory reloads again (same content: same hash)
    reloader.check_now()
    assert reloader.last_error is None
    assert reloader.version == before


def test_background_thread_reloads(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    reloader = PolicyReloader(root, interval_s=0.05).start()
    try:
        before = reloader.version
        purposes = root / "purposes.toml"
        purposes.write_text(purposes.read_text() + "\n# a comment changes the hash\n")
        deadline = time.monotonic() + 10
        while reloader.version == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reloader.version != before
    finally:
        reloader.stop()
