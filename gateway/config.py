"""Gateway configuration (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.programs import DEFAULT_PROGRAM_DIR
from xgate.catalogue import DEFAULT_CATALOGUE, AgencyId
from xgate.tomlfile import load_model, resolve_relative


class NodeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(pattern=r"^[^\s:]+:\d{1,5}$")
    witness_key: Path | None = None  # the node's cosigning public key: it witnesses our checkpoints


class GatewayTls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert: Path  # gateway certificate (client cert towards nodes, server cert for REST)
    key: Path
    ca: Path
    crl: Path | None = None
    signing_key: Path  # Ed25519 key for signed envelopes
    federation_directory: Path  # CA-signed directory binding agencies to their signing keys


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    catalogue: Path = DEFAULT_CATALOGUE
    program_dir: Path = DEFAULT_PROGRAM_DIR
    mask_key_file: Path
    users_file: Path | None = None
    audit_db: Path | None = None
    audit_key: Path | None = None
    policy_dir: Path | None = None
    state_dir: Path | None = None  # budgets, consents
    deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    max_body_mb: int = Field(default=16, ge=1, le=256)
    max_subjects: int = Field(default=100_000, ge=1, le=1_000_000)
    max_message_mb: int = Field(default=64, ge=1, le=512)
    allow_plaintext_mode: bool = False  # benchmark baseline only
    checkpoint_interval_s: float = Field(default=60.0, gt=0, le=86400)
    # "process": the audit log commits in a child process, on another core than request handling.
    audit_writer: Literal["process", "thread"] = "process"
    rate_per_s: float = Field(default=20.0, gt=0, description="sustained REST requests per user per second")
    rate_burst: float = Field(default=40.0, ge=1)
    failed_auth_per_s: float = Field(default=1.0, gt=0, description="failed authentications per address per second")
    failed_auth_burst: float = Field(default=20.0, ge=1)
    insecure: bool = False


class TrainingNodeRef(BaseModel):
    """A data-owning node's Flower side: its store and ledger go only to its own SuperNode."""

    model_config = ConfigDict(extra="forbid")

    agency: AgencyId
    store: Path
    ledger: Path  # the node's admission decisions and ε spends (PrivacyLedger)
    holdout: Path | None = None
    policy_dir: Path | None = None  # the node's own policy set; default: the gateway's policy_dir


class TrainingSettings(BaseModel):
    """Federated training through POST /v1/training/jobs (gateway/training_routes.py)."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[TrainingNodeRef] = Field(default_factory=list)
    jobs_dir: Path | None = None  # default <state_dir>/jobs (what the console's Training page reads)
    ca_dir: Path | None = None  # CA certifying each job's Flower TLS material; default: an ephemeral job CA


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway: GatewaySettings
    nodes: dict[AgencyId, NodeRef] = Field(default_factory=dict)
    tls: GatewayTls | None = None
    training: TrainingSettings | None = None


def load_gateway_config(path: Path) -> GatewayConfig:
    config, _ = load_model(path, GatewayConfig, "gateway config")
    base = path.resolve().parent
    # Relative paths in a config file are relative to that file.
    resolve_relative(
        config.gateway,
        ("catalogue", "program_dir", "mask_key_file", "users_file", "audit_db", "audit_key", "policy_dir", "state_dir"),
        base,
    )
    for ref in config.nodes.values():
        resolve_relative(ref, ("witness_key",), base)
    resolve_relative(config.tls, ("cert", "key", "ca", "crl", "signing_key", "federation_directory"), base)
    if config.training is not None:
        resolve_relative(config.training, ("jobs_dir", "ca_dir"), base)
        for node in config.training.nodes:
            resolve_relative(node, ("store", "ledger", "holdout", "policy_dir"), base)
    return config
