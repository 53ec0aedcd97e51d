"""Shared by the remote-training tests: agencies' own SuperNodes (`xgate node supernode`) on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from federated import datasets
from federated.remote import RemoteNode
from policies.catalogue import DEFAULT_CATALOGUE, Catalogue, DataElement
from tests.unit.training_support import RENAME


def synthetic_catalogue() -> Catalogue:
    """The federation catalogue's declaration of the synthetic elements (as nodes loaded them)."""
    _, cols, _ = datasets.synthetic_population(1)
    elements = []
    for old, new in RENAME.items():
        c = cols[old]
        cats = tuple(f"c{i}" for i in range(c.max + 1)) if c.type == "category" else ()  # type: ignore[operator]
        elements.append(
            DataElement(
                id=new,
                agency="medical",
                type=c.type,
                unit="unit",
                min=c.min,
                max=c.max,
                classification="important",
                categories=cats,
            )
        )
    return Catalogue(elements=tuple(elements))


@dataclass
class Site:
    agency: str
    config: Path
    store: Path
    ledger: Path
    node: RemoteNode  # what the coordinator is configured with
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / "supernode.log"


def write_node_toml(root: Path, agency: str, store: Path, ledger: Path, port: int, **training: Any) -> Path:
    cfg = {
        "node": {"agency": agency, "store": os.path.relpath(store, root)},
        "training": {"superlink": f"127.0.0.1:{port}", "ledger": os.path.relpath(ledger, root), **training},
    }
    path = root / "node.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def start_site(site: Site) -> None:
    fh = site.log.open("ab")
    site.proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "node", "supernode", "--config", str(site.config)],
        stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )  # fmt: skip
    fh.close()


def flower_processes(root: Path) -> list[int]:
    """Live processes started for this module: every Flower process gets its FLWR_HOME under root."""
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"FLWR_HOME={root}".encode() in env.read_bytes():
                state = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    out.append(int(env.parent.name))
        except OSError:
            continue
    return out


def write_catalogue(path: Path) -> Path:
    """The shipped catalogue plus the synthetic training elements (what a gateway sizes models from)."""
    lines = [DEFAULT_CATALOGUE.read_text(encoding="utf-8")]
    for e in synthetic_catalogue().elements:
        lines.append(tomli_w.dumps({"elements": [e.model_dump(mode="json", exclude_defaults=True)]}))
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
