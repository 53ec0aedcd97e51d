"""`federated.grid_io.QuickPollGrid`: Flower's send-and-receive contract, pulled every POLL_S."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from federated import grid_io


@dataclass
class _Grid:
    """Replies to pushed message `i` become pullable at the `ready[i]`-th pull (never if absent)."""

    ready: dict[int, int]
    pulls: int = 0
    asked: list[set[str]] = field(default_factory=list)

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        wanted = set(ids)
        self.asked.append(wanted)
        due = [f"m{i}" for i, at in self.ready.items() if at == self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in due if m in wanted]

    def get_node_ids(self) -> list[int]:
        return [7, 8]


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid_io, "POLL_S", 0.01)


def _replied(replies: Iterable[Any]) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_pulled_until_none_is_missing_and_only_missing_ones_are_asked_for() -> None:
    grid = _Grid({0: 1, 1: 3, 2: 3})
    replies = grid_io.QuickPollGrid(grid).send_and_receive(["a", "b", "c"], timeout=None)  # type: ignore[arg-type]
    assert _replied(replies) == ["m0", "m1", "m2"] and grid.pulls == 3
    assert grid.asked == [{"m0", "m1", "m2"}, {"m1", "m2"}, {"m1", "m2"}]


def test_a_reply_that_never_comes_ends_the_wait_at_the_timeout_with_the_others() -> None:
    grid = _Grid({0: 2})
    t0 = time.monotonic()
    replies = grid_io.QuickPollGrid(grid).send_and_receive(["a", "b"], timeout=0.2)  # type: ignore[arg-type]
    assert _replied(replies) == ["m0"]
    assert 0.2 <= time.monotonic() - t0 < 2.0
    assert grid.pulls >= 5  # asked again every POLL_S, not every 3 s as Flower's own


def test_everything_else_is_the_wrapped_grids() -> None:
    assert grid_io.quick_polls(_Grid({})).get_node_ids() == [7, 8]  # type: ignore[arg-type]
