"""The gateway's remote training mode (agencies' own SuperNodes) built from its [training] settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from federated.remote_runner import RemoteTraining
    from gateway.config import TrainingSettings


def remote_training(training: TrainingSettings | None, catalogue: Path, state_dir: Path) -> RemoteTraining | None:
    """The gateway's remote training mode from its [training] settings; None in local mode."""
    if training is None or training.superlink_port is None:
        return None
    from crypto.flower_keys import FlowerSecurity
    from federated.remote import RemoteNode
    from federated.remote_runner import RemoteTraining
    from policies.catalogue import load_catalogue

    assert training.ca_cert and training.superlink_cert and training.superlink_key and training.superlink_host
    return RemoteTraining(
        state_dir=state_dir / "superlink",
        security=FlowerSecurity(training.ca_cert, training.superlink_cert, training.superlink_key, crl=training.crl),
        host=training.superlink_host,
        port=training.superlink_port,
        nodes=[
            RemoteNode(n.agency, n.public_key, n.certificate, tuple(n.datasets)) for n in training.nodes if n.public_key
        ],
        catalogue=load_catalogue(catalogue)[0],
        max_weight=training.max_weight,
        connect_timeout_s=training.connect_timeout_s,
        max_body_bytes=training.fleet_max_body_mb * 1024 * 1024,
    )
