"""send-and-receive over the Grid's public push/pull API with a short poll interval.

Flower's `Grid.send_and_receive` sleeps 3 s between pulls; xgate's protocols are chatty (one
round trip per vertical step), so the ServerApp polls every 0.2 s, always with a deadline
(`exchange`). Flower's own workflows (SecAgg+: five exchanges per round) are handed a Grid whose
`send_and_receive` polls the same way (`QuickPollGrid`): each of their exchanges waited about 3 s
for replies that had come in a fraction of a second (docs/FEDERATED.md, "Architecture").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.2


def exchange(grid: Grid, messages: Sequence[Message], timeout: float) -> dict[int, Message]:
    """Push messages; return the replies that arrive before `timeout` seconds, keyed by the node
    each message was sent to (the SuperLink itself answers for unreachable nodes, so the reply's
    source is not always that node)."""
    if not messages:
        return {}
    ids = list(grid.push_messages(messages))
    dst = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}
    replies = _pull_replies(grid, ids, time.monotonic() + timeout)
    return {dst[r.metadata.reply_to_message_id]: r for r in replies}


def _pull_replies(grid: Grid, ids: Iterable[str], deadline: float | None) -> list[Message]:
    """One reply to each message id, pulled every POLL_S until all are in or `deadline` (None: none)."""
    pending = set(ids)
    replies: list[Message] = []
    while pending and (deadline is None or time.monotonic() < deadline):
        for reply in grid.pull_messages(pending):
            if reply.metadata.reply_to_message_id in pending:
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(POLL_S)
    return replies


class QuickPollGrid:
    """A Grid whose `send_and_receive` pulls every POLL_S instead of every 3 s, with Flower's
    contract: push, then pull until every message has its reply or `timeout` seconds passed (None:
    until every reply is in). Everything else is the wrapped Grid's."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        ids = list(self._grid.push_messages(messages))
        return _pull_replies(self._grid, ids, None if timeout is None else time.monotonic() + timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def quick_polls(grid: Grid) -> Grid:
    """`grid` as Flower's workflows should see it (QuickPollGrid), typed as the Grid they expect."""
    return cast(Grid, QuickPollGrid(grid))


def allowed_nodes(run_config: Mapping[str, Any]) -> set[int] | None:
    """The node ids a run may use (run config `node-ids`, set when the SuperLink outlives the job and
    other agencies' SuperNodes are online too); None: every connected node."""
    ids = str(run_config.get("node-ids", "")).strip()
    return {int(i) for i in ids.split(",")} if ids else None


def cfg_of(msg: Message) -> dict[str, Any]:
    """A message's `cfg` ConfigRecord as a plain dict (Flower's value union is too wide to type)."""
    return dict(msg.content["cfg"]) if "cfg" in msg.content.config_records else {}


def arrays_of(msg: Message) -> dict[str, np.ndarray]:
    """A message's `arrays` ArrayRecord as numpy arrays (empty when absent)."""
    if "arrays" not in msg.content.array_records:
        return {}
    return {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
