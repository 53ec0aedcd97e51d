"""A small real federation for the console's browser tests and screenshots.

Nodes and the gateway are real processes (mTLS gRPC, HTTPS REST), started exactly as `make demo`
starts them; traffic goes through the ordinary SDK and REST API, so every entry the console shows
was written by the real gateway.
"""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.devfed import (
    DEV_APPROVAL_REF,
    LEGAL_BASIS,
    DevFederation,
    prepare,
    start_gateway,
    start_nodes,
    write_gateway_config,
)
from app.launcher import Supervisor

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def find_chromium() -> str | None:
    """The system Chromium (Debian's `chromium` package); never a downloaded browser."""
    explicit = os.environ.get("XGATE_CHROMIUM")
    if explicit:  # authoritative when set (also how a test simulates a machine without Chromium)
        return explicit if Path(explicit).is_file() and os.access(explicit, os.X_OK) else None
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_works(path: str) -> bool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "Chromium" in out.stdout


@dataclass
class ConsoleFederation:
    fed: DevFederation
    supervisor: Supervisor
    url: str = ""
    people: list[str] = field(default_factory=list)
    _used: int = 0

    @property
    def officer_key(self) -> str:
        return self.fed.api_keys["officer"]

    def http(self, label: str = "officer") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.fed.api_keys[label]}"},
            verify=ssl.create_default_context(cafile=str(self.fed.ca_cert)) if self.fed.tls else False,
            timeout=120,
        )

    def take(self, n: int) -> list[str]:
        """Fresh applicants (the probing budget limits checks per person)."""
        out = self.people[self._used : self._used + n]
        self._used += n
        return out

    def client(self, label: str = "caseworker") -> Any:
        from client.sdk import GatewayClient
        from xgate.pseudonym import Pseudonymiser, load_key

        return GatewayClient(self.url, self.fed.api_keys[label], Pseudonymiser(load_key(self.fed.pseudonym_key)),
                             verify=str(self.fed.ca_cert), signer=self.fed.signer(label),
                             identity=self.fed.identity(label))  # fmt: skip

    def pseudonym(self, national_id: str) -> str:
        from xgate.pseudonym import Pseudonymiser, load_key

        return Pseudonymiser(load_key(self.fed.pseudonym_key)).pseudonym(national_id)

    # -- traffic ---------------------------------------------------------------------------------
    def allowed_check(self, n: int = 4, mode: str = "he", case: str = "C-CONSOLE-1") -> Any:
        with self.client() as c:
            return c.check("dibao", self.take(n), purpose="dibao", legal_basis=LEGAL_BASIS["dibao"], case_id=case,
                           approval_ref=DEV_APPROVAL_REF, mode=mode)  # fmt: skip

    def refused_check(self, *, legal_basis: str = "SAR-2014-art-99", purpose: str = "dibao", case: str = "C-X") -> int:
        """A check the policy refuses; returns the HTTP status (403 expected)."""
        from client.sdk import GatewayError

        with self.client() as c:
            try:
                c.check("dibao", self.take(1), purpose=purpose, legal_basis=legal_basis, case_id=case,
                        approval_ref=DEV_APPROVAL_REF, mode="plaintext")  # fmt: skip
            except GatewayError as exc:
                return int(exc.http_status)
        raise AssertionError("the gateway allowed a check that should have been refused")

    def cosign(self) -> dict[str, Any]:
        """Publish a checkpoint now and collect the nodes' cosignatures (officer action)."""
        with self.http() as h:
            r = h.post("/v1/audit/checkpoints/cosign")
            r.raise_for_status()
            return dict(r.json())

    def audit_db(self) -> Path:
        return self.fed.gateway_dir / "audit.sqlite"

    def tamper(self, index: int) -> None:
        """Change one byte of an entry's stored data, as an attacker with file access would."""
        conn = sqlite3.connect(self.audit_db(), timeout=10)
        try:
            (data,) = conn.execute("SELECT data FROM entries WHERE idx=?", (index,)).fetchone()
            raw = bytearray(data)
            pos = bytes(raw).find(b'"time":"') + len('"time":"2')  # a digit of the year: stays valid JSON
            raw[pos] = ord("1") if raw[pos] != ord("1") else ord("2")
            conn.execute("UPDATE entries SET data=? WHERE idx=?", (bytes(raw), index))
            conn.commit()
        finally:
            conn.close()


def sign_in(page: Any, cf: ConsoleFederation, label: str = "officer") -> None:
    """Sign in on the console's own page, as a person would."""
    page.goto(f"{cf.url}/console/")
    page.get_by_label("API key").fill(cf.fed.api_keys[label])
    page.get_by_role("button", name="Sign in").click()
    if label == "officer":
        page.wait_for_selector("#who-user")


@contextmanager
def running_federation(root: Path, people: int = 400, applicants: int = 120) -> Iterator[ConsoleFederation]:
    fed = prepare(root, people=people, applicants=applicants, tls=True, plaintext_baseline=True)
    with Supervisor(log_dir=fed.log_dir) as supervisor:
        start_nodes(fed, supervisor)
        write_gateway_config(fed)
        start_gateway(fed, supervisor)
        with fed.applicants.open() as fh:
            ids = [row["national_id"] for row in csv.DictReader(fh)]
        yield ConsoleFederation(fed, supervisor, fed.gateway_url, ids)
