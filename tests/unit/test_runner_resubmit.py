"""A job id whose run failed can be submitted again, and a failed run leaves no CA key behind.
Found in a walkthrough: a run failed while its ephemeral Flower CA was issuing the job's
certificates; the CA's private key stayed in the job directory, and every later submission of the
job id failed with "a CA already exists", for good.

Flower's start is replaced by a failure here (the runner's edge is tested over real processes in
tests/integration); what is checked is what the runner leaves in the job directory between runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto import flower_keys, pki
from federated.deployment import Federation
from federated.jobs import parse_job
from federated.runner import run_job
from tests.integration.test_fed_horizontal import FEATS, make_nodes
from xgate.errors import CryptoError, NodeUnavailable


def test_a_run_failing_as_its_ca_issues_leaves_no_key_and_the_job_id_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = make_nodes(tmp_path, [40, 40], seed=3)
    job = parse_job(
        {"job_id": "again", "purpose": "fraud-model", "mode": "horizontal", "features": FEATS,
         "label": "tax.label", "rounds": 1, "secagg": False, "min_nodes": 2}
    )  # fmt: skip
    ca_key = tmp_path / "job" / "pki" / "ca" / pki.CA_KEY
    certify = flower_keys.certify_supernode_key

    def fails_for_region1(ca_dir: Path, agency: str, *args: object, **kwargs: object) -> object:
        if agency == "region1":
            assert ca_key.exists()  # the job CA is issuing: the failure comes mid-issuance
            raise CryptoError("the HSM went away (test)")
        return certify(ca_dir, agency, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flower_keys, "certify_supernode_key", fails_for_region1)
    with pytest.raises(CryptoError, match=r"the HSM went away \(test\)"):
        run_job(job, nodes, job_dir=tmp_path / "job")
    assert not ca_key.exists()  # the job CA can issue nothing more, failure or not

    monkeypatch.setattr(flower_keys, "certify_supernode_key", certify)
    started: list[bytes] = []

    def superlink_down(self: Federation, timeout: float = 60.0) -> None:
        started.append((self.job_dir / "pki" / "ca.cert.pem").read_bytes())  # the run's own TLS material
        raise NodeUnavailable("federation", "the SuperLink did not start (test)")

    monkeypatch.setattr(Federation, "start_superlink", superlink_down)
    for _ in range(2):  # submitted again, twice: each run gets as far as Flower, with a fresh job CA
        with pytest.raises(NodeUnavailable, match=r"the SuperLink did not start \(test\)"):
            run_job(job, nodes, job_dir=tmp_path / "job")
    assert len(started) == 2 and started[0] != started[1]
    assert not ca_key.exists()
