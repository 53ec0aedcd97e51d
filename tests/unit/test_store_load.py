"""Loading into a node store: a reload replaces everything of its dataset, a first load never leaves
a store behind unless it committed (not even when killed), one load at a time ("store busy"), and
a store path SQLite cannot use is a clear error, not a sqlite3 traceback."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nodes.store
from app.cli import app as xgate
from app.synth import write_mapping
from crypto.at_rest import ColumnCipher
from nodes.loader import load_file, parse_file, store_parsed
from nodes.store import NodeStore, store_for_load
from policies.catalogue import load_catalogue
from xgate.errors import ConfigError, IntegrityError, NotFound, StoreUnavailable
from xgate.pseudonym import Pseudonymiser, id_checksum

CATALOGUE, _ = load_catalogue()
PS = Pseudonymiser(b"\x01" * 32)
ROOT = Path(__file__).resolve().parents[2]


def nid(body17: str) -> str:
    return body17 + id_checksum(body17)


A, B, C = nid("11010119800101001"), nid("11010119900202002"), nid("31010120000303003")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    mapping = tmp_path / "tax.mapping.toml"
    write_mapping(mapping, "tax")
    data = tmp_path / "tax.csv"
    data.write_text(
        f"national_id,monthly_income,monthly_wage_income,registered_businesses\n{A},1000,900,0\n{B},,,2\n{C},5,,\n"
    )
    return data, mapping


def test_a_reload_with_fewer_columns_removes_every_value_of_the_dropped_ones(tmp_path: Path) -> None:
    data, mapping = _files(tmp_path)
    store = NodeStore.open(tmp_path / "tax.sqlite")
    load_file(store, data, mapping, CATALOGUE, PS)
    assert store.subject_count() == 3
    # The reload keeps monthly_income only, and only A has one: B (registered_businesses) is gone.
    text = mapping.read_text()
    mapping.write_text(text[: text.index("[[columns]]", text.index("[[columns]]") + 1)])
    data.write_text(f"national_id,monthly_income\n{A},1000\n{C},\n")
    load_file(store, data, mapping, CATALOGUE, PS)
    assert store.element_ids() == ["tax.monthly_income"]
    assert store.pseudonyms() == [PS.pseudonym(A)] and store.subject_count() == 1
    assert store.known([PS.pseudonym(B), PS.pseudonym(C)]) == 0
    with pytest.raises(NotFound):
        store.lookup("tax.registered_businesses", [PS.pseudonym(B)])
    raw = sqlite3.connect(tmp_path / "tax.sqlite").execute("SELECT DISTINCT element FROM element_values")
    assert raw.fetchall() == [("tax.monthly_income",)]


def test_a_first_load_builds_the_store_beside_it_and_renames_it_once_committed(tmp_path: Path) -> None:
    data, mapping = _files(tmp_path)
    path = tmp_path / "node" / "store.sqlite"
    parsed = parse_file(data, mapping, CATALOGUE, PS)
    with store_for_load(path) as store:
        store_parsed(store, parsed)
        assert not path.exists()  # killed here, the load would leave no store
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.sqlite"]
    assert NodeStore.open(path, read_only=True).subject_count() == 3
    with store_for_load(path) as store:  # a reload writes the store in place
        assert store.path == path and store.subject_count() == 3


def test_a_refused_first_load_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with pytest.raises(RuntimeError), store_for_load(path) as store:
        store.replace_dataset("d", "0" * 64, [], [], "now")
        raise RuntimeError("the load failed after writing")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_first_load_leaves_no_store_and_the_next_load_clears_its_leftovers(tmp_path: Path) -> None:
    data, mapping = _files(tmp_path)
    path = tmp_path / "node" / "store.sqlite"
    child = (
        "import os, signal, sys\nfrom pathlib import Path\n"
        "from nodes.loader import parse_file, store_parsed\nfrom nodes.store import store_for_load\n"
        "from policies.catalogue import load_catalogue\nfrom xgate.pseudonym import Pseudonymiser\n"
        "parsed = parse_file(Path(sys.argv[1]), Path(sys.argv[2]), load_catalogue()[0], Pseudonymiser(b'\\1' * 32))\n"
        "with store_for_load(Path(sys.argv[3])) as store:\n"
        "    store_parsed(store, parsed)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, data, mapping, path], cwd=ROOT, timeout=30, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()
    assert {p.name for p in path.parent.iterdir()} <= {"store.sqlite.loading", "store.sqlite.load-lock"} | {
        f"store.sqlite.loading{s}" for s in ("-wal", "-shm", "-journal")
    }
    with store_for_load(path) as store:
        load_file(store, data, mapping, CATALOGUE, PS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.sqlite"]


def test_leftovers_of_a_killed_load_are_overwritten_whatever_they_hold(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    for name in ("store.sqlite.loading", "store.sqlite.loading-wal", "store.sqlite.load-lock"):
        (tmp_path / name).write_bytes(b"half a database")
    with store_for_load(path) as store:
        assert store.element_ids() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite"]


def test_a_first_load_ignores_the_journal_of_a_store_deleted_without_it(tmp_path: Path) -> None:
    data, mapping = _files(tmp_path)
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.executescript("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE elements(x);")
    path = tmp_path / "store.sqlite"
    (tmp_path / "store.sqlite-wal").write_bytes((tmp_path / "other.sqlite-wal").read_bytes())
    other.close()
    with store_for_load(path) as store:
        load_file(store, data, mapping, CATALOGUE, PS)
    assert NodeStore.open(path).subject_count() == 3


@pytest.mark.parametrize("exists", [False, True])
def test_a_second_load_is_refused_as_busy_and_touches_nothing_of_the_first(tmp_path: Path, exists: bool) -> None:
    data, mapping = _files(tmp_path)
    path = tmp_path / "store.sqlite"
    if exists:
        with store_for_load(path):
            pass
    with store_for_load(path) as first:
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(StoreUnavailable) as info, store_for_load(path):
            pass
        assert info.value.message == f"node store {path}: store busy: another load is writing it; retry"
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        load_file(first, data, mapping, CATALOGUE, PS)
    assert NodeStore.open(path, read_only=True).subject_count() == 3
    assert not (tmp_path / "store.sqlite.load-lock").exists()


def test_a_write_another_process_holds_is_store_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes.store, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "store.sqlite"
    store = NodeStore.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="store busy: another process is writing it; retry"):
        store.replace_dataset("d", "0" * 64, [], [], "now")
    other.execute("ROLLBACK")


def test_a_store_path_sqlite_cannot_use_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    (tmp_path / "text.sqlite").write_text("national_id,monthly_income\n" * 100)
    (tmp_path / "file").write_text("")
    cases = {
        tmp_path / "dir.sqlite": "is a directory, not a store file",
        tmp_path / "text.sqlite": "is not a SQLite database",
        tmp_path / "file" / "store.sqlite": "cannot create its directory",
    }
    for path, problem in cases.items():
        with pytest.raises(ConfigError, match=problem):
            NodeStore.open(path)
        with pytest.raises(ConfigError, match=problem), store_for_load(path):
            pass
    assert (tmp_path / "text.sqlite").read_text() == "national_id,monthly_income\n" * 100


def test_another_database_named_as_the_store_is_left_alone(tmp_path: Path) -> None:
    """An audit log named as the store got the store's tables and rows written into it (review)."""
    from audit.store import AuditLog
    from audit.testing import ORIGIN, record

    audit = tmp_path / "audit.sqlite"
    with AuditLog.open(audit, origin=ORIGIN) as log:
        log.append(record(1))
    before = sqlite3.connect(audit).execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    for read_only in (False, True):
        with pytest.raises(ConfigError, match=r"is another database .* not an xgate node store"):
            NodeStore.open(audit, read_only=read_only)
    assert sqlite3.connect(audit).execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == before


def test_a_store_sqlite_cannot_write_or_open_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    NodeStore.open(path).close()
    with pytest.raises(ConfigError, match=r"store\.sqlite: cannot write it .*readonly"):
        NodeStore.open(path, read_only=True).replace_dataset("d", "0" * 64, [], [], "now")
    with pytest.raises(ConfigError, match=r"none\.sqlite: cannot open it"):
        NodeStore.open(tmp_path / "none.sqlite", read_only=True)


def test_the_cli_names_a_store_path_that_is_a_directory(tmp_path: Path) -> None:
    data, mapping = _files(tmp_path)
    (tmp_path / "key").write_bytes(b"\x01" * 32)
    (tmp_path / "store.sqlite").mkdir()
    (tmp_path / "node.toml").write_text('[node]\nagency = "tax"\nstore = "store.sqlite"\npseudonym_key_file = "key"\n')
    args = ["node", "load", "--config", tmp_path / "node.toml", "--data", data, "--mapping", mapping]
    res = CliRunner().invoke(xgate, [str(a) for a in args])
    assert res.exit_code == 2 and "store.sqlite is a directory, not a store file" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_the_cli_refuses_a_mapping_of_another_agencys_dataset(tmp_path: Path) -> None:
    """Loaded anyway, the civil node's store held the tax bureau's incomes and trained with them
    (thirteenth session's review)."""
    data, mapping = _files(tmp_path)  # the tax bureau's extract and mapping
    (tmp_path / "key").write_bytes(b"\x01" * 32)
    (tmp_path / "node.toml").write_text(
        '[node]\nagency = "civil_affairs"\nstore = "store.sqlite"\npseudonym_key_file = "key"\n'
    )
    args = ["node", "load", "--config", tmp_path / "node.toml", "--data", data, "--mapping", mapping]
    res = CliRunner().invoke(xgate, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert "describes a dataset of agency 'tax'; this node is agency 'civil_affairs'" in " ".join(res.output.split())
    assert not (tmp_path / "store.sqlite").exists()


def test_a_mapping_saved_with_a_bom_loads(tmp_path: Path) -> None:
    """Windows Notepad's BOM made the mapping "TOML syntax error ... (at line 1, column 1)"
    (thirteenth session's review)."""
    data, mapping = _files(tmp_path)
    mapping.write_bytes(b"\xef\xbb\xbf" + mapping.read_bytes())
    store = NodeStore.open(tmp_path / "tax.sqlite")
    load_file(store, data, mapping, CATALOGUE, PS)
    assert store.subject_count() == 3


def test_a_sealed_value_moved_to_another_persons_row_is_an_integrity_error(tmp_path: Path) -> None:
    """Someone with write access to the store file copies one person's sealed 'deceased' flag onto
    another's row (no key needed). The blob is bound to its row, so reading it is refused as the
    node's own damaged data, naming the element and neither person nor value."""
    mapping, data = tmp_path / "household.mapping.toml", tmp_path / "household.csv"
    write_mapping(mapping, "household")
    data.write_text(f"national_id,alive_resident,deceased\n{A},0,1\n{B},1,0\n")
    store = NodeStore.open(tmp_path / "household.sqlite", sealer=ColumnCipher(b"\x07" * 32))
    load_file(store, data, mapping, CATALOGUE, PS)
    assert store.lookup("household.deceased", [PS.pseudonym(B)]) == {PS.pseudonym(B): 0}
    with sqlite3.connect(tmp_path / "household.sqlite") as raw:
        (dead,) = raw.execute(
            "SELECT value FROM element_values WHERE element = 'household.deceased' AND pseudonym = ?",
            (PS.pseudonym(A),),
        ).fetchone()
        raw.execute(
            "UPDATE element_values SET value = ? WHERE element = 'household.deceased' AND pseudonym = ?",
            (dead, PS.pseudonym(B)),
        )
    with pytest.raises(IntegrityError, match=r"a stored value of 'household\.deceased' does not open") as info:
        store.lookup("household.deceased", [PS.pseudonym(B)])
    assert PS.pseudonym(A) not in info.value.message and PS.pseudonym(B) not in info.value.message
    assert info.value.grpc_status == "DATA_LOSS"  # the node's data, not the request: nobody is charged
