"""send-and-receive over the Grid's public push/pull API with a short poll interval.

Flower's `Grid.send_and_receive` sleeps 3 s between pulls; xgate's protocols are chatty (one
round trip per vertical step), so the ServerApp polls every 0.2 s, always with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

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
    pending = set(ids)
    deadline = time.monotonic() + timeout
    replies: dict[int, Message] = {}
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            mid = reply.metadata.reply_to_message_id
            if mid in pending:
                replies[dst[mid]] = reply
                pending.discard(mid)
        if pending:
            time.sleep(POLL_S)
    return replies


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
