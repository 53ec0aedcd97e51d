"""Configuration that explains itself: `node init`, `gateway init`, `config check`, refusing to start,
the listen address from the federation directory, `keys ...`, `add-user --principals`, every --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from app.cli import app
from crypto import pki
from crypto.policy_bundle import install, publish

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def xgate(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output  # stdout and stderr, as a terminal shows them


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def _distribute(ca: Path, home: Path) -> None:
    (home / "ca").mkdir(parents=True, exist_ok=True)
    for name in (pki.CA_CERT, pki.CRL, pki.DIRECTORY):
        shutil.copy(ca / name, home / "ca" / name)


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    """A CA, a tax node home and a gateway home in the conventional layout, with every key made."""
    ca = tmp_path / "ca"
    pki.init_ca(ca, "test CA")
    pki.issue(ca, "node", "tax", tmp_path / "tax" / "tls", address="127.0.0.1:7443")
    pki.issue(ca, "gateway", "gateway", tmp_path / "gw" / "tls")
    # The operator registers the user in the policy set, then publishes it (as docs/deploy_steps.sh).
    shutil.copytree(REPO / "policies", tmp_path / "set", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    code, out = xgate("pki", "add-user", "--users", str(tmp_path / "users.json"), "--user", "cw-new",
                      "--agency", "civil_affairs", "--role", "caseworker", "--tier", "gold",
                      "--principals", str(tmp_path / "set/principals.toml"))  # fmt: skip
    assert code == 0, out
    bundle = tmp_path / "policies-v1.json"
    publish(pki.load_ca(ca).key, tmp_path / "set", 1, bundle)
    for home in ("tax", "gw"):
        _distribute(ca, tmp_path / home)
        install(bundle, ca / pki.CA_CERT, tmp_path / home / "policies")
    assert xgate("node", "init", "--home", str(tmp_path / "tax"), "--agency", "tax")[0] == 0
    assert xgate("keys", "pseudonym", "--out", str(tmp_path / "tax/keys/pseudonym.key"))[0] == 0
    assert xgate("keys", "audit", "--out", str(tmp_path / "tax/keys/audit"))[0] == 0
    assert xgate("gateway", "init", "--home", str(tmp_path / "gw"), "--listen", "127.0.0.1:0")[0] == 0
    assert xgate("keys", "mask", "--out", str(tmp_path / "gw/keys/mask.key"))[0] == 0
    assert xgate("keys", "audit", "--out", str(tmp_path / "gw/keys/audit"))[0] == 0
    shutil.copy2(tmp_path / "users.json", tmp_path / "gw/keys/users.json")  # keeps its 0600 mode
    return tmp_path


def test_initialised_configs_pass_the_check(federation: Path) -> None:
    code, out = xgate("config", "check", str(federation / "tax/node.toml"), "--before-load")
    assert code == 0, out
    code, out = xgate("config", "check", str(federation / "gw/gateway.toml"))
    assert code == 0, out
    text = (federation / "gw/gateway.toml").read_text()
    assert '[nodes.tax]\naddress = "127.0.0.1:7443"' in text  # from the CA-signed directory
    assert "Asia/Shanghai" in text and "Asia/Shanghai" in (federation / "tax/node.toml").read_text()


def test_check_names_each_problem_on_its_own_line(federation: Path) -> None:
    home = federation / "tax"
    (home / "keys/pseudonym.key").chmod(0o644)  # a secret readable by others
    (home / "keys/audit.key.pem").unlink()  # a missing file
    shutil.copy(federation / "gw/tls/gateway-gateway.key.pem", home / "tls/node-tax.key.pem")  # wrong key
    code, out = xgate("config", "check", str(home / "node.toml"), "--before-load")
    assert code == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert any("pseudonym_key_file" in ln and "chmod 600" in ln for ln in lines), out
    assert any("node.audit_key" in ln and "No such file" in ln for ln in lines), out
    assert any("tls.key" in ln and "does not match the certificate" in ln for ln in lines), out
    assert len(lines) == 3, out


def test_check_refuses_an_unresolvable_node_and_a_foreign_certificate(federation: Path, tmp_path: Path) -> None:
    gw = federation / "gw/gateway.toml"
    gw.write_text(gw.read_text().replace("127.0.0.1:7443", "no-such-host.invalid:7443"))
    other = tmp_path / "other-ca"
    pki.init_ca(other, "another CA")
    pki.issue(other, "gateway", "gateway", tmp_path / "foreign")
    shutil.copy(tmp_path / "foreign/gateway-gateway.cert.pem", federation / "gw/tls/gateway-gateway.cert.pem")
    code, out = xgate("config", "check", str(gw))
    assert code == 1
    assert "nodes.tax.address = no-such-host.invalid:7443: host 'no-such-host.invalid' does not resolve" in out
    assert "not issued by the federation CA" in out


def test_node_listens_where_the_directory_says(federation: Path) -> None:
    from nodes.config import load_node_config
    from nodes.preflight import listen_address

    config = load_node_config(federation / "tax/node.toml")
    assert listen_address(config) == ("127.0.0.1:7443", "federation directory")
    config.node.listen = "0.0.0.0:9000"
    assert listen_address(config) == ("0.0.0.0:9000", "[node].listen")


def test_gateway_without_nodes_does_not_start(federation: Path) -> None:
    """Before: it announced "ready" and every check was a 500 (KeyError: 'tax')."""
    gw = federation / "gw/gateway.toml"
    gw.write_text(gw.read_text().split("[nodes.tax]")[0])
    proc = run_cli("gateway", "serve", "--config", str(gw), cwd=federation)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a config error
    assert '"ready"' not in proc.stdout
    assert "[nodes] is empty" in proc.stderr


def test_node_refuses_to_start_on_a_rejected_config(federation: Path) -> None:
    (federation / "tax/keys/audit.key.pem").chmod(0o640)
    proc = run_cli("node", "serve", "--config", str(federation / "tax/node.toml"), cwd=federation)
    assert proc.returncode == 2
    assert "refused by `xgate config check`" in proc.stderr
    assert "node.store" in proc.stderr and "xgate node load" in proc.stderr
    assert "node.audit_key" in proc.stderr and "chmod 600" in proc.stderr


def test_keys_are_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    for kind, out in (("pseudonym", "p.key"), ("mask", "m.key"), ("column", "c.key")):
        assert xgate("keys", kind, "--out", str(tmp_path / out))[0] == 0
        assert (tmp_path / out).stat().st_mode & 0o777 == 0o600
        before = (tmp_path / out).read_bytes()
        code, _ = xgate("keys", kind, "--out", str(tmp_path / out))
        assert code == 2 and (tmp_path / out).read_bytes() == before
    assert xgate("keys", "audit", "--out", str(tmp_path / "a"))[0] == 0
    assert (tmp_path / "a.key.pem").stat().st_mode & 0o777 == 0o600
    from xgate.pseudonym import load_key

    assert len(load_key(tmp_path / "p.key")) == 32


def test_add_user_registers_the_principal_in_one_step(federation: Path) -> None:
    from policies.loader import UsersFile, load_model

    users, _ = load_model(federation / "gw/policies/principals.toml", UsersFile, "principals")  # as installed
    assert [(u.agency, u.role, u.tier) for u in users.users if u.id == "cw-new"] == [
        ("civil_affairs", "caseworker", "gold")
    ]
    code, out = xgate("pki", "add-user", "--users", str(federation / "gw/keys/users.json"), "--user", "cw-new",
                      "--agency", "nowhere!", "--role", "caseworker", "--tier", "gold",
                      "--principals", str(federation / "set/principals.toml"))  # fmt: skip
    assert code == 2 and "agency" in out


def test_add_user_registers_the_analysts_job_signing_key(federation: Path) -> None:
    """`--job-signing-key` takes the file `xgate train keygen` printed; a wrong file is named and
    nothing is written."""
    from policies.loader import UsersFile, load_model

    printed = federation / "an.train.pub"
    code, out = xgate("train", "keygen", "--user", "an-new", "--out", str(federation / "an.train.key"))
    assert code == 0, out
    printed.write_text(out)
    base = ["pki", "add-user", "--users", str(federation / "users.json"), "--user", "an-new", "--agency", "hrss",
            "--role", "analyst", "--tier", "silver", "--out", str(federation / "an.apikey")]  # fmt: skip
    principals = federation / "set/principals.toml"
    before = principals.read_text()
    code, out = xgate(*base, "--principals", str(principals), "--job-signing-key", str(federation / "an.train.key"))
    assert code != 0 and "an.train.key" in out and principals.read_text() == before, out
    code, out = xgate(*base, "--job-signing-key", str(printed))
    assert code != 0 and "--job-signing-key needs --principals" in out, out
    code, out = xgate(*base, "--principals", str(principals), "--job-signing-key", str(printed))
    assert code == 0, out
    users, _ = load_model(principals, UsersFile, "principals")
    (entry,) = [u for u in users.users if u.id == "an-new"]
    assert entry.signing_key is not None and entry.signing_key in printed.read_text()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


def test_every_help_page_renders() -> None:
    """`xgate train submit --help` crashed on Rich markup ([[nodes]] read as a tag)."""
    root = typer.main.get_command(app)
    assert isinstance(root, click.Group)
    commands = _commands(root)
    assert ("train", "submit") in commands and ("config", "check") in commands
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output, result.exception)
    assert "[[nodes]]" in runner.invoke(app, ["train", "submit", "--help"]).output


def test_init_writes_the_training_side(federation: Path) -> None:
    """`--superlink` adds [training] on both sides; the check names the SuperNode files still missing."""
    from gateway.config import load_gateway_config
    from nodes.config import load_node_config

    code, out = xgate("gateway", "init", "--home", str(federation / "gw"), "--listen", "127.0.0.1:0",
                      "--superlink", "0.0.0.0:9092", "--force")  # fmt: skip
    assert code == 0, out
    config = load_gateway_config(federation / "gw/gateway.toml")
    assert config.training is not None and config.training.superlink_port == 9092
    # The shipped set registers no tax dataset for training: tax would refuse every job, so it is left out.
    assert config.training.nodes == []
    assert "# tax: serves no dataset registered for training" in (federation / "gw/gateway.toml").read_text()
    datasets = federation / "gw/policies/datasets.toml"  # what init reads (the check below verifies the set)
    datasets.write_text(datasets.read_text() + '\n[[datasets]]\nid = "tax.income_2025"\nagency = "tax"\n')
    code, out = xgate("gateway", "init", "--home", str(federation / "gw"), "--listen", "127.0.0.1:0",
                      "--superlink", "0.0.0.0:9092", "--force")  # fmt: skip
    config = load_gateway_config(federation / "gw/gateway.toml")
    assert config.training is not None
    assert [(n.agency, n.datasets) for n in config.training.nodes] == [("tax", ["tax.income_2025"])]
    code, out = xgate("config", "check", str(federation / "gw/gateway.toml"))
    assert code == 1
    assert "training.superlink.cert" in out and "training.nodes[tax].public_key" in out
    code, out = xgate("node", "init", "--home", str(federation / "tax"), "--agency", "tax",
                      "--superlink", "gw.example.test:9092", "--force")  # fmt: skip
    assert code == 0, out
    node = load_node_config(federation / "tax/node.toml")
    assert node.training is not None and node.training.superlink == "gw.example.test:9092"


def test_gateway_init_names_each_witness_whose_key_has_come(federation: Path) -> None:
    """The nodes witness the gateway's log once their audit keys reached it (README's deployment)."""
    from gateway.config import load_gateway_config

    gw = federation / "gw"
    init = ("gateway", "init", "--home", str(gw), "--listen", "127.0.0.1:0", "--force")
    assert xgate(*init)[0] == 0
    assert load_gateway_config(gw / "gateway.toml").nodes["tax"].witness_key is None  # not come yet
    assert '# witness_key = "ca/witness-tax.pub.pem"' in (gw / "gateway.toml").read_text()
    assert xgate("keys", "audit", "--out", str(gw / "ca" / "witness-tax"))[0] == 0  # stands for tax's audit.pub.pem
    assert xgate(*init)[0] == 0
    assert load_gateway_config(gw / "gateway.toml").nodes["tax"].witness_key == gw / "ca" / "witness-tax.pub.pem"


def test_signed_policies_require_an_installed_bundle(federation: Path) -> None:
    """init writes signed_policies = true: a policy set edited after install does not start."""
    node = federation / "tax/node.toml"
    assert "signed_policies = true" in node.read_text()
    agreement = next((federation / "tax/policies/agreements").glob("*.cedar"))
    agreement.write_text(agreement.read_text().replace("context.hour >= 8", "context.hour >= 0"))
    code, out = xgate("config", "check", str(node), "--before-load")
    assert code == 1 and f"policy file agreements/{agreement.name} differs from bundle version 1" in out
    from policies.decision import PolicyEngine

    assert PolicyEngine.load(federation / "gw/policies") is not None  # the manifest beside the set is ignored


def test_check_refuses_stores_ledgers_and_audit_databases_others_can_read(federation: Path) -> None:
    """Files holding personal data are refused (as a readable key is) when group/others may read
    them, each named with the fix; owner-only, the same files pass."""
    tax, gw = federation / "tax", federation / "gw"
    node_files = {"node.store": tax / "data/store.sqlite", "node.audit_db": tax / "data/audit.sqlite"}
    wal = tax / "data/audit.sqlite-wal"  # SQLite's journal holds the latest entries
    gw_files = {"gateway.audit_db": gw / "data/audit.sqlite", "gateway.state_dir": gw / "data/state/consents.sqlite"}
    for f in (*node_files.values(), wal, *gw_files.values()):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
        f.chmod(0o644)
    code, out = xgate("config", "check", str(tax / "node.toml"), "--before-load")
    assert code == 1
    lines = [line for line in out.splitlines() if "holds personal data" in line]
    for key, f in (*node_files.items(), ("node.audit_db", wal)):
        assert any(f"{key} = {f}:" in ln and f"chmod 600 {f}" in ln and "0644" in ln for ln in lines), out
    assert len(lines) == 3, out
    code, out = xgate("config", "check", str(gw / "gateway.toml"))
    assert code == 1
    for key, f in gw_files.items():
        assert f"{key} = {f}: holds personal data" in out and f"chmod 600 {f}" in out, out
    for f in (*node_files.values(), wal, *gw_files.values()):
        f.chmod(0o600)
    code, out = xgate("config", "check", str(tax / "node.toml"), "--before-load")
    assert code == 0, out
    code, out = xgate("config", "check", str(gw / "gateway.toml"))
    assert code == 0, out


def test_config_check_reads_a_config_saved_with_a_bom(tmp_path: Path) -> None:
    """The config loaded with a BOM but `xgate config check` refused it as "Invalid statement (at
    line 1, column 1)" (this session's review of its own BOM fix): it now checks what it says."""
    key = tmp_path / "key"
    key.write_bytes(b"\x01" * 32)
    key.chmod(0o600)
    config = tmp_path / "node.toml"
    config.write_bytes(b'\xef\xbb\xbf[node]\nagency = "tax"\nstore = "store.sqlite"\npseudonym_key_file = "key"\n')
    code, out = xgate("config", "check", str(config), "--before-load")
    assert code == 1 and "Invalid statement" not in out and "no [tls] table" in out, out


def test_check_names_a_requesters_file_that_cannot_be_used(federation: Path, tmp_path: Path) -> None:
    """A malformed requesters.toml would refuse every check at run time: `config check` names it first."""
    ca = federation / "ca"
    (federation / "set/requesters.toml").write_text('[[requester]]\nuser = "cw-new"\nagency = "civil_affairs"\n')
    bundle = tmp_path / "policies-v2.json"
    publish(pki.load_ca(ca).key, federation / "set", 2, bundle)
    for home in ("tax", "gw"):
        install(bundle, ca / pki.CA_CERT, federation / home / "policies")
    for config in ("tax/node.toml", "gw/gateway.toml"):
        code, out = xgate("config", "check", str(federation / config), "--before-load")
        assert code == 1 and "requester #1 needs exactly user, agency and public_key" in out, out


def test_publish_refuses_a_signer_registry_every_party_would_refuse(federation: Path) -> None:
    """A malformed requesters.toml (or approvers, consent managers) is named at publish, not
    discovered by every gateway and node after installing it."""
    (federation / "set/requesters.toml").write_text("[[requester]]\nuser = 'cw-new'\n")
    out = federation / "v9.json"
    code, text = xgate("policy", "publish", "--ca", str(federation / "ca"), "--policies", str(federation / "set"),
                       "--version", "9", "--out", str(out))  # fmt: skip
    assert code != 0 and "requesters.toml: requester #1 needs exactly user, agency and public_key" in text, text
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gateway", "init", "--listen", "x"], "--listen: 'x' is not host:port"),  # was int()'s ValueError
        (["gateway", "init", "--listen", "0.0.0.0:"], "--listen: '0.0.0.0:' is not host:port"),
        (["gateway", "init", "--listen", "0.0.0.0:99999"], "is not host:port"),  # was written, exit 0
        (["gateway", "init", "--listen", '0.0.0.0"\nevil = "1:8443'], "is not host:port"),
        (["gateway", "init", "--superlink", "zz"], "--superlink: 'zz' is not host:port"),
        (["node", "init", "--agency", "BAD"], "--agency: 'BAD' is not an agency id"),  # was written, exit 0
        (["node", "init", "--agency", "tax\n"], "is not an agency id"),  # `$` let a final newline through
        (["gateway", "init", "--listen", "gw:8443\n"], "is not host:port"),
        (["node", "init", "--agency", 'tax"\nevil = "1'], "is not an agency id"),
        (["node", "init", "--agency", "tax", "--superlink", "nonsense"], "--superlink: 'nonsense' is not host:port"),
    ],
)
def test_init_refuses_what_it_would_write_into_toml(tmp_path: Path, args: list[str], message: str) -> None:
    code, out = xgate(*args[:2], "--home", str(tmp_path / "home"), *args[2:])
    assert code == 1 and message in out, out
    assert not (tmp_path / "home" / "gateway.toml").exists() and not (tmp_path / "home" / "node.toml").exists()


def test_check_loads_each_key_and_file_it_calls_ok(federation: Path) -> None:
    """`config check` said ok for a users file of `[1]` (serve then answered every request 500), for
    garbage audit and witness keys (serve refused them), and for a node whose audit log was its store."""
    gw, node = federation / "gw", federation / "tax"
    (gw / "keys/users.json").write_text("[1]")
    (gw / "keys/audit.key.pem").write_bytes(b"\xf4garbage")
    code, out = xgate("config", "check", str(gw / "gateway.toml"))
    assert code == 1, out
    assert "gateway.users_file" in out and "not in" in out, out
    assert "gateway.audit_key" in out and "cannot load Ed25519 key" in out, out

    text = (node / "node.toml").read_text()
    store = next(line.split("=", 1)[1].split("#")[0].strip() for line in text.splitlines() if line.startswith("store"))
    (node / "node.toml").write_text(text.replace('audit_db = "data/audit.sqlite"', f"audit_db = {store}"))
    (node / "keys/pseudonym.key").write_bytes(b"z" * 64)
    code, out = xgate("config", "check", str(node / "node.toml"), "--before-load")
    assert code == 1, out
    assert "node.audit_db" in out and "is the store itself" in out, out
    assert "node.pseudonym_key_file" in out and "not hex digits" in out, out
