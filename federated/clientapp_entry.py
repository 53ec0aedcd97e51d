"""The ClientApp process of an xgate SuperNode: Flower's `flwr-clientapp`, running xgate's own
ClientApps only.

Flower's `flwr-clientapp` unpacks the app bundle (FAB) the coordinator submitted into
`$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>` (`install_from_fab`: every file it holds,
any size, at a path built from the bundle's own `[project] version`, so `1.0.0/../../x` lands
outside), then reads the ClientApp it names (`[tool.flwr.app.components] clientapp`) and imports it
with the bundle's directory first on `sys.path` (`flwr.clientapp.utils.get_load_client_app_fn` →
`load_app`): the coordinator's code would run next to the node's store, with its node config
(store, ledger, key paths) in hand. A SuperNode started by `federated.supernode_process` runs this
module instead (its `flwr-clientapp` on PATH, warm or not: federated/warm_clientapp.py), which
swaps, at the names `run_clientapp` calls, Flower's installer for `check_fab` and its loader for
`load_client_app`:

* the bundle is checked in memory and **nothing of it is written** (`check_fab`): at most
  `FAB_MAX_BYTES`, packed and unpacked; its entries `pyproject.toml`, `README.md` and Flower's
  `.info/CONTENT` manifest only (what `federated.job_run.write_app` and Flower's builder make),
  the manifest's hashes matching; any other entry (code, a package, a subdirectory, a `.pth`), a
  dependency to install, or a publisher, name or version that is not a plain name (no `/`, `\\`,
  `..`) refuses it. Nothing of the node needs the directory: runtime dependency installation is
  never on here, and the SuperNode reads the run config from the FAB in memory;
* its ClientApp must be one of `ALLOWED_CLIENTAPPS`, for the run (id, version, hash) the bundle is,
  imported from the installed `federated` package (never from a bundle's directory, which never
  exists) and guarded (federated/guarded_app.py);
* a refused bundle is answered with a `policy_denied` error reply naming what was refused (the
  bundle's own entry, field or component names, nothing of the node), logged at the node as
  `clientapp_refused`.

Runtime dependency installation is never turned on here, whatever flag the SuperNode passes.
The process also configures xgate's structured, scrubbed logging (xgate/logging.py).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import stat
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from flwr.clientapp import ClientApp

from federated.guarded_app import GuardedClientApp, RefusedClientApp
from federated.orphan_guard import exit_with_parent
from xgate.errors import PolicyDenied, XgateError
from xgate.logging import configure

ALLOWED_CLIENTAPPS = frozenset(
    {
        "federated.horizontal_client:app",
        "federated.horizontal_client:secagg_app",
        "federated.vertical_client:app",
    }
)
BUNDLE_FILES = frozenset({"pyproject.toml", "README.md"})
FAB_MANIFEST = ".info/CONTENT"  # Flower's: one `path,sha256,size in bits` line per bundle file
FAB_MAX_BYTES = 1 << 20  # a bundle, packed and unpacked (xgate's: a few KiB)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")  # publisher, name, version
_PACKAGE = Path(__file__).resolve().parent  # the installed `federated` package
_DEPENDENCY_FLAG = "--allow-runtime-dependency-installation"


class Bundle(NamedTuple):
    """A FAB this node accepted: the run it is and the ClientApp it names."""

    fab_id: str
    version: str
    fab_hash: str
    clientapp: str


# This process's verdict on the FAB `run_clientapp` handed to `check_fab` (its sha256, then the
# Bundle or the refusal); `load_client_app` answers from it only (one task per process).
_checked: tuple[str, Bundle | PolicyDenied] | None = None


def _shown(text: object) -> str:
    return repr(str(text)[:80])


def _not_a_fab(what: str) -> PolicyDenied:
    return PolicyDenied(f"the job's app bundle {what}: this node runs xgate's own bundles only")


def _bundle_files(content: bytes) -> dict[str, bytes]:
    """The entries of a FAB, read in memory, when they are what xgate's bundles hold."""
    if len(content) > FAB_MAX_BYTES:
        raise _not_a_fab(f"is {len(content)} bytes, over this node's {FAB_MAX_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            entries = sorted(fab.infolist(), key=lambda e: e.filename)
            for entry in entries:
                mode = entry.external_attr >> 16
                if entry.filename not in BUNDLE_FILES | {FAB_MANIFEST} or entry.is_dir() or stat.S_ISLNK(mode):
                    raise PolicyDenied(
                        f"the job's app bundle carries {_shown(entry.filename)}: this node runs xgate's installed"
                        " ClientApps only, never code from a bundle (a bundle holds pyproject.toml and README.md)"
                    )
            if len({e.filename for e in entries}) != len(entries):
                raise _not_a_fab("carries an entry twice")
            if sum(e.file_size for e in entries) > FAB_MAX_BYTES:
                raise _not_a_fab(f"unpacks to over this node's {FAB_MAX_BYTES} bytes")
            files = {e.filename: fab.read(e) for e in entries}  # bounded by file_size, CRC checked
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError):
        raise _not_a_fab("is not a readable FAB") from None
    manifest = files.pop(FAB_MANIFEST, None)
    if manifest is None or "pyproject.toml" not in files:
        raise _not_a_fab(f"lacks {FAB_MANIFEST} or pyproject.toml")
    listed: dict[str, str] = {}
    try:
        for line in manifest.decode().strip().split("\n"):
            path, digest, _bits = line.split(",")
            listed[path] = digest
    except (UnicodeDecodeError, ValueError):
        raise _not_a_fab(f"has an unreadable {FAB_MANIFEST}") from None
    if listed.keys() != files.keys() or any(hashlib.sha256(files[p]).hexdigest() != d for p, d in listed.items()):
        raise _not_a_fab(f"does not match its {FAB_MANIFEST}")
    return files


def _plain(field: str, value: object) -> str:
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise PolicyDenied(
            f"the job's app bundle has {field} {_shown(value)}: this node takes letters, digits and . _ + -"
            " only (no path)"
        )
    return value


def check_fab(content: bytes) -> Bundle:
    """The run a FAB is and the ClientApp it names, or PolicyDenied when the node would not run it;
    read in memory only."""
    files = _bundle_files(content)
    try:
        config = tomllib.loads(files["pyproject.toml"].decode())
        app = config["tool"]["flwr"]["app"]
        project = config["project"]
        ref = app["components"]["clientapp"]
        publisher, name, version = app["publisher"], project["name"], project["version"]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        raise PolicyDenied("the job's app bundle names no ClientApp, publisher, name or version") from None
    fab_id = f"{_plain('publisher', publisher)}/{_plain('[project] name', name)}"
    _plain("[project] version", version)
    if ref not in ALLOWED_CLIENTAPPS:
        raise PolicyDenied(
            f"the job's app bundle names ClientApp {_shown(ref)}: this node runs only"
            f" {', '.join(sorted(ALLOWED_CLIENTAPPS))}"
        )
    if not isinstance(project, dict) or project.get("dependencies"):
        raise PolicyDenied("the job's app bundle asks for dependencies: this node installs none")
    return Bundle(fab_id, version, hashlib.sha256(content).hexdigest(), str(ref))


def _install_from_fab(fab_file: bytes, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
    """Stands in for Flower's `install_from_fab` inside `run_clientapp`: checks the FAB in memory
    (`check_fab`) and installs nothing, ever; the verdict waits for `load_client_app`, which answers a
    refused bundle with its `policy_denied` reply. Returns a path nothing is written to."""
    global _checked
    del install_dir, skip_prompt
    _checked = None
    if not isinstance(fab_file, bytes):
        _checked = ("", _not_a_fab("did not arrive as bytes"))
        return Path(os.devnull)
    try:
        verdict: Bundle | PolicyDenied = check_fab(fab_file)
    except PolicyDenied as exc:
        verdict = exc
    _checked = (hashlib.sha256(fab_file).hexdigest(), verdict)
    return Path(os.devnull)


def _project_dir(fab_id: str, fab_version: str, fab_hash: str) -> Path:
    """Stands in for `get_project_dir` inside `run_clientapp`, where it only names the directory
    runtime dependencies would go to (never on here): a run id Flower would raise on is left to
    `load_client_app` to refuse."""
    from flwr.common.config import get_project_dir

    try:
        return get_project_dir(fab_id, fab_version, fab_hash)
    except ValueError:
        return Path(os.devnull)


def load_installed(ref: str) -> GuardedClientApp:
    """One of ALLOWED_CLIENTAPPS from the installed `federated` package."""
    if ref not in ALLOWED_CLIENTAPPS:
        raise PolicyDenied(f"ClientApp {_shown(ref)} is not one of xgate's")
    module_name, _, attribute = ref.partition(":")
    module = importlib.import_module(module_name)
    origin = Path(str(getattr(module, "__file__", ""))).resolve()
    app = getattr(module, attribute, None)
    if not origin.is_relative_to(_PACKAGE) or not isinstance(app, GuardedClientApp):
        raise PolicyDenied(f"ClientApp {_shown(ref)} did not come from this node's installed xgate")
    return app


def load_client_app(fab_id: str, fab_version: str, fab_hash: str) -> ClientApp:
    """What `flwr-clientapp` runs for a message of run (fab_id, fab_version, fab_hash): the
    ClientApp of the bundle `_install_from_fab` checked for it, or its refusal."""
    try:
        if _checked is None or _checked[0] != fab_hash:
            raise PolicyDenied("the job's app bundle was not checked at this node")
        bundle = _checked[1]
        if isinstance(bundle, PolicyDenied):
            raise bundle
        if (fab_id, fab_version) != (bundle.fab_id, bundle.version):
            raise PolicyDenied("the job's run does not name the app bundle it shipped")
        return load_installed(bundle.clientapp)
    except XgateError as exc:
        return RefusedClientApp(exc)


def _loader(default_app_ref: str, app_path: str | None, multi_app: bool) -> Callable[[str, str, str], ClientApp]:
    """Stands in for `flwr.clientapp.utils.get_load_client_app_fn` inside `run_clientapp`."""
    del default_app_ref, app_path, multi_app  # the bundle decides nothing but which of ours
    return load_client_app


_SWAPPED = {"install_from_fab": _install_from_fab, "get_project_dir": _project_dir, "get_load_client_app_fn": _loader}


def install() -> Any:
    """Swap Flower's FAB installer, project directory and ClientApp loader in
    `flwr.supernode.runtime.run_clientapp` for ours; returns the module. Refuses (RuntimeError) when
    that module no longer looks as this was written for."""
    from flwr.supernode.runtime import run_clientapp as runtime

    if not all(callable(getattr(runtime, name, None)) for name in (*_SWAPPED, "run_clientapp")):
        raise RuntimeError("flwr.supernode.runtime.run_clientapp changed: review federated/clientapp_entry.py")
    for name, replacement in _SWAPPED.items():  # the names run_clientapp calls
        setattr(runtime, name, replacement)
    return runtime


def parent_pid(argv: list[str]) -> int | None:
    """The SuperExec's pid Flower's command line names (`--parent-pid N` or `--parent-pid=N`)."""
    for i, arg in enumerate(argv):
        if arg == "--parent-pid":
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif arg.startswith("--parent-pid="):
            value = arg.removeprefix("--parent-pid=")
        else:
            continue
        return int(value) if value.isdigit() else None
    return None


def main() -> None:
    """`flwr-clientapp`, as an xgate SuperNode runs it."""
    configure("clientapp")
    if (superexec := parent_pid(sys.argv)) is not None:
        exit_with_parent(parent=superexec)  # a run whose SuperExec is gone ends, warm or not
    install()
    sys.argv = [a for a in sys.argv if a != _DEPENDENCY_FLAG]
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flwr_clientapp()


if __name__ == "__main__":
    main()
