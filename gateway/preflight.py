"""What `xgate config check` finds wrong in a gateway config; `xgate gateway serve` refuses to start on any."""

from __future__ import annotations

from pathlib import Path

from audit.checkpoints import load_private_key, load_public_key
from crypto.masks import MASK_KEY_BYTES
from crypto.preflight import (
    Problems,
    address_ok,
    certificate_ok,
    directory_ok,
    file_ok,
    loads_ok,
    policy_bundle_ok,
    private_file_ok,
    signing_key_ok,
)
from gateway.auth import check_users_file
from gateway.config import GatewayConfig, GatewaySettings
from policies.requesters import requesters_problem
from xgate.errors import ConfigError, XgateError


def load_mask_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"mask key file {path}: {exc.strerror}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"mask key file {path}: expected {2 * MASK_KEY_BYTES} hex characters") from None
    if len(key) != MASK_KEY_BYTES:
        raise ConfigError(f"mask key file {path}: expected {MASK_KEY_BYTES} bytes")
    return key


def _users_ok(p: Problems, s: GatewaySettings) -> None:
    if s.users_file is not None:
        if file_ok(p, "gateway.users_file", s.users_file, secret=True):
            loads_ok(p, "gateway.users_file", s.users_file, check_users_file)
    elif s.database is None:  # replicated mode: users live in the shared database (gateway/user_store.py)
        p.add("gateway.users_file is not set: no REST user could authenticate (`xgate pki add-user`)")


def _state_problems(p: Problems, s: GatewaySettings) -> None:
    """The state directory and the audit log: there, and (holding personal data) owner-only."""
    if s.state_dir is not None and not s.state_dir.exists():
        file_ok(p, "gateway.state_dir (its parent)", s.state_dir.parent, is_dir=True)
    state = s.state_dir or s.mask_key_file.parent / "state"  # as gateway/wiring.state_dir_of
    if state.is_dir():
        for db in sorted(state.glob("*.sqlite")):  # budgets, consents, approvals, ledgers, jobs, contexts
            private_file_ok(p, "gateway.state_dir", db)
    if s.audit_db is not None:
        file_ok(p, "gateway.audit_db (its directory)", s.audit_db.parent, is_dir=True)
        private_file_ok(p, "gateway.audit_db", s.audit_db)
        if s.audit_key is None:
            p.add("gateway.audit_db is set but gateway.audit_key is not (`xgate keys audit --out PREFIX`)")
        elif file_ok(p, "gateway.audit_key", s.audit_key, secret=True):
            loads_ok(p, "gateway.audit_key", s.audit_key, load_private_key)


def gateway_problems(config: GatewayConfig) -> Problems:
    p = Problems()
    s = config.gateway
    training_nodes = config.training.nodes if config.training is not None else []
    if not config.nodes and not training_nodes:
        p.add(
            "[nodes] is empty: the gateway would have no agency to ask; add [nodes.<agency>] address = "
            '"host:port" per agency (`xgate gateway init` writes them from federation.json)'
        )
    for agency, ref in config.nodes.items():
        address_ok(p, f"nodes.{agency}.address", ref.address)
        if ref.witness_key is not None and file_ok(p, f"nodes.{agency}.witness_key", ref.witness_key):
            loads_ok(p, f"nodes.{agency}.witness_key", ref.witness_key, load_public_key)
    address_ok(p, "gateway.host/port", f"{s.host}:{s.port}")
    file_ok(p, "gateway.catalogue", s.catalogue)
    file_ok(p, "gateway.program_dir", s.program_dir, is_dir=True)
    if file_ok(p, "gateway.mask_key_file", s.mask_key_file, secret=True):
        try:
            load_mask_key(s.mask_key_file)
        except XgateError as exc:
            p.add(f"gateway.mask_key_file = {s.mask_key_file}: {exc.message}")
    _users_ok(p, s)
    if s.policy_dir is not None and file_ok(p, "gateway.policy_dir", s.policy_dir, is_dir=True):
        why = requesters_problem(s.policy_dir)
        if why is not None:
            p.add(f"gateway.policy_dir: {why}")
    if s.signed_policies:
        policy_bundle_ok(p, "gateway.policy_dir", s.policy_dir, config.tls.ca if config.tls else None)
    _state_problems(p, s)
    tls = config.tls
    if tls is None:
        if not s.insecure:
            p.add("no [tls] table: the gateway serves only over TLS (`--insecure` is for development only)")
    else:
        _tls_problems(p, config)
    if config.training is not None:
        _training_problems(p, config)
    return p


def _tls_problems(p: Problems, config: GatewayConfig) -> None:
    tls = config.tls
    if tls is None:
        return
    certificate_ok(p, "tls", tls.cert, tls.key, tls.ca, tls.crl, None, "gateway")
    if tls.crl is None:
        p.add("tls.crl is not set: revocation would not be checked")
    if not directory_ok(p, "tls.federation_directory", tls.federation_directory, tls.ca):
        return
    from crypto.peers import load_cert, peer_identity
    from crypto.pki import load_directory

    try:
        agency = peer_identity(load_cert(tls.cert)).agency
    except XgateError:
        return  # reported by certificate_ok
    signing_key_ok(p, "tls.signing_key", tls.signing_key, tls.federation_directory, tls.ca, agency, "gateway")
    listed = {(e.agency, e.kind) for e in load_directory(tls.federation_directory, tls.ca).entries}
    for node in config.nodes:
        if (node, "node") not in listed:
            p.add(f"nodes.{node}: the federation directory lists no node certificate for '{node}'")


def _training_problems(p: Problems, config: GatewayConfig) -> None:
    t = config.training
    if t is None:
        return
    if t.superlink_port is not None:
        certificate_ok(p, "training.superlink", t.superlink_cert, t.superlink_key, t.ca_cert, t.crl, None,
                       "flower-superlink")  # fmt: skip
    for node in t.nodes:
        for key, path in (("public_key", node.public_key), ("certificate", node.certificate), ("store", node.store),
                          ("ledger", node.ledger), ("holdout", node.holdout)):  # fmt: skip
            if path is not None and not (key == "ledger" and not path.exists()):
                usable = file_ok(p, f"training.nodes[{node.agency}].{key}", path)
                if usable and key in ("store", "ledger", "holdout"):
                    private_file_ok(p, f"training.nodes[{node.agency}].{key}", path)
