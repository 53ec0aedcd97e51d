"""A SuperNode's ClientApp process, in this process: the entry point the node's warm server runs
for each message (`federated.warm_clientapp.serve`'s default, Flower's `flwr-clientapp` main
before xgate had its own), with only the Runtime API transport to the SuperNode replaced: the
message, its context and the job's app bundle (FAB, built by Flower's own builder and installed
by Flower's own `install_from_fab` into a temporary FLWR_HOME) are handed in, and the reply the
process would push to the SuperNode, i.e. what reaches the coordinator, comes back.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from flwr.app import Context, Message, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.task_identity import TaskIdentity
from structlog._config import BoundLoggerLazyProxy

from federated import warm_clientapp

NODE_ID = 1


class _Quiet:
    """Stands in for the Runtime API client and the heartbeat sender: the transport only."""

    is_running = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    @classmethod
    def from_server_address(cls, *args: Any, **kwargs: Any) -> _Quiet:
        return cls()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def reset_structlog() -> None:
    """Undo a process's `xgate.logging.configure` in this test process: the defaults back, and no
    module-level logger left cached on the streams of a test that has finished."""
    structlog.reset_defaults()
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, BoundLoggerLazyProxy):
                vars(value).pop("bind", None)


def node_entry() -> Any:
    """The `flwr-clientapp` main a SuperNode's warm server forks for every message."""
    ref = inspect.signature(warm_clientapp.serve).parameters["entry_point"].default
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


def message(message_type: str, content: RecordDict | None = None, run_id: int = 1) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, NODE_ID, 1
    return Message(content=content or RecordDict(), dst_node_id=NODE_ID, message_type=message_type, group_id="0")


def run_node_clientapp(
    monkeypatch: pytest.MonkeyPatch,
    flwr_home: Path,
    app_dir: Path,
    msg: Message,
    node_config: dict[str, Any],
    run_config: dict[str, Any],
    run_id: int = 1,
) -> Message:
    """Run `msg` through the node's ClientApp process for the bundle built from `app_dir`;
    returns the reply it pushes to its SuperNode."""
    from flwr.supernode.runtime import run_clientapp as runtime

    fab = build_fab_from_disk(app_dir)
    fab_hash = hashlib.sha256(fab).hexdigest()
    run = SimpleNamespace(run_id=run_id, fab_id="xgate/xgate-job", fab_version="1.0.0", fab_hash=fab_hash)
    context = Context(run_id, NODE_ID, node_config, RecordDict(), run_config)
    pushed: list[Message] = []
    monkeypatch.setenv("FLWR_HOME", str(flwr_home))
    monkeypatch.setattr(runtime, "RuntimeHttpClient", _Quiet)
    monkeypatch.setattr(runtime, "HeartbeatSender", _Quiet)
    monkeypatch.setattr(runtime, "make_task_heartbeat_fn_http", lambda client: None)
    monkeypatch.setattr(runtime, "register_signal_handlers", lambda **kw: None)
    monkeypatch.setattr(runtime, "event", lambda *a, **kw: None)
    monkeypatch.setattr(runtime, "flwr_exit", lambda *a, **kw: None)
    monkeypatch.setattr(runtime, "push_task_output", lambda **kw: None)
    monkeypatch.setattr(
        runtime, "pull_task_input", lambda client: (msg, context, run, SimpleNamespace(hash_str=fab_hash, content=fab))
    )
    monkeypatch.setattr(runtime, "push_message", lambda client, reply, ctx: pushed.append(reply))
    monkeypatch.setattr(sys, "argv", ["flwr-clientapp", "--insecure", "--token", "t0k3n"])
    try:
        node_entry()()
    finally:
        reset_structlog()
    assert len(pushed) == 1, "the ClientApp process pushed no reply"
    return pushed[0]
