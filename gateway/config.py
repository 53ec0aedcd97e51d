"""Gateway configuration (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.admission_control import AdmissionSettings
from policies.catalogue import DEFAULT_CATALOGUE, AgencyId
from policies.programs import DEFAULT_PROGRAM_DIR
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
    signed_policies: bool = False  # start only on a CA-signed policy bundle (`xgate policy install`)
    state_dir: Path | None = None  # budgets, consents (embedded mode)
    # Replicated mode: a PostgreSQL URL shared by every gateway process (budgets, consents, rate limits).
    database: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    database_pool_size: int = Field(default=8, ge=1, le=100)
    # This replica's name: its audit log is `xgate.gateway.<replica>/audit`, with its own audit_db and
    # audit_key (docs/AUDIT.md "Replicas"); required with `database` and an audit log.
    replica: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    idempotency_ttl_hours: float = Field(
        default=24.0, gt=0, le=720, description="how long a check's answer is kept for retries with its Idempotency-Key"
    )
    context_ttl_days: float = Field(
        default=30.0, gt=0, le=366, description="a registered HE context lapses this long after its last registration"
    )
    contexts_per_user: int = Field(
        default=8, ge=1, le=1000, description="registered HE contexts kept per user (the oldest is dropped)"
    )
    max_body_mb: int = Field(default=16, ge=1, le=256)
    max_subjects: int = Field(default=100_000, ge=1, le=1_000_000)
    max_message_mb: int = Field(default=64, ge=1, le=512)
    allow_plaintext_mode: bool = False  # benchmark baseline only
    he_workers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="processes for the checks' HE arithmetic; 0: the gateway's own threads (stalls its "
        "event loop under load); default: one per core, at most 4",
    )
    one_time_pads: bool = Field(
        default=True,
        description="small checks reuse a pad batch the nodes opened once (x - rho per slot instead of a "
        "ciphertext per element: docs/PROTOCOL.md 'Pads'); false: fresh node ciphertexts for every check",
    )
    pad_batches: int = Field(
        default=64, ge=1, le=4096, description="pad batches kept per gateway process (each ~393 kB per element)"
    )
    pad_batch_checks: int = Field(
        default=1024, ge=1, le=8192, description="checks one pad batch serves before a new one is opened"
    )
    checkpoint_interval_s: float = Field(default=60.0, gt=0, le=86400)
    # "process": the audit log commits in a child process, on another core than request handling.
    audit_writer: Literal["process", "thread"] = "process"
    rate_per_s: float = Field(default=20.0, gt=0, description="sustained REST requests per user per second")
    rate_burst: float = Field(default=40.0, ge=1)
    failed_auth_per_s: float = Field(default=1.0, gt=0, description="failed authentications per address per second")
    failed_auth_burst: float = Field(default=20.0, ge=1)
    insecure: bool = False
    # Overload control: checks in flight, queue bounds and fair shares, body and request deadlines.
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)

    @model_validator(mode="after")
    def _replica_named(self) -> GatewaySettings:
        if self.database is not None and self.audit_db is not None and self.replica is None:
            raise ValueError(
                "replicated mode (database) with an audit log needs [gateway] replica: "
                "each replica writes its own log under its own name and audit_key"
            )
        return self


class TrainingNodeRef(BaseModel):
    """A data-owning node's Flower side.

    Local (the gateway host starts its SuperNode; store and ledger go only to it): `store`, `ledger`.
    Remote (the agency runs `xgate node supernode` on its own host): `public_key` (+ `certificate`);
    the gateway never sees its store, ledger or policy set.
    """

    model_config = ConfigDict(extra="forbid")

    agency: AgencyId
    store: Path | None = None
    ledger: Path | None = None  # the node's admission decisions and ε spends (PrivacyLedger)
    holdout: Path | None = None
    policy_dir: Path | None = None  # the node's own policy set; default: the gateway's policy_dir
    public_key: Path | None = None  # remote: its SuperNode's OpenSSH public key (registered with the SuperLink)
    certificate: Path | None = None  # remote: the CA's flower-supernode certificate of that key (checked)
    datasets: list[str] = Field(default_factory=list)  # remote: registered datasets it serves; [] = every job

    @model_validator(mode="after")
    def _one_mode(self) -> TrainingNodeRef:
        if self.public_key is None:
            if self.store is None or self.ledger is None:
                raise ValueError("a training node needs store and ledger (local) or public_key (remote)")
            if self.certificate is not None or self.datasets:
                raise ValueError("certificate and datasets describe a remote node (public_key)")
        elif any(v is not None for v in (self.store, self.ledger, self.holdout, self.policy_dir)):
            raise ValueError("a remote node (public_key) keeps store, ledger, holdout and policy_dir at its own site")
        return self


class TrainingSettings(BaseModel):
    """Federated training through POST /v1/training/jobs (gateway/routes/training.py)."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[TrainingNodeRef] = Field(default_factory=list)
    jobs_dir: Path | None = None  # default <state_dir>/jobs (what the console's Training page reads)
    ca_dir: Path | None = None  # CA certifying each job's Flower TLS material; default: an ephemeral job CA
    # Remote mode (superlink_port set): agencies run their own SuperNodes, which dial this SuperLink.
    superlink_host: str | None = None  # bind address, e.g. 0.0.0.0
    superlink_port: int | None = Field(default=None, ge=1, le=65535)
    superlink_cert: Path | None = None  # flower-superlink certificate: the name agencies dial, and 127.0.0.1
    superlink_key: Path | None = None
    ca_cert: Path | None = None  # the federation CA (SuperNode certificates are checked against it)
    crl: Path | None = None
    max_weight: int | None = Field(default=None, ge=1, le=10_000_000)  # SecAgg+ weight bound if a job names none
    connect_timeout_s: float = Field(default=120.0, gt=0, le=3600)  # for a job's SuperNodes to be online
    fleet_max_body_mb: int = Field(default=64, ge=1, le=4096)  # the Fleet gate's bound on one request body

    @model_validator(mode="after")
    def _mode(self) -> TrainingSettings:
        remote = [n.agency for n in self.nodes if n.public_key is not None]
        if self.superlink_port is None:
            if remote:
                raise ValueError(f"nodes {remote} have public_key: remote training needs superlink_host/superlink_port")
            return self
        missing = [
            f for f in ("superlink_host", "superlink_cert", "superlink_key", "ca_cert") if getattr(self, f) is None
        ]
        if missing:
            raise ValueError(f"remote training (superlink_port) needs {', '.join(missing)}")
        local = [n.agency for n in self.nodes if n.public_key is None]
        if local:
            raise ValueError(f"remote training: nodes {local} need public_key (their SuperNodes run at their sites)")
        if self.ca_dir is not None:
            raise ValueError("ca_dir issues per-job material for local runs; remote training uses superlink_cert")
        return self


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
        resolve_relative(
            config.training, ("jobs_dir", "ca_dir", "superlink_cert", "superlink_key", "ca_cert", "crl"), base
        )
        for node in config.training.nodes:
            resolve_relative(node, ("store", "ledger", "holdout", "policy_dir", "public_key", "certificate"), base)
    return config
