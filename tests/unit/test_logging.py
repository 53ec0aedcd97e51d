"""xgate.logging: every process's lines are JSON, carry the process's component (from any thread),
and refuse (strict) or redact fields that could carry personal data; Flower's ServerApp process
logs that way too (the ClientApp process: tests/unit/test_clientapp_errors.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.clientapp_runtime import reset_structlog
from xgate.logging import FORBIDDEN_KEYS, configure, get_logger


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    reset_structlog()
    yield
    reset_structlog()


def _lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_lines_logged_from_another_thread_carry_the_component(capsys: pytest.CaptureFixture[str]) -> None:
    """gRPC handlers run in worker threads: a component bound as a context variable in the main thread
    never reached their lines."""
    configure("node:tax")
    worker = threading.Thread(target=lambda: get_logger("t").info("from_a_grpc_thread", n=1))
    worker.start()
    worker.join()
    get_logger("t").info("from_main")
    lines = {line["event"]: line for line in _lines(capsys.readouterr().err)}
    assert lines["from_a_grpc_thread"]["component"] == "node:tax"
    assert lines["from_main"]["component"] == "node:tax"


@pytest.mark.parametrize("key", ["pseudonym", "pseudonyms", "subject", "subjects", "case_id", "name"])
def test_fields_naming_a_person_are_refused_in_strict_mode_and_redacted_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    assert key in FORBIDDEN_KEYS
    configure("gateway")
    monkeypatch.setenv("XGATE_STRICT_LOGS", "1")
    with pytest.raises(ValueError, match=f"log field '{key}' may carry personal data"):
        get_logger("t").info("careless", **{key: "p-7f3a9c"})
    monkeypatch.delenv("XGATE_STRICT_LOGS")
    get_logger("t").info("careless", **{key: "p-7f3a9c"})
    (line,) = _lines(capsys.readouterr().err)
    assert line[key] == "[redacted]"


def test_the_serverapp_process_logs_structured_scrubbed_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from federated import horizontal_server, server_app
    from federated.jobs import parse_job

    job = parse_job(
        {"job_id": "log-job", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
         "label": "tax.label", "label_holder": "tax", "rounds": 1, "secagg": False, "min_nodes": 1}
    )  # fmt: skip

    def run(*_: Any) -> None:
        get_logger("federated.horizontal_server").info("round_done", subjects=3)

    monkeypatch.delenv("XGATE_STRICT_LOGS", raising=False)  # redacted, not refused: the line is read back
    monkeypatch.setattr(server_app, "exit_with_parent", lambda: None)
    monkeypatch.setattr(horizontal_server, "run_horizontal", run)
    server_app.main(None, SimpleNamespace(run_config=job.run_config(tmp_path)))  # type: ignore[arg-type]
    (line,) = [line for line in _lines(capsys.readouterr().err) if line["event"] == "round_done"]
    assert line["component"] == "serverapp" and line["subjects"] == "[redacted]"
