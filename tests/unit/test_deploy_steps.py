"""README's deployment commands are docs/deploy_steps.sh, which tests/deploy/ runs: the docs cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy import steps


def test_readme_block_is_the_steps_file() -> None:
    assert steps.readme_section() == steps.readme_block(), (
        "README.md's deployment block differs from docs/deploy_steps.sh; "
        "paste the output of `python -m tests.deploy.steps` between the deploy-steps markers"
    )


def test_steps_cover_a_deployment_from_pki_init_to_a_check() -> None:
    blocks = steps.parse()
    flat = [(b.host, c) for b in blocks for c in b.commands]
    assert flat[0][0] == "ca" and flat[0][1].startswith("umask 077")
    assert flat[1] == ("ca", 'xgate pki init --ca ca --name "Example federation CA"')
    assert flat[-1][0] == "client" and " xgate check --program dibao " in flat[-1][1]
    assert "--approval-ref" in flat[-1][1]
    services = [(b.host, b.commands, tuple(b.agencies) if b.per_agency else ()) for b in blocks if b.service]
    assert services == [
        ("agency", ["xgate node serve --config node.toml"], tuple(steps.AGENCIES)),
        ("gateway", ["xgate gateway serve --config gateway.toml"], ()),
        ("agency", ["xgate node supernode --config node.toml"], ("tax", "hrss")),  # the training datasets' agencies
    ]
    # ... and a remote training job submitted by the client, before the renewal and the check after it.
    submit = "XGATE_API_KEY=$(cat an-hrss.apikey) xgate train submit "
    assert any(h == "client" and c.startswith(submit) for h, c in flat)
    # Private keys never travel: no copied path names a key file other than the shared pseudonym key.
    copied = [c for _, c in flat if c.startswith("scp ")]
    secret = (".key.pem", "sign.pem", "mask.key", ".ssh.key")
    assert copied and not [c for c in copied if any(s in c for s in secret)]


def test_parse_refuses_unknown_hosts() -> None:
    with pytest.raises(ValueError, match="unknown host"):
        steps.parse("header\n\n# @ laptop\nxgate demo\n")
    with pytest.raises(ValueError, match="before the first"):
        steps.parse("header\n\nxgate demo\n")
    with pytest.raises(ValueError, match="unknown agency"):
        steps.parse("header\n\n# @ agency (only tax, medicine)\nxgate demo\n")
    with pytest.raises(ValueError, match="not per agency"):
        steps.parse("header\n\n# @ gateway (only tax)\nxgate demo\n")
    (only,) = steps.parse("header\n\n# @ ca for each agency (only hrss)\nxgate demo\n")
    assert only.per_agency and list(only.agencies) == ["hrss"]


def test_api_keys_are_written_owner_only() -> None:
    """The steps never leave an API key world-readable: a 077 umask first, and `pki add-user --out`
    (written 0600 whatever the umask) instead of a shell redirection."""
    blocks = steps.parse()
    assert blocks[0].commands[0].split("#")[0].strip() == "umask 077"
    adds = [c for b in blocks for c in b.commands if "pki add-user" in c]
    assert adds and all(" --out " in c and ">" not in c for c in adds), adds


def test_compose_setup_runs_the_steps_under_a_077_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("compose_setup", steps.REPO / "packaging" / "compose" / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    script = tmp_path / "steps.sh"
    script.write_text("header\n\n# @ ca\necho xgk_secret > cw.apikey\n")
    shim = tmp_path / "scp"
    shim.write_text("#!/bin/sh\n")
    monkeypatch.setattr(setup, "STEPS", script)
    monkeypatch.setattr(setup, "SHIM", shim)
    monkeypatch.setattr(setup, "FED", tmp_path / "fed")
    old = os.umask(0o022)
    try:
        assert setup.main() == 0
    finally:
        os.umask(old)
    assert (tmp_path / "fed" / "ca" / "cw.apikey").stat().st_mode & 0o077 == 0
