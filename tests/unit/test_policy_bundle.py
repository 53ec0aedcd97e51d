"""Signed policy bundles: published by the CA, installed and verified by every party."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from crypto import pki
from crypto.policy_bundle import MANIFEST, install, publish, verify_installed
from xgate.errors import ConfigError, CryptoError

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca", "test CA")
    shutil.copytree(REPO / "policies", tmp_path / "set", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path


def _publish(fed: Path, version: int) -> Path:
    out = fed / f"bundle-v{version}.json"
    result = runner.invoke(app, ["policy", "publish", "--ca", str(fed / "ca"), "--policies", str(fed / "set"),
                                 "--version", str(version), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_publish_install_verify_and_refuse_a_rollback(fed: Path) -> None:
    ca = fed / "ca" / pki.CA_CERT
    v1 = _publish(fed, 1)
    result = runner.invoke(app, ["policy", "install", "--bundle", str(v1), "--ca-cert", str(ca), "--into",
                                 str(fed / "party")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert verify_installed(fed / "party", ca).version == 1
    assert (fed / "party" / "principals.toml").read_bytes() == (fed / "set" / "principals.toml").read_bytes()
    settings = fed / "set" / "settings.toml"
    settings.write_text(settings.read_text().replace("Asia/Shanghai", "UTC"))
    v2 = _publish(fed, 2)
    assert install(v2, ca, fed / "party").version == 2
    assert "UTC" in (fed / "party" / "settings.toml").read_text()
    with pytest.raises(ConfigError, match="not newer than the installed version 2"):
        install(v1, ca, fed / "party")  # an older bundle, however validly signed
    assert "UTC" in (fed / "party" / "settings.toml").read_text()


def test_unsigned_forged_or_foreign_bundles_are_refused(fed: Path) -> None:
    ca = fed / "ca" / pki.CA_CERT
    v1 = _publish(fed, 1)
    doc = json.loads(v1.read_text())
    unsigned = fed / "unsigned.json"
    unsigned.write_text(json.dumps({k: v for k, v in doc.items() if k != "signature"}))
    with pytest.raises(CryptoError, match="not a signed policy bundle"):
        install(unsigned, ca, fed / "party")
    forged = fed / "forged.json"  # an agreement widened after signing: content and digest changed
    name = next(n for n in doc["files"] if n.endswith(".cedar"))
    doc2 = json.loads(v1.read_text())
    doc2["files"][name] = "0" * 64
    forged.write_text(json.dumps(doc2))
    with pytest.raises(CryptoError, match="signature does not verify"):
        install(forged, ca, fed / "party")
    other = fed / "other"
    pki.init_ca(other, "other CA")
    foreign = fed / "foreign.json"
    publish(pki.load_ca(other).key, fed / "set", 5, foreign)
    with pytest.raises(CryptoError, match="does not verify against the federation CA"):
        install(foreign, ca, fed / "party")
    assert not (fed / "party" / MANIFEST).exists()


def test_an_altered_installed_set_does_not_start(fed: Path) -> None:
    """`signed_policies = true`: config check (and so `serve`) refuses a set edited after install."""
    from crypto.preflight import Problems, policy_bundle_ok

    ca = fed / "ca" / pki.CA_CERT
    install(_publish(fed, 1), ca, fed / "party")
    ok = Problems()
    assert policy_bundle_ok(ok, "node.policy_dir", fed / "party", ca) and not ok
    agreement = next((fed / "party" / "agreements").glob("*.cedar"))
    agreement.write_text(agreement.read_text().replace("context.hour >= 8", "context.hour >= 0"))
    problems = Problems()
    assert not policy_bundle_ok(problems, "node.policy_dir", fed / "party", ca)
    assert f"policy file agreements/{agreement.name} differs from bundle version 1" in problems.lines[0]
    empty = Problems()
    assert not policy_bundle_ok(empty, "node.policy_dir", fed / "set", ca)  # never installed
    assert "holds no signed policy bundle" in empty.lines[0]


def test_a_newer_bundle_that_drops_a_file_removes_it_so_the_set_still_verifies(fed: Path) -> None:
    """A file the previous bundle had and the newer one does not used to stay on disk: every later
    verification (a node's admission at each ClientApp message) refused 'not in bundle'."""
    ca = fed / "ca" / pki.CA_CERT
    extra = fed / "set" / "agreements" / "zz-temporary.cedar"
    extra.write_text('@id("temporary")\nforbid (principal, action, resource) when { false };\n')
    install(_publish(fed, 1), ca, fed / "party")
    assert (fed / "party" / "agreements" / "zz-temporary.cedar").exists()
    extra.unlink()
    assert install(_publish(fed, 2), ca, fed / "party").version == 2
    assert not (fed / "party" / "agreements" / "zz-temporary.cedar").exists()
    assert verify_installed(fed / "party", ca).version == 2


def test_an_install_that_fails_while_writing_leaves_the_installed_version_whole(
    fed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files were replaced one by one before the manifest: a write failing half-way (a full disk,
    a path that had become a directory) left v2's agreements beside v1's manifest, so every later
    verification refused and the node would not start. The new version is now written whole
    beside the old one and swapped in by renames."""
    ca = fed / "ca" / pki.CA_CERT
    install(_publish(fed, 1), ca, fed / "party")
    settings = fed / "set" / "settings.toml"
    settings.write_text(settings.read_text().replace("Asia/Shanghai", "UTC"))
    v2 = _publish(fed, 2)
    real_write = Path.write_bytes
    written: list[str] = []

    def full_disk(self: Path, data: bytes) -> int:
        written.append(self.name)
        if len(written) == 5:
            raise OSError(28, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(ConfigError, match=r"not installed, nothing changed: .*No space left"):
        install(v2, ca, fed / "party")
    monkeypatch.undo()
    assert verify_installed(fed / "party", ca).version == 1  # v1, whole
    assert "Asia/Shanghai" in (fed / "party" / "settings.toml").read_text()
    assert sorted(p.name for p in fed.iterdir() if p.name.startswith(".party")) == []  # no staging left
    assert install(v2, ca, fed / "party").version == 2


def test_an_install_replaces_a_damaged_directory_whole(fed: Path) -> None:
    """The reviewer's case: a file of the installed set replaced by a directory."""
    ca = fed / "ca" / pki.CA_CERT
    install(_publish(fed, 1), ca, fed / "party")
    (fed / "party" / "settings.toml").unlink()
    (fed / "party" / "settings.toml").mkdir()
    assert install(_publish(fed, 2), ca, fed / "party").version == 2
    assert verify_installed(fed / "party", ca).version == 2
