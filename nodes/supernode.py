"""`xgate node supernode`: the node config's `[training]` table turned into a validated SuperNode site.

The supervisor (federated/supernode_site.py) knows nothing of node configs; this is the one place
that reads them for it, so `federated` never imports `nodes`.
"""

from __future__ import annotations

from federated.node import NodeConfig as ClientNodeConfig
from federated.node import node_config_arg
from federated.supernode_site import SupernodeSite, check_supernode_key, require_file
from nodes.config import NodeConfig
from xgate.errors import ConfigError


def site_from_config(cfg: NodeConfig) -> SupernodeSite:
    """Validate the node's `[training]` table; ConfigError (one line, naming the field) otherwise."""
    t = cfg.training
    if t is None:
        raise ConfigError("node config has no [training] table (superlink, ca_cert, supernode_key, ledger, policy_dir)")
    host, port = t.superlink.rsplit(":", 1)
    if not 0 < int(port) < 65536:
        raise ConfigError(f"[training] superlink: port {port} is out of range")
    require_file(t.ca_cert, "ca_cert")
    if t.crl is not None:
        require_file(t.crl, "crl")
    if t.holdout is not None:
        require_file(t.holdout, "holdout")
    check_supernode_key(t.supernode_key, cfg.node.agency, t.ca_cert, t.supernode_cert, t.crl)
    policy_dir = t.policy_dir or cfg.node.policy_dir
    if policy_dir is None or not policy_dir.is_dir():
        raise ConfigError(f"[training] policy_dir: not a directory: {policy_dir}")
    if not cfg.node.store.is_file():
        raise ConfigError(f"[node] store: file not found: {cfg.node.store}")
    # signed_policies: each job's admission verifies the CA-signed bundle, as the node's start does
    policy_ca = t.ca_cert if cfg.node.signed_policies else None
    # The SuperNode's certified key also signs this node's PSI agreement keys; the CA checks its peers'.
    client = ClientNodeConfig(
        cfg.node.store, cfg.node.agency, t.ledger, t.holdout, policy_dir, policy_ca,
        identity_key=t.supernode_key if t.supernode_cert is not None else None,
        identity_cert=t.supernode_cert, ca_cert=t.ca_cert, crl=t.crl,
    )  # fmt: skip
    node_config_arg(client)  # refuses paths Flower's --node-config cannot carry
    home = t.state_dir or t.ledger.parent / "flwr-supernode"
    return SupernodeSite(cfg.node.agency, f"{host}:{port}", t.ca_cert, t.supernode_key, client, home, t.idle_poll_s)
