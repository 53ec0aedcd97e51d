"""Agency node configuration (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from xgate.catalogue import DEFAULT_CATALOGUE, AgencyId
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
    listen: str = Field(default="127.0.0.1:0", pattern=r"^[^\s:]+:\d{1,5}$")
    store: Path
    catalogue: Path = DEFAULT_CATALOGUE
    pseudonym_key_file: Path | None = None
    column_key_file: Path | None = None
    audit_db: Path | None = None
    audit_key: Path | None = None  # signs this node's checkpoints and its cosignatures
    gateway_audit_key: Path | None = None  # the gateway log's public key: makes this node a witness
    policy_dir: Path | None = None
    signing_key: Path | None = None
    federation_directory: Path | None = None
    allow_plaintext_mode: bool = False  # benchmark baseline only
    max_subjects: int = Field(default=100_000, ge=1, le=1_000_000)
    max_message_mb: int = Field(default=64, ge=1, le=512)
    workers: int = Field(default=4, ge=1, le=64)
    insecure: bool = False


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: NodeSettings
    tls: TlsConfig | None = None


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
    resolve_relative(config.tls, ("cert", "key", "ca", "crl"), base)
    return config
