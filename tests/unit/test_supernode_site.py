"""`xgate node supernode`: the [training] table, its refusals (one line each), the flower-supernode
command line, and the supervisor (restart on exit, stop forwarded to the process group)."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from typer.testing import CliRunner

from crypto import flower_keys as fk
from crypto import pki
from federated import datasets, supernode_site
from federated.node import node_config
from federated.supernode_site import next_backoff, run_supernode, supernode_command
from nodes.cli import app
from nodes.config import load_node_config
from nodes.supernode import site_from_config
from xgate.errors import ConfigError


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca_dir = tmp_path_factory.mktemp("ca") / "ca"
    pki.init_ca(ca_dir, "test CA")
    return ca_dir


def write_site(root: Path, ca: Path, **training: Any) -> Path:
    """A node directory with a store, a policy directory, a certified key and node.toml (relative paths)."""
    subjects, cols, _ = datasets.synthetic_population(5)
    datasets.write_store(root / "store.sqlite", "synth", subjects, cols)
    (root / "policies").mkdir(exist_ok=True)
    key = fk.certify_supernode_key(ca, "region0", root / "keys")
    cfg = {
        "node": {"agency": "region0", "store": "store.sqlite"},
        "training": {
            "superlink": "gw.example.org:9092",
            "ca_cert": str(ca / pki.CA_CERT),
            "supernode_key": "keys/supernode-region0.ssh.key",
            "supernode_cert": f"keys/{key.certificate.name}" if key.certificate else None,
            "ledger": "fl-ledger.sqlite",
            "policy_dir": "policies",
            **training,
        },
    }
    cfg["training"] = {k: v for k, v in cfg["training"].items() if v is not None}
    (root / "node.toml").write_text(tomli_w.dumps(cfg))
    return root / "node.toml"


def test_valid_site_and_its_command(tmp_path: Path, ca: Path) -> None:
    site = site_from_config(load_node_config(write_site(tmp_path, ca, holdout=None)))
    assert (
        site.client.store == (tmp_path / "store.sqlite").resolve() and site.client.policy_dir == tmp_path / "policies"
    )
    assert site.home == tmp_path / "flwr-supernode"  # next to the ledger
    cmd = supernode_command(site, 40001)
    assert cmd[1:3] == ["-m", "federated.supernode_process"] and "--insecure" not in cmd
    assert cmd[3:5] == ["--idle-poll-s", "0.25"]  # the default; [training] idle_poll_s sets it
    assert cmd[cmd.index("--superlink") + 1] == "gw.example.org:9092"
    assert cmd[cmd.index("--root-certificates") + 1] == str((ca / pki.CA_CERT).resolve())
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "keys" / "supernode-region0.ssh.key")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "40001"
    assert "--max-retries" not in cmd  # keeps waiting for the SuperLink
    from flwr.common.config import parse_config_args

    parsed = node_config(parse_config_args([cmd[cmd.index("--node-config") + 1]]))
    assert parsed.agency == "region0" and parsed.ledger == tmp_path / "fl-ledger.sqlite"
    assert parsed.policy_dir == tmp_path / "policies"


def _refusal(config: Path) -> str:
    with pytest.raises(ConfigError) as err:
        site_from_config(load_node_config(config))
    return err.value.message


def test_missing_table_and_files(tmp_path: Path, ca: Path) -> None:
    config = write_site(tmp_path, ca)
    text = config.read_text()
    (tmp_path / "plain.toml").write_text(text[: text.index("[training]")])
    assert _refusal(tmp_path / "plain.toml").startswith("node config has no [training] table")
    assert "supernode_key: file not found" in _refusal(write_site(tmp_path, ca, supernode_key="nope.key"))
    assert "ca_cert: file not found" in _refusal(write_site(tmp_path, ca, ca_cert="nope.pem"))
    assert "policy_dir: not a directory" in _refusal(write_site(tmp_path, ca, policy_dir="nope"))
    assert "superlink: port 99999 is out of range" in _refusal(write_site(tmp_path, ca, superlink="gw:99999"))


def test_idle_poll_is_configurable_within_its_range(tmp_path: Path, ca: Path) -> None:
    site = site_from_config(load_node_config(write_site(tmp_path, ca, idle_poll_s=1.5)))
    cmd = supernode_command(site, 40001)
    assert cmd[cmd.index("--idle-poll-s") + 1] == "1.5"
    for bad in (0.0, 10.0):
        with pytest.raises(ConfigError, match="idle_poll_s"):
            load_node_config(write_site(tmp_path, ca, idle_poll_s=bad))


def test_policy_dir_is_required(tmp_path: Path, ca: Path) -> None:
    config = write_site(tmp_path, ca)
    config.write_text(config.read_text().replace('policy_dir = "policies"\n', ""))
    with pytest.raises(ConfigError, match=r"needs policy_dir \(or \[node\].policy_dir\)"):
        load_node_config(config)


def test_key_must_be_private_and_an_openssh_key(tmp_path: Path, ca: Path) -> None:
    config = write_site(tmp_path, ca)
    key = tmp_path / "keys" / "supernode-region0.ssh.key"
    key.chmod(0o640)
    assert "readable by others (chmod 600)" in _refusal(config)
    key.write_text("not a key")
    key.chmod(0o600)
    assert "supernode_key: not an unencrypted OpenSSH private key file" in _refusal(config)


def test_key_must_be_certified_for_this_agency_by_this_ca(tmp_path: Path, ca: Path) -> None:
    other_ca = tmp_path / "other-ca"
    pki.init_ca(other_ca, "another CA")
    foreign = fk.certify_supernode_key(other_ca, "region0", tmp_path / "foreign")
    msg = _refusal(write_site(tmp_path, ca, supernode_cert=str(foreign.certificate)))
    assert msg.startswith("[training] supernode_cert does not verify against ca_cert")
    wrong_agency = fk.certify_supernode_key(ca, "region1", tmp_path / "r1")
    assert "does not verify" in _refusal(write_site(tmp_path, ca, supernode_cert=str(wrong_agency.certificate)))
    fresh = fk.certify_supernode_key(ca, "region0", tmp_path / "fresh")  # right CA and agency, another key
    assert "certifies another key" in _refusal(write_site(tmp_path, ca, supernode_cert=str(fresh.certificate)))
    old = pki.issue(ca, "flower-supernode", "region0", tmp_path / "old", days=1,
                    now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))  # fmt: skip
    assert "does not verify" in _refusal(write_site(tmp_path, ca, supernode_cert=str(old.cert_path)))
    # Without a certificate the key is used as is (the gateway registered its public half).
    site_from_config(load_node_config(write_site(tmp_path, ca, supernode_cert=None)))


def test_cli_prints_one_line_and_exits_non_zero(tmp_path: Path, ca: Path) -> None:
    result = CliRunner().invoke(app, ["supernode", "--config", str(write_site(tmp_path, ca, supernode_key="x.key"))])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [training] supernode_key: file not found")


# -- the supervisor ------------------------------------------------------------------------------


def test_next_backoff() -> None:
    assert next_backoff(1.0, 0.5) == 2.0 and next_backoff(16.0, 3.0) == 30.0 and next_backoff(30.0, 1.0) == 30.0
    assert next_backoff(30.0, supernode_site.STEADY_S) == supernode_site.BACKOFF_S[0]


def test_supervisor_restarts_and_stops_the_group(tmp_path: Path, ca: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = site_from_config(load_node_config(write_site(tmp_path, ca)))
    marker = tmp_path / "runs"
    # Stand-in for flower-supernode: the first two runs exit at once, the third starts a child and waits.
    script = (
        "import os, subprocess, sys, time; from pathlib import Path; m = Path(sys.argv[1]);"
        " m.write_text(m.read_text() + 'x') if m.exists() else m.write_text('x');"
        " n = len(m.read_text());"
        " sys.exit(3) if n < 3 else None;"
        " c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        " Path(sys.argv[1] + '.pid').write_text(str(c.pid)); time.sleep(60)"
    )
    monkeypatch.setattr(supernode_site, "supernode_command", lambda s, p: [sys.executable, "-c", script, str(marker)])
    monkeypatch.setattr(supernode_site, "BACKOFF_S", (0.05, 0.1))
    stop = threading.Event()
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(run_supernode(site, stop)))
    worker.start()
    pid_file = Path(f"{marker}.pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    time.sleep(0.2)
    grandchild = int(pid_file.read_text())
    stop.set()
    worker.join(timeout=30)
    assert done == [0] and marker.read_text() == "xxx"  # restarted twice after quick exits
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)  # the whole group went, not just the supervised process


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
