"""Files that hold personal data are private to their owner even under a permissive umask (022):
the `xgate` entry point sets umask 077 for itself and every process it starts, and the node store
and `xgate train split` holdouts are created 0600 by the code that writes them (library callers too).
`xgate config check` refusing such files when group/others can read them: test_deploy_config.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.holdout import write_holdout
from nodes.store import NodeStore, store_for_load

REPO = Path(__file__).resolve().parents[2]
BYO = REPO / "tests" / "data" / "byo"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a common default: new files 0644, readable by every local user
    try:
        yield
    finally:
        os.umask(old)


def test_the_cli_entry_point_sets_an_owner_only_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissive_umask: None
) -> None:
    seen: dict[str, int] = {}

    def run(app: object) -> None:  # what the sub-command would do: create files, start children
        seen["umask"] = os.umask(0o077)
        os.umask(seen["umask"])
        (tmp_path / "made.csv").write_text("national_id\n")
        (tmp_path / "dir").mkdir()
        seen["child"] = int(subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True).stdout, 8)

    monkeypatch.setattr(cli, "run", run)
    cli.main()
    assert seen == {"umask": 0o077, "child": 0o077}
    assert _mode(tmp_path / "made.csv") == 0o600 and _mode(tmp_path / "dir") == 0o700


def test_xgate_demo_data_writes_its_national_ids_owner_only(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = "import os, sys; os.umask(0o022); from app.cli import main; sys.argv[0] = 'xgate'; main()"
    args = ["demo-data", "--out", str(tmp_path / "data"), "--people", "100", "--applicants", "5"]
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert written and {str(p): _mode(p) for p in written} == {str(p): 0o600 for p in written}
    assert _mode(tmp_path / "data") == 0o700


def test_the_node_store_is_created_owner_only_by_the_library(tmp_path: Path, permissive_umask: None) -> None:
    store = NodeStore.open(tmp_path / "node" / "store.sqlite")
    try:
        store._conn.execute("CREATE TABLE t (x)")  # a write: the WAL beside it takes the store's mode
        store._conn.commit()
        side = [p for p in (tmp_path / "node").iterdir()]
        assert {p.name: _mode(p) for p in side} == {p.name: 0o600 for p in side}
        assert "store.sqlite-wal" in {p.name for p in side}
    finally:
        store.close()


def test_a_store_built_by_a_load_is_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "store.sqlite"
    with store_for_load(path) as store:
        assert _mode(path.with_name("store.sqlite.loading")) == 0o600
        store._conn.execute("CREATE TABLE t (x)")
    assert _mode(path) == 0o600


def test_the_holdout_file_is_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    (tmp_path / "pseudonym.key").write_bytes(b"\x07" * 32)
    config = tmp_path / "tax.toml"
    config.write_text((BYO / "tax.toml").read_text().replace("pseudonym.key", str(tmp_path / "pseudonym.key")))
    out = tmp_path / "holdout" / "h.txt"
    write_holdout(config, BYO / "tax.csv", "national_id", out, fraction=0.2, seed=0)
    assert _mode(out) == 0o600


@pytest.mark.parametrize("widen", [[], ["--all-day"]])
@pytest.mark.parametrize("made_before", [False, True])
def test_xgate_policy_init_writes_the_policy_set_owner_only(
    tmp_path: Path, widen: list[str], made_before: bool
) -> None:
    """The copy kept the installed package's 0644/0755 whatever the umask, principals.toml (every
    user's name, agency and role) included; into an empty directory made beforehand, the copy
    without --all-day failed with "exists" (thirteenth session's reviews)."""
    if made_before:
        (tmp_path / "policies").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = "import os, sys; os.umask(0o022); from app.cli import main; sys.argv[0] = 'xgate'; main()"
    args = ["policy", "init", "--out", str(tmp_path / "policies"), *widen]
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (tmp_path / "policies").rglob("*") if p.is_file()]
    dirs = [tmp_path / "policies", *(p for p in (tmp_path / "policies").rglob("*") if p.is_dir())]
    assert any(p.name == "principals.toml" for p in files)
    assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}
    assert {str(p): _mode(p) for p in dirs} == {str(p): 0o700 for p in dirs}
