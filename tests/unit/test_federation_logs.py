"""A job id run again appends to its SuperNodes' logs: each run reads only its own lines.

Before, `wait_registered` took the first `SuperNode ID:` line of the whole log, the earlier run's,
so every resubmission of a job id after a failure failed with "came up as a node it was not
registered as" (thirteenth session's review)."""

from __future__ import annotations

import sys
from pathlib import Path

from federated.deployment import Federation


def test_a_rerun_reads_the_supernode_id_from_its_own_lines(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "node-tax.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO :      SuperNode ID: 111 (an earlier run of this job)\n")
    announce = "import time; print('INFO :      SuperNode ID: 222', flush=True); time.sleep(60)"
    with Federation(tmp_path, insecure=True, registered={"tax": 222}) as fed:
        fed.spawn("node-tax", [sys.executable, "-c", announce], tmp_path / "home")
        assert fed.wait_registered(["tax"], timeout=30) == {222: "tax"}
        assert "111" not in fed.procs["node-tax"].output()
    assert log.read_text().startswith("INFO :      SuperNode ID: 111")  # the earlier run's lines are kept
