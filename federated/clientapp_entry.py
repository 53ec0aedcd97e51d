"""The ClientApp process of an xgate SuperNode: Flower's `flwr-clientapp`, running xgate's own
ClientApps only.

Flower's `flwr-clientapp` installs the app bundle (FAB) the coordinator submitted, reads the
ClientApp it names (`[tool.flwr.app.components] clientapp`) and imports it with the bundle's
directory first on `sys.path` (`flwr.clientapp.utils.get_load_client_app_fn` → `load_app`): the
coordinator's code would run next to the node's store, with its node config (store, ledger, key
paths) in hand. A SuperNode started by `federated.supernode_process` runs this module instead
(its `flwr-clientapp` on PATH, warm or not: federated/warm_clientapp.py), which swaps Flower's
loader, at the one name `run_clientapp` calls, for `load_client_app`:

* the installed bundle may hold `pyproject.toml` and `README.md` only (what
  `federated.job_run.write_app` writes): any other file (code, a package, a `.pth`), a
  subdirectory, or a dependency to install refuses the bundle;
* its ClientApp must be one of `ALLOWED_CLIENTAPPS`, imported from the installed `federated`
  package (never from the bundle's directory, which is never put on `sys.path`) and guarded
  (federated/guarded_app.py);
* a refused bundle is answered with an error reply naming what was refused (the bundle's own
  file or component names, nothing of the node), logged at the node as `clientapp_refused`.

Runtime dependency installation is never turned on here, whatever flag the SuperNode passes.
The process also configures xgate's structured, scrubbed logging (xgate/logging.py).
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from federated.guarded_app import GuardedClientApp, RefusedClientApp
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
_PACKAGE = Path(__file__).resolve().parent  # the installed `federated` package
_DEPENDENCY_FLAG = "--allow-runtime-dependency-installation"


def _shown(text: object) -> str:
    return repr(str(text)[:80])


def check_bundle(app_dir: Path) -> str:
    """The ClientApp an installed bundle names, or PolicyDenied when the node would not run it."""
    for path in sorted(app_dir.rglob("*")):
        rel = path.relative_to(app_dir)
        if path.is_dir() or path.is_symlink() or str(rel) not in BUNDLE_FILES:
            raise PolicyDenied(
                f"the job's app bundle carries {_shown(rel)}: this node runs xgate's installed ClientApps"
                " only, never code from a bundle (a bundle holds pyproject.toml and README.md)"
            )
    try:
        config = tomllib.loads((app_dir / "pyproject.toml").read_text())
        ref = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        raise PolicyDenied("the job's app bundle names no ClientApp in its pyproject.toml") from None
    if ref not in ALLOWED_CLIENTAPPS:
        raise PolicyDenied(
            f"the job's app bundle names ClientApp {_shown(ref)}: this node runs only"
            f" {', '.join(sorted(ALLOWED_CLIENTAPPS))}"
        )
    project = config.get("project")
    if isinstance(project, dict) and project.get("dependencies"):
        raise PolicyDenied("the job's app bundle asks for dependencies: this node installs none")
    return str(ref)


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
    """What `flwr-clientapp` runs for a message of run (fab_id, fab_version, fab_hash)."""
    from flwr.common.config import get_project_dir

    try:
        app_dir = get_project_dir(fab_id, fab_version, fab_hash)
        if not app_dir.is_dir():
            raise PolicyDenied("the job's app bundle is not installed at this node")
        return load_installed(check_bundle(app_dir))
    except XgateError as exc:
        return RefusedClientApp(exc)
    except ValueError:  # Flower's own check of the FAB id
        return RefusedClientApp(PolicyDenied("the job's app bundle has no valid id"))


def _loader(default_app_ref: str, app_path: str | None, multi_app: bool) -> Callable[[str, str, str], ClientApp]:
    """Stands in for `flwr.clientapp.utils.get_load_client_app_fn` inside `run_clientapp`."""
    del default_app_ref, app_path, multi_app  # the bundle decides nothing but which of ours
    return load_client_app


def install() -> Any:
    """Swap Flower's ClientApp loader in `flwr.supernode.runtime.run_clientapp` for ours; returns
    the module. Refuses (RuntimeError) when that module no longer looks as this was written for."""
    from flwr.supernode.runtime import run_clientapp as runtime

    if not callable(getattr(runtime, "get_load_client_app_fn", None)) or not callable(
        getattr(runtime, "run_clientapp", None)
    ):
        raise RuntimeError("flwr.supernode.runtime.run_clientapp changed: review federated/clientapp_entry.py")
    runtime.get_load_client_app_fn = _loader  # type: ignore[attr-defined] # the name run_clientapp calls
    return runtime


def main() -> None:
    """`flwr-clientapp`, as an xgate SuperNode runs it."""
    configure("clientapp")
    install()
    sys.argv = [a for a in sys.argv if a != _DEPENDENCY_FLAG]
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flwr_clientapp()


if __name__ == "__main__":
    main()
