"""`xgate train submit --gateway URL`: submit a job through the gateway's REST API and follow it.

The gateway decides (Cedar `train`, its ε ledger), runs the job on its configured nodes and
records every step on its audit log; this side only sends the job file and polls the status.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client.sdk import GatewayClient
from federated.jobs import load_job
from xgate.errors import PolicyDenied, XgateError


def submit_remote(
    job_file: Path,
    gateway: str | Sequence[str],
    api_key: str,
    *,
    ca_cert: Path | None = None,
    wait: bool = True,
    say: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Returns the final status (or the 202 answer with wait=False); raises XgateError on refusal/failure.

    Several gateways: the job goes to the first that can be reached and is followed there."""
    load_job(job_file)  # local validation first: a clear message before any request
    body = tomllib.loads(job_file.read_text(encoding="utf-8-sig"))
    with GatewayClient(gateway, api_key, verify=str(ca_cert) if ca_cert else True) as client:
        accepted = client.submit_training_job(body)
        decision = accepted.get("decision", {})
        say(
            f"job {accepted['job_id']} accepted by the gateway (policies {', '.join(decision.get('policy_ids', []))};"
            f" datasets {', '.join(decision.get('datasets', []))}; epsilon {decision.get('epsilon', 0):g})"
        )
        say(f"status: {client.url}{accepted['status_url']}")
        if not wait:
            return accepted
        seen = {"rounds_done": -1, "state": ""}

        def progress(status: dict[str, Any]) -> None:
            done, state = int(status.get("rounds_done") or 0), str(status.get("state"))
            if (done, state) != (seen["rounds_done"], seen["state"]):
                total = int(status.get("rounds") or 0) or 1
                bar = "#" * int(20 * done / total)
                say(f"[{bar:<20}] round {done}/{total} {state}")
                seen.update(rounds_done=done, state=state)

        final = client.wait_training_job(accepted["job_id"], poll_s=poll_s, on_status=progress)
    if final.get("state") == "refused":
        raise PolicyDenied(f"job '{accepted['job_id']}' refused by a node: {final.get('reason')}")
    if final.get("state") != "completed":
        raise XgateError(f"job '{accepted['job_id']}' failed: {final.get('reason')}")
    return final
