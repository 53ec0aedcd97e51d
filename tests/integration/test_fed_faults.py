"""A registered node vanishes (SIGKILL, no goodbye) while the SuperLink still counts it online: the
run sends it round 1 anyway, the round completes once its timeout passes with the remaining
min_nodes, the drop is an audit event, and nothing hangs or outlives the job."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from federated.jobs import parse_job
from federated.runner import Federation, run_job
from tests.integration.test_fed_horizontal import FEATS, assert_no_orphans, make_nodes
from xgate.errors import NodeUnavailable

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=150), pytest.mark.timeout(900)]


def test_node_drop_continues_with_min_nodes(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, [200, 200, 200], seed=5)
    job = parse_job(
        {
            "job_id": "it-drop",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 1,
            "secagg": False,
            "min_nodes": 2,
            # The dropped node is waited for once per fit and once per evaluation: 25 s each (40 s
            # cost 30 s of the suite's 15 minutes); the live nodes answer a 200-row round in seconds.
            "round_timeout_s": 25,
            "job_timeout_s": 300,
        }
    )
    feds: list[Federation] = []
    events: list[dict[str, Any]] = []

    def on_started(fed: Federation) -> None:
        # Killed once registered, before the run is submitted: at "run_started" a fast machine's warm
        # ClientApp had already answered round 1. The SuperLink counts a node online until two missed
        # heartbeats (about a minute), so round 1 is still sent to it.
        feds.append(fed)
        fed.kill_node("region2")

    # Known issue: under heavy CPU contention (load ~9 on 2 cores) the Flower workflow has been seen
    # to end this run with an internal KeyError(1) (server_error). One retry, reported as a warning;
    # a second failure fails the test. Tracked in the federated issue note.
    res = None
    for attempt in range(2):
        feds.clear()
        events.clear()
        try:
            res = run_job(job, nodes, job_dir=tmp_path / f"job{attempt}", on_event=events.append, on_started=on_started)
            break
        except NodeUnavailable as exc:
            if attempt == 1:
                raise
            warnings.warn(f"node-drop run failed ({exc.message}); retrying once", stacklevel=1)
    assert res is not None and res.status == "completed"
    rounds = {e["round"]: e for e in events if e["event"] == "round_completed"}
    assert sorted(rounds[1]["agencies"]) == ["region0", "region1"]
    dropped = [e for e in events if e["event"] == "node_dropped"]
    assert dropped and all(e["agency"] == "region2" for e in dropped)
    assert_no_orphans(feds[0])
