"""What `xgate config check` finds wrong in a node config; `xgate node serve` refuses to start on any.

Also decides where a node listens: `[node].listen` when set, else the address the CA published
for this agency's node in the federation directory (`xgate pki issue|sign --address`), else
127.0.0.1:0 (a development node without a directory), which is logged as such.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from audit.checkpoints import load_private_key, load_public_key
from crypto.at_rest import load_key as load_column_key
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
from nodes.config import NodeConfig
from policies.requesters import requesters_problem
from xgate.errors import XgateError
from xgate.pseudonym import load_key as load_pseudonym_key

DEV_LISTEN = "127.0.0.1:0"


def listen_address(config: NodeConfig) -> tuple[str, str]:
    """(host:port to bind, where it came from)."""
    settings = config.node
    if settings.listen:
        return settings.listen, "[node].listen"
    if config.tls is not None and settings.federation_directory is not None:
        from crypto.pki import load_directory

        try:
            entry = load_directory(settings.federation_directory, config.tls.ca).entry(settings.agency, "node")
        except XgateError:
            entry = None
        if entry is not None and entry.address:
            return entry.address, "federation directory"
    return DEV_LISTEN, "default (no [node].listen and no address published in the federation directory)"


def node_problems(config: NodeConfig, *, for_serve: bool = True) -> Problems:
    """Every problem with the config and the files it names (`for_serve`: the store must exist)."""
    p = Problems()
    s = config.node
    if for_serve and not s.store.exists():
        p.add(f"node.store = {s.store}: does not exist; run `xgate node load --config ...` first")
    elif s.store.exists():
        file_ok(p, "node.store", s.store)
    private_file_ok(p, "node.store", s.store)
    file_ok(p, "node.catalogue", s.catalogue)
    if s.policy_dir is not None and file_ok(p, "node.policy_dir", s.policy_dir, is_dir=True):
        why = requesters_problem(s.policy_dir)
        if why is not None:
            p.add(f"node.policy_dir: {why}")
    if s.signed_policies:
        policy_bundle_ok(p, "node.policy_dir", s.policy_dir, config.tls.ca if config.tls else None)
    # Each key file is also a key (serve refused garbage the check had called ok).
    keys: tuple[tuple[str, Path | None, Callable[[Path], object]], ...] = (
        ("node.pseudonym_key_file", s.pseudonym_key_file, load_pseudonym_key),
        ("node.column_key_file", s.column_key_file, load_column_key),
        ("node.audit_key", s.audit_key, load_private_key),
    )
    for key, path, load in keys:
        if path is not None and file_ok(p, key, path, secret=True):
            loads_ok(p, key, path, load)
    if s.gateway_audit_key is not None and file_ok(p, "node.gateway_audit_key", s.gateway_audit_key):
        loads_ok(p, "node.gateway_audit_key", s.gateway_audit_key, load_public_key)
    if s.audit_db is not None and s.audit_db.resolve() == s.store.resolve():
        p.add(f"node.audit_db = {s.audit_db}: is the store itself; the audit log needs a file of its own")
    if s.audit_db is not None:
        file_ok(p, "node.audit_db (its directory)", s.audit_db.parent, is_dir=True)
        private_file_ok(p, "node.audit_db", s.audit_db)
        if s.audit_key is None:
            p.add("node.audit_db is set but node.audit_key is not: nothing could sign this node's checkpoints")
    _tls_problems(p, config)
    address, source = listen_address(config)
    address_ok(p, f"listen ({source})", address)
    if config.training is not None:
        _training_problems(p, config)
    return p


def _tls_problems(p: Problems, config: NodeConfig) -> None:
    s = config.node
    tls = config.tls
    if tls is None:
        if not s.insecure:
            p.add("no [tls] table: a node serves only over mTLS (`--insecure` is for development only)")
    else:
        certificate_ok(p, "tls", tls.cert, tls.key, tls.ca, tls.crl, s.agency, "node")
        if tls.crl is None:
            p.add("tls.crl is not set: revocation would not be checked")
        if s.signing_key is None or s.federation_directory is None:
            p.add("a TLS node needs node.signing_key and node.federation_directory (signed envelopes)")
        else:
            if directory_ok(p, "node.federation_directory", s.federation_directory, tls.ca):
                signing_key_ok(p, "node.signing_key", s.signing_key, s.federation_directory, tls.ca, s.agency, "node")


def _training_problems(p: Problems, config: NodeConfig) -> None:
    t = config.training
    if t is None:
        return
    address_ok(p, "training.superlink", t.superlink)
    if t.supernode_cert is not None:
        certificate_ok(p, "training", t.supernode_cert, t.supernode_key, t.ca_cert, t.crl, config.node.agency,
                       "flower-supernode")  # fmt: skip
    else:
        file_ok(p, "training.ca_cert", t.ca_cert)
        file_ok(p, "training.supernode_key", t.supernode_key, secret=True)
    file_ok(p, "training.ledger (its directory)", t.ledger.parent, is_dir=True)
    private_file_ok(p, "training.ledger", t.ledger)
    for key, path in (("training.holdout", t.holdout),):
        if path is not None and file_ok(p, key, path):
            private_file_ok(p, key, path)
    policy_dir: Path | None = t.policy_dir or config.node.policy_dir
    if policy_dir is not None:
        file_ok(p, "training.policy_dir", policy_dir, is_dir=True)
