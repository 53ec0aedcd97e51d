"""A complete federation on one machine: keys, PKI, synthetic data, node and gateway configs.

Used by `make demo`, the integration tests and the benchmarks, so all three exercise the same
real processes and real TLS. Every party gets its own directory; secrets the gateway must not
hold (pseudonym key, column keys) never go into the gateway's directory.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from app.launcher import Supervisor
from app.synth import AGENCIES, generate, write_federation
from client.sdk import GatewayClient
from crypto.envelope import SigningKey
from gateway.wiring import DEV_USERS
from xgate.errors import ConfigError
from xgate.pseudonym import Pseudonymiser, load_key, write_key

CORE_AGENCIES = ("household",)
# The register of people (every registered person has a record there): checks bronze cohort members.
REGISTER_AGENCIES = ("household",)
# Legal basis each shipped program's agreements name (policies/agreements/*.cedar).
LEGAL_BASIS = {
    "dibao": "SAR-2014-art-12",
    "pension_survival": "SIL-2010-art-17",
    "unemployment_subsidy": "UIR-1999-art-14",
    "income_certificate": "PIPL-2021-art-13-1",
}
# The development federation's one approval (registered at every dev gateway's start, see
# register_dev_approval): signed by the dev approver ap-wu of the federation data office for both
# requesting agencies, every shipped program and every case id (empty case-id prefix), at most
# DEV_APPROVAL_SUBJECTS subjects, valid a year. A real deployment's approvals name their cases.
DEV_APPROVAL_REF = "apr_dev-federation-0000001"
DEV_APPROVER = "ap-wu"
DEV_APPROVAL_SUBJECTS = 10_000_000
_BUDGET = re.compile(r'@budget_max_checks\("\d+"\)')
_HOURS = re.compile(
    r"context\.hour >= \d+ && context\.hour < \d+"
)  # agencies whose extracts hold core-class elements (sealed at rest)
GATEWAY_ID = "gateway"


@dataclass
class DevFederation:
    root: Path
    agencies: tuple[str, ...]
    tls: bool
    plaintext_baseline: bool = False
    node_ports: dict[str, int] = field(default_factory=dict)
    gateway_url: str = ""
    api_keys: dict[str, str] = field(default_factory=dict)

    # -- layout ----------------------------------------------------------------------------------
    @property
    def policy_dir(self) -> Path:
        return self.root / "policies"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def consent_manager_key(self) -> Path:
        """The dev consent manager's signing key (registered in the policy set's consent_managers.toml)."""
        return self.root / "consent_manager" / "signing.key"

    @property
    def approver_key(self) -> Path:
        """The dev approver's signing key (registered in the policy set's approvers.toml)."""
        return self.root / "approver" / "signing.key"

    @property
    def dev_approval(self) -> Path:
        """The dev approval artefact (xgate-approval/1), registered at each dev gateway's start."""
        return self.root / "approver" / "dev_approval.json"

    def signing_key(self, label: str) -> Path:
        """The dev user `label`'s requester signing key (registered in the policy set's requesters.toml)."""
        return self.root / "client" / f"{label}.sign.key"

    def signer(self, label: str) -> SigningKey:
        """The dev user `label`'s requester signing key, loaded: every check of theirs is signed with it."""
        return SigningKey.load(self.signing_key(label))

    @staticmethod
    def identity(label: str) -> tuple[str, str]:
        """The dev user `label`'s (user id, agency), as the gateway's users file registers it."""
        user, agency, _, _ = DEV_USERS[label]
        return user, agency

    def client(self, label: str, url: str | None = None, **options: Any) -> GatewayClient:
        """A gateway client as the dev user `label`: their API key, the federation's pseudonym key
        and CA, and their registered signing key (every check of theirs is signed)."""
        return GatewayClient(
            url or self.gateway_url,
            self.api_keys[label],
            Pseudonymiser(load_key(self.pseudonym_key)),
            verify=str(self.ca_cert),
            signer=self.signer(label),
            identity=self.identity(label),
            **options,
        )

    def signed_check(self, label: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A POST /v1/checks body with the dev user `label`'s requester statement added, as the SDK
        signs it (for callers that post raw bodies: load generators, HTTP-level tests)."""
        from datetime import UTC, datetime

        from crypto.he import context_fingerprint
        from policies.check_statements import Question, sign_check

        fingerprint = str(body.get("context_fingerprint", ""))
        if not fingerprint and body.get("public_context"):
            fingerprint = context_fingerprint(base64.b64decode(str(body["public_context"])))
        user, agency = self.identity(label)
        question = Question.of(user, agency, body, "" if body.get("mode") == "plaintext" else fingerprint)
        return {**body, "requester_statement": sign_check(self.signer(label), question, datetime.now(UTC))}

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def pseudonym_key(self) -> Path:
        return self.root / "client" / "pseudonym.key"

    @property
    def requester_key(self) -> Path:
        return self.root / "client" / "requester.key"

    def node_dir(self, agency: str) -> Path:
        return self.root / "nodes" / agency

    def node_config(self, agency: str) -> Path:
        return self.node_dir(agency) / "node.toml"

    def column_key(self, agency: str) -> Path:
        # Outside the node's data directory: the key must never sit beside the store.
        return self.root / "keys" / f"{agency}.column.key"

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def gateway_config(self) -> Path:
        return self.gateway_dir / "gateway.toml"

    @property
    def applicants(self) -> Path:
        return self.data_dir / "applicants.csv"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca" / "ca.cert.pem"

    @property
    def directory(self) -> Path:
        return self.pki_dir / "ca" / "federation.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


def _cli(args: Sequence[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        check=False,
    )
    if result.returncode != 0:
        raise ConfigError(f"`xgate {' '.join(args[:2])}` failed: {(result.stderr or result.stdout).strip()[-400:]}")


def prepare(
    root: Path,
    people: int = 100_000,
    applicants: int = 1000,
    agencies: Sequence[str] = AGENCIES,
    tls: bool = True,
    plaintext_baseline: bool = False,
    seed: int = 20261123,
    edit_data: Callable[[Path], None] | None = None,
    budget_max_checks: int | None = None,
) -> DevFederation:
    """Create keys, PKI, data and node configs, and load every node's store.

    `edit_data` may change the generated extracts before they are loaded (tests plant canaries);
    `budget_max_checks` raises every agreement's probing budget (benchmarks repeat checks).
    """
    fed = DevFederation(root.resolve(), tuple(agencies), tls, plaintext_baseline)
    fed.root.mkdir(parents=True, exist_ok=True)
    write_key(fed.pseudonym_key)
    write_federation(fed.data_dir, generate(people, seed), applicants=min(applicants, people))
    if edit_data is not None:
        edit_data(fed.data_dir)
    if tls:
        from crypto import pki

        pki.init_ca(fed.pki_dir / "ca", "xgate dev federation CA")
        pki.write_crl(pki.load_ca(fed.pki_dir / "ca"))
        pki.issue(fed.pki_dir / "ca", "gateway", GATEWAY_ID, fed.gateway_dir / "tls")
    write_dev_policies(fed.policy_dir, budget_max_checks)
    write_dev_consent_manager(fed.consent_manager_key, fed.policy_dir)
    write_dev_approver(fed.approver_key, fed.policy_dir, fed.dev_approval)
    write_dev_requesters(fed)
    from audit import generate_key, save_keypair

    fed.gateway_dir.mkdir(parents=True, exist_ok=True)
    save_keypair(generate_key(), fed.gateway_dir / "audit")  # signs the gateway log's checkpoints
    for agency in fed.agencies:
        _write_node_config(fed, agency)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda a: _load_node(fed, a), fed.agencies))
    return fed


def write_dev_consent_manager(key_file: Path, policy_dir: Path) -> None:
    """A consent manager ("mydata", the dev user cm-mydata) with its key registered in the policy set."""
    import base64

    from crypto.envelope import SigningKey

    key = SigningKey.generate("mydata", "consent_manager")
    key.save(key_file)
    public = base64.b64encode(key.public_raw).decode()
    (policy_dir / "consent_managers.toml").write_text(
        "# consent managers acting for data subjects (dev federation)\n"
        f'[[consent_manager]]\nname = "mydata"\npublic_key = "{public}"\n'
    )


def write_dev_requesters(fed: DevFederation) -> None:
    """A requester signing key for every dev user, each registered in the policy set's requesters.toml."""
    from policies.requesters import requester_entry

    entries = ["# requesting users whose signed checks the gateway and the nodes accept (dev federation)\n"]
    for label, (user, agency, _, _) in DEV_USERS.items():
        key = SigningKey.generate(agency, "requester")
        key.save(fed.signing_key(label))
        entries.append(requester_entry(user, agency, key.public_raw))
    (fed.policy_dir / "requesters.toml").write_text("\n".join(entries))


def write_dev_approver(key_file: Path, policy_dir: Path, approval_file: Path) -> None:
    """The dev approver (user ap-wu) in approvers.toml, and the dev approval it signs (DEV_APPROVAL_REF)."""
    import base64
    from datetime import UTC, datetime, timedelta

    from client.approval_cli import approval_body
    from crypto.artefacts import sign_artefact
    from crypto.envelope import SigningKey
    from policies.approvals import APPROVAL_FORMAT

    key = SigningKey.generate(DEV_APPROVER, "approver")
    key.save(key_file)
    public = base64.b64encode(key.public_raw).decode()
    (policy_dir / "approvers.toml").write_text(
        "# approvers whose signed approvals the gateway and the nodes accept (dev federation)\n"
        f'[[approver]]\nname = "{DEV_APPROVER}"\nagencies = ["civil_affairs", "hrss"]\n'
        f'roles = ["data_protection_officer", "case_supervisor"]\npublic_key = "{public}"\n'
    )
    body = approval_body(
        ref=DEV_APPROVAL_REF,
        approver=DEV_APPROVER,
        approver_role="data_protection_officer",
        agencies=("civil_affairs", "hrss"),
        programs=sorted(p.stem for p in (policy_dir / "programs").glob("*.toml")),
        valid_from=datetime.now(UTC) - timedelta(days=1),
        days=366,
        case_id_prefix="",
        max_subjects=DEV_APPROVAL_SUBJECTS,
    )
    approval_file.write_text(sign_artefact(body, key, fmt=APPROVAL_FORMAT))


def register_dev_approval(fed: DevFederation, url: str) -> None:
    """Register the dev approval at a started gateway as its approver would (POST /v1/approvals)."""
    import httpx

    if not fed.dev_approval.exists() or "approver" not in fed.api_keys:
        return
    response = httpx.post(
        f"{url}/v1/approvals",
        json={"artefact": fed.dev_approval.read_text()},
        headers={"Authorization": f"Bearer {fed.api_keys['approver']}"},
        verify=str(fed.ca_cert) if fed.tls else False,
        timeout=30.0,
    )
    if response.status_code != 201 and "already registered" not in response.text:
        raise ConfigError(f"registering the dev approval failed: {response.status_code} {response.text[:300]}")


def write_dev_policies(target: Path, budget_max_checks: int | None = None) -> int:
    """Copy the shipped policy set for a development federation, business hours widened to 24 h.

    Agreements limit checks to office hours (Asia/Shanghai); a demo or CI run at night would be
    refused. Everything else (purposes, legal bases, tiers, budgets, approvals) stays as shipped.
    Returns how many agreements were widened.
    """
    from policies.decision import DEFAULT_POLICY_DIR

    shutil.copytree(
        DEFAULT_POLICY_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"), dirs_exist_ok=True
    )
    widened = 0
    for path in (target / "agreements").glob("*.cedar"):
        text = path.read_text()
        new = _HOURS.sub("context.hour >= 0 && context.hour < 24", text)
        if budget_max_checks is not None:
            new = _BUDGET.sub(f'@budget_max_checks("{budget_max_checks}")', new)
        if new != text:
            path.write_text(new)
            widened += 1
    return widened


def _write_node_config(fed: DevFederation, agency: str) -> None:
    directory = fed.node_dir(agency)
    directory.mkdir(parents=True, exist_ok=True)
    # Agencies share the federation pseudonym key (the gateway never gets it).
    key_copy = directory / "pseudonym.key"
    key_copy.write_bytes(fed.pseudonym_key.read_bytes())
    key_copy.chmod(0o600)
    node: dict[str, object] = {
        "agency": agency,
        "listen": "127.0.0.1:0",
        "store": "store.sqlite",
        "pseudonym_key_file": "pseudonym.key",
        "audit_db": "audit.sqlite",
        "audit_key": "audit.key.pem",
        "gateway_audit_key": str(fed.gateway_dir / "audit.pub.pem"),  # witnesses the gateway's log
        "policy_dir": str(fed.policy_dir),
        "allow_plaintext_mode": fed.plaintext_baseline,
        "insecure": not fed.tls,
        "civil_register": agency in REGISTER_AGENCIES,
    }
    from audit import generate_key, save_keypair

    save_keypair(generate_key(), directory / "audit")
    if agency in CORE_AGENCIES:
        from crypto.at_rest import generate_key_file

        generate_key_file(fed.column_key(agency))
        node["column_key_file"] = str(fed.column_key(agency))
    config: dict[str, object] = {"node": node}
    if fed.tls:
        from crypto import pki

        pki.issue(fed.pki_dir / "ca", "node", agency, directory / "tls")
        config["tls"] = {
            "cert": f"tls/node-{agency}.cert.pem",
            "key": f"tls/node-{agency}.key.pem",
            "ca": str(fed.ca_cert),
            "crl": str(fed.pki_dir / "ca" / "crl.pem"),
            "gateway_agency": GATEWAY_ID,
        }
        node["signing_key"] = f"tls/node-{agency}.sign.pem"
        node["federation_directory"] = str(fed.directory)
    fed.node_config(agency).write_text(tomli_w.dumps(config))


def _load_node(fed: DevFederation, agency: str) -> None:
    _cli(
        [
            "node",
            "load",
            "--config",
            str(fed.node_config(agency)),
            "--data",
            str(fed.data_dir / f"{agency}.csv"),
            "--mapping",
            str(fed.data_dir / f"{agency}.mapping.toml"),
        ]
    )


def start_nodes(fed: DevFederation, supervisor: Supervisor, agencies: Sequence[str] | None = None) -> None:
    for agency in agencies or fed.agencies:
        args = ["node", "serve", "--config", str(fed.node_config(agency))]
        if not fed.tls:
            args.append("--insecure")
        child = supervisor.start(f"node-{agency}", args)
        fed.node_ports[agency] = child.port


def write_gateway_config(
    fed: DevFederation,
    node_addresses: dict[str, str] | None = None,
    config_path: Path | None = None,
    witnesses: bool | None = None,
    **overrides: object,
) -> Path:
    """Write a gateway config (by default the federation's own; tests write variants beside it).

    The nodes witness one gateway log: the federation's own gateway names them as witnesses, a
    variant (its own log) does not unless ``witnesses`` says so — to the witnesses, a second log
    under the same key is a fork, and that gateway would rightly refuse to sign.
    """
    if witnesses is None:
        witnesses = config_path is None
    from gateway.wiring import write_dev_users

    fed.gateway_dir.mkdir(parents=True, exist_ok=True)
    mask_key = fed.gateway_dir / "mask.key"
    if not mask_key.exists():
        mask_key.touch(mode=0o600)
        mask_key.write_text(os.urandom(32).hex())
    if not fed.api_keys:
        fed.api_keys = write_dev_users(fed.gateway_dir / "users.json")
    addresses = node_addresses or {a: f"127.0.0.1:{p}" for a, p in fed.node_ports.items()}
    if "replica" in overrides and "audit_key" not in overrides and config_path is not None:
        overrides["audit_key"] = replica_audit_key(fed, config_path.stem)  # each replica signs its own log
    gateway: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "mask_key_file": "mask.key",
        "users_file": "users.json",
        # One writer per Merkle log: a variant gateway (tests) gets its own log and state.
        "audit_db": "audit.sqlite" if config_path is None else f"{config_path.stem}.audit.sqlite",
        "audit_key": "audit.key.pem",
        "checkpoint_interval_s": 30.0,
        "state_dir": "state" if config_path is None else f"{config_path.stem}.state",
        "policy_dir": str(fed.policy_dir),
        "allow_plaintext_mode": fed.plaintext_baseline,
        "insecure": not fed.tls,
        **overrides,
    }
    nodes: dict[str, dict[str, str]] = {a: {"address": addr} for a, addr in addresses.items()}
    if witnesses:
        for a in addresses:
            nodes[a]["witness_key"] = str(fed.node_dir(a) / "audit.pub.pem")
    config: dict[str, object] = {"gateway": gateway, "nodes": nodes}
    if fed.tls:
        config["tls"] = {
            "cert": f"tls/gateway-{GATEWAY_ID}.cert.pem",
            "key": f"tls/gateway-{GATEWAY_ID}.key.pem",
            "ca": str(fed.ca_cert),
            "crl": str(fed.pki_dir / "ca" / "crl.pem"),
            "signing_key": f"tls/gateway-{GATEWAY_ID}.sign.pem",
            "federation_directory": str(fed.directory),
        }
    path = config_path or fed.gateway_config
    path.write_text(tomli_w.dumps(config))
    return path


def replica_audit_key(fed: DevFederation, stem: str) -> str:
    """`<stem>.audit.key.pem` (and `.pub.pem`) beside the gateway's files, created once."""
    from audit.checkpoints import generate_key, save_keypair

    prefix = fed.gateway_dir / f"{stem}.audit"
    if not Path(f"{prefix}.key.pem").exists():
        save_keypair(generate_key(), prefix)
    return f"{stem}.audit.key.pem"


def start_gateway(
    fed: DevFederation,
    supervisor: Supervisor,
    config_path: Path | None = None,
    name: str = "gateway",
    register_approval: bool = True,
) -> str:
    """Start a gateway process; the federation's own one unless another config is given.

    `register_approval=False` for a gateway that must refuse every action (a damaged audit log):
    registering the dev approval is itself an action it rightly refuses.
    """
    args = ["gateway", "serve", "--config", str(config_path or fed.gateway_config)]
    if not fed.tls:
        args.append("--insecure")
    url = str(supervisor.start(name, args).announcement["url"])
    if register_approval:
        register_dev_approval(fed, url)
    if config_path is None:
        fed.gateway_url = url
    return url
