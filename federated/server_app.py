"""The one ServerApp of xgate jobs: dispatches on the job's mode (run config `job-json`)."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federated.events import JsonlSink, make_event
from federated.jobs import Mode, job_from_run_config
from federated.orphan_guard import exit_with_parent
from xgate.errors import JobFailed, VerticalFailed
from xgate.logging import configure

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    exit_with_parent()  # a SuperLink killed with its runner takes this ServerApp with it
    configure("serverapp")  # this process's log lines: structured and scrubbed, as every xgate process's
    job = job_from_run_config(dict(context.run_config))
    job_dir = Path(str(context.run_config["job-dir"]))
    try:
        if job.mode is Mode.HORIZONTAL:
            from federated.horizontal_server import run_horizontal

            run_horizontal(grid, context, job, job_dir)
        else:
            from federated.vertical_server import run_vertical

            run_vertical(grid, context, job, job_dir)
    except (JobFailed, VerticalFailed):
        raise  # its `job_failed` is recorded, naming the agency: once is the whole story
    except Exception as exc:
        JsonlSink(job_dir / "server-events.jsonl")(make_event(job.job_id, "server_error", reason=str(exc)[:300]))
        raise
