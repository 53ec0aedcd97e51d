"""Signed mode of the policy hot reload (`signed_policies = true`): every reload verifies the bundle.

The attacks replace what is installed on disk while the reloader runs: a policy file edited after
install (tampered), the signed manifest removed or replaced by one signed with another key
(unsigned, wrongly signed), the files and manifest of an older or the same bundle copied back
(rollback, replay). Each is refused with `policy_reload_rejected` naming the reason, and the
version in force stays in force; the same edit is taken by a reloader without `ca_cert`, which is
what the protection changes. A newer CA-signed bundle installed with `install` takes effect.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from crypto import pki
from crypto.artefacts import SigningKey
from crypto.policy_bundle import MANIFEST, install, publish
from policies.consent import ConsentManagers
from policies.reload import PolicyReloader
from policies.types import AccessRequest
from tests.unit.test_policy_support import DAYTIME, copy_policies
from xgate.errors import ConfigError, CryptoError

REQUEST = AccessRequest(
    principal="ca-caseworker-bronze",
    action="check",
    resource="DataElement::tax.monthly_income",
    purpose="dibao",
    legal_basis="SAR-2014-art-12",
    case_id="C-1",
    at=DAYTIME,
)
AGREEMENT = Path("agreements") / "dibao-tax-monthly-income.cedar"
CM_KEY = SigningKey.generate("mydata", "consent_manager")


def _widen(policy_dir: Path) -> None:
    """The attacker's edit: bronze caseworkers may read tax incomes."""
    path = policy_dir / AGREEMENT
    path.write_text(path.read_text().replace('["gold", "silver"]', '["gold", "silver", "bronze"]'))


class Fed:
    def __init__(self, root: Path) -> None:
        self.root = root
        pki.init_ca(root / "ca", "test CA")
        self.ca_cert = root / "ca" / pki.CA_CERT
        self.source = copy_policies(root / "set")
        self.party = root / "party"

    def bundle(self, version: int) -> Path:
        out = self.root / f"v{version}.json"
        publish(pki.load_ca(self.root / "ca").key, self.source, version, out)
        return out


@pytest.fixture
def fed(tmp_path: Path) -> Fed:
    f = Fed(tmp_path)
    install(f.bundle(1), f.ca_cert, f.party)
    return f


def _rejected(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["error"]) for e in logs if e["event"] == "policy_reload_rejected"]


def test_a_tampered_file_is_refused_and_the_signed_version_stays(fed: Fed) -> None:
    reloader = PolicyReloader(fed.party, ca_cert=fed.ca_cert)
    before, engine = reloader.version, reloader.engine
    assert reloader.bundle_version == 1 and not reloader.decide(REQUEST).allowed
    _widen(fed.party)
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert reloader.engine is engine and reloader.version == before and not reloader.decide(REQUEST).allowed
    assert _rejected(logs) == [f"policy file {AGREEMENT.as_posix()} differs from bundle version 1"]
    entry = next(e for e in logs if e["event"] == "policy_reload_rejected")
    assert entry["bundle_version"] == 1 and entry["in_force"] == before and entry["log_level"] == "warning"
    # Without signed mode the same edit takes effect at the next poll: this is what ca_cert prevents.
    unsigned = PolicyReloader(fed.party)
    assert unsigned.decide(REQUEST).allowed


def test_unsigned_and_wrongly_signed_manifests_are_refused(fed: Fed) -> None:
    reloader = PolicyReloader(fed.party, ca_cert=fed.ca_cert)
    manifest = (fed.party / MANIFEST).read_text()
    _widen(fed.party)
    (fed.party / MANIFEST).unlink()  # unsigned: the edited files with no manifest at all
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert "holds no signed policy bundle" in _rejected(logs)[0]
    # Wrongly signed: the edited set published as a newer version by another CA's key.
    pki.init_ca(fed.root / "other", "attacker CA")
    _widen(fed.source)
    forged = fed.root / "forged.json"
    publish(pki.load_ca(fed.root / "other").key, fed.source, 9, forged)
    install(forged, fed.root / "other" / pki.CA_CERT, fed.party)  # what an attacker can write
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert "signature does not verify against the federation CA" in _rejected(logs)[0]
    assert reloader.bundle_version == 1 and not reloader.decide(REQUEST).allowed
    (fed.party / MANIFEST).write_text(manifest)
    assert not reloader.decide(REQUEST).allowed


def test_an_older_or_the_same_bundle_copied_back_is_refused_and_a_newer_one_taken(fed: Fed) -> None:
    old_copy = fed.root / "v1-as-installed"
    shutil.copytree(fed.party, old_copy)
    _widen(fed.source)
    install(fed.bundle(2), fed.ca_cert, fed.party)
    reloader = PolicyReloader(fed.party, ca_cert=fed.ca_cert)
    assert reloader.bundle_version == 2 and reloader.decide(REQUEST).allowed
    v2 = reloader.version

    shutil.copytree(old_copy, fed.party, dirs_exist_ok=True)  # rollback: v1's files and its signed manifest
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert _rejected(logs) == [
        "policy bundle version 1 is not newer than version 2 in force: refusing an older or replayed bundle"
    ]
    assert reloader.version == v2 and reloader.decide(REQUEST).allowed  # v2 stays in force

    shutil.rmtree(fed.party)
    install(fed.bundle(2), fed.ca_cert, fed.party)  # replay of the version in force (files rewritten)
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert "version 2 is not newer than version 2 in force" in _rejected(logs)[0]

    settings = fed.source / "settings.toml"  # a newer, CA-signed bundle: takes effect
    (fed.source / AGREEMENT).write_text((fed.source / AGREEMENT).read_text().replace('"bronze"]', "]"))
    settings.write_text(settings.read_text() + "\n# v3\n")
    install(fed.bundle(3), fed.ca_cert, fed.party)
    with capture_logs() as logs:
        assert reloader.check_now() is True
    assert [e["bundle_version"] for e in logs if e["event"] == "policy_reloaded"] == [3]
    assert reloader.bundle_version == 3 and reloader.last_error is None and not reloader.decide(REQUEST).allowed


def test_signed_mode_does_not_start_on_an_unsigned_or_altered_set(fed: Fed) -> None:
    with pytest.raises(CryptoError, match="holds no signed policy bundle"):
        PolicyReloader(fed.source, ca_cert=fed.ca_cert)
    _widen(fed.party)
    with pytest.raises(CryptoError, match="differs from bundle version 1"):
        PolicyReloader(fed.party, ca_cert=fed.ca_cert)


def test_signer_registry_follows_only_the_signed_file(fed: Fed) -> None:
    """consent_managers.toml edited on disk does not register a manager; the next signed bundle does."""
    reloader = PolicyReloader(fed.party, ca_cert=fed.ca_cert)
    managers = ConsentManagers(fed.party, lambda: reloader.bundle)
    before = managers.current()
    line = f'[[consent_manager]]\nname = "mydata"\npublic_key = "{base64.b64encode(CM_KEY.public_raw).decode()}"\n'
    (fed.party / "consent_managers.toml").write_text(line)
    with capture_logs() as logs:
        assert managers.current() == before  # the attacker's manager is not registered
    assert any(e["event"] == "policy_file_rejected" for e in logs)
    assert list(ConsentManagers(fed.party).current()) == [CM_KEY.key_id]  # unsigned mode would take it
    with pytest.raises(ConfigError, match="differs from the signed policy bundle version 1"):
        ConsentManagers(fed.party, lambda: reloader.bundle).current()  # nothing trusted yet: refuse

    (fed.source / "consent_managers.toml").write_text(line)  # the operator registers it: bundle v2
    install(fed.bundle(2), fed.ca_cert, fed.party)
    assert managers.current() == before  # not yet verified by the reloader
    assert reloader.check_now() is True
    assert list(managers.current()) == [CM_KEY.key_id]


def test_files_changed_while_loading_are_not_taken(fed: Fed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified, then edited while the engine reads the files: the half-read set is refused."""
    from policies import reload as reload_module

    reloader = PolicyReloader(fed.party, ca_cert=fed.ca_cert)
    before = reloader.version
    _widen(fed.source)
    v2 = fed.bundle(2)
    original = reload_module.PolicyEngine.load

    def load_then_tamper(*args: object, **kwargs: object) -> object:
        engine = original(*args, **kwargs)  # type: ignore[arg-type]
        (fed.party / "purposes.toml").write_text((fed.party / "purposes.toml").read_text() + "\n# edited\n")
        return engine

    install(v2, fed.ca_cert, fed.party)
    monkeypatch.setattr(reload_module.PolicyEngine, "load", load_then_tamper)
    with capture_logs() as logs:
        assert reloader.check_now() is False
    assert _rejected(logs) == [
        "the policy directory changed while it was loaded (policy file purposes.toml differs from bundle version 2)"
    ]
    assert reloader.version == before and reloader.bundle_version == 1
