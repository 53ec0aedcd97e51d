"""A coordinator that writes its own run config cannot switch off a node's admission.

The run config travels from the coordinator's `flwr run` to every ClientApp. It used to carry a
`ledger-check` flag the ClientApps obeyed, so a coordinator could run a job no node approved
(any job id: fresh PSI and DP state; no DP: embeddings in the clear) by setting it to false. The
ClientApps now always require their own ledger's approval (federated/admission.py
`admit_at_node`), tried here on the real handlers (tests/clientapp_relay.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clientapp_relay import ClientAppRelay, federation, vertical_job
from xgate.errors import VerticalFailed

SETS = {"civil": [f"p{i:04d}" for i in range(60)], "tax": [f"p{i:04d}" for i in range(10, 70)]}


@pytest.mark.parametrize("flag", [{}, {"ledger-check": False}, {"ledger-check": "false"}])
def test_a_job_no_node_approved_is_refused_whatever_the_run_config_says(
    tmp_path: Path, flag: dict[str, object]
) -> None:
    fed = federation(tmp_path, SETS)
    unapproved = vertical_job(list(SETS), min_nodes=2).model_copy(update={"job_id": "never-approved"})
    relay = ClientAppRelay(unapproved, fed.relay.configs, tmp_path)
    relay.run_config_extra = flag
    with pytest.raises(VerticalFailed, match=r"'query\.hello' failed: .*never-approved"):
        relay.hello()


def test_positive_control_the_approved_job_is_answered(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    assert {str(m.content["cfg"]["agency"]) for m in fed.relay.hello().values()} == set(SETS)
