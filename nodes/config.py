"""Agency node configuration (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from federated.supernode_process import POLL_RANGE_S, POLL_S
from policies.catalogue import DEFAULT_CATALOGUE, AgencyId
from xgate.tomlfile import load_model, resolve_relative


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None
    gateway_agency: str = "gateway"


class NodeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agency: AgencyId
    # host:port to bind; unset: the address the CA published for this node in federation.json
    listen: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$")
    # host:port of a small HTTP server with /metrics (Prometheus) and /healthz; unset: none
    metrics_listen: str | None = Field(default=None, pattern=r"^[^\s:]*:\d{1,5}$")
    store: Path
    catalogue: Path = DEFAULT_CATALOGUE
    pseudonym_key_file: Path | None = None
    column_key_file: Path | None = None
    audit_db: Path | None = None
    audit_key: Path | None = None  # signs this node's checkpoints and its cosignatures
    gateway_audit_key: Path | None = None  # the gateway log's public key: makes this node a witness
    # gateway replicas: replica name -> its log's public key; this node witnesses each replica's log
    gateway_replica_keys: dict[str, Path] = Field(default_factory=dict)
    policy_dir: Path | None = None
    signed_policies: bool = False  # start only on a CA-signed policy bundle (`xgate policy install`)
    signing_key: Path | None = None
    federation_directory: Path | None = None
    allow_plaintext_mode: bool = False  # benchmark baseline only
    # this store lists every registered person (household register): bronze cohorts naming anyone
    # else are refused (docs/PROTOCOL.md "Views")
    civil_register: bool = False
    max_subjects: int = Field(default=100_000, ge=1, le=1_000_000)
    max_message_mb: int = Field(default=64, ge=1, le=512)
    workers: int = Field(default=4, ge=1, le=64)
    insecure: bool = False


class NodeTrainingSettings(BaseModel):
    """`[training]`: this agency's Flower SuperNode (`xgate node supernode`), dialling the gateway's
    SuperLink with its CA-certified key; it trains on `[node].store` and decides admission itself."""

    model_config = ConfigDict(extra="forbid")

    superlink: str = Field(pattern=r"^[^\s:]+:\d{1,5}$")  # host:port of the gateway's SuperLink
    ca_cert: Path  # the federation CA: the SuperLink's certificate must chain to it
    supernode_key: Path  # OpenSSH EC private key (0600), registered at the gateway by its public key
    supernode_cert: Path | None = None  # given: the key must be certified by ca_cert for this agency
    crl: Path | None = None  # checked with supernode_cert
    ledger: Path  # this node's admission decisions and ε spends
    holdout: Path | None = None  # pseudonyms reserved for evaluation
    policy_dir: Path | None = None  # this node's policy set; default [node].policy_dir; one is required
    state_dir: Path | None = None  # Flower's home (FLWR_HOME); default: next to the ledger
    # seconds the SuperNode waits before asking the SuperLink again when it had nothing (Flower: 3)
    idle_poll_s: float = Field(default=POLL_S, ge=POLL_RANGE_S[0], le=POLL_RANGE_S[1])


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: NodeSettings
    tls: TlsConfig | None = None
    training: NodeTrainingSettings | None = None

    @model_validator(mode="after")
    def _training_policy(self) -> NodeConfig:
        if self.training is not None and self.training.policy_dir is None and self.node.policy_dir is None:
            raise ValueError(
                "[training] needs policy_dir (or [node].policy_dir): a remote node decides admission itself"
            )
        return self


def load_node_config(path: Path) -> NodeConfig:
    config, _ = load_model(path, NodeConfig, "node config")
    base = path.resolve().parent
    # Relative paths in a config file are relative to that file.
    resolve_relative(
        config.node,
        (
            "store",
            "catalogue",
            "pseudonym_key_file",
            "column_key_file",
            "audit_db",
            "audit_key",
            "gateway_audit_key",
            "policy_dir",
            "signing_key",
            "federation_directory",
        ),
        base,
    )
    config.node.gateway_replica_keys = {
        name: path if path.is_absolute() else base / path for name, path in config.node.gateway_replica_keys.items()
    }
    resolve_relative(config.tls, ("cert", "key", "ca", "crl"), base)
    resolve_relative(
        config.training,
        ("ca_cert", "supernode_key", "supernode_cert", "crl", "ledger", "holdout", "policy_dir", "state_dir"),
        base,
    )
    return config
