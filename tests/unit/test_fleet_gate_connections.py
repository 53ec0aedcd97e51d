"""The Fleet gate's per-address connection count (the protocol around it runs against the real gate
process in tests/integration/test_fleet_gate_slow_clients.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federated.fleet_gate_connections import ConnectionGuard
from federated.fleet_gate_server import parse_args


def test_an_address_gets_its_slots_back_as_its_connections_close() -> None:
    guard = ConnectionGuard(per_address=2)
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")  # a third is refused...
    assert guard.admit("10.0.0.2")  # ...for that address only
    guard.release("10.0.0.1")
    assert guard.open_from("10.0.0.1") == 1 and guard.admit("10.0.0.1")
    guard.release("10.0.0.1")
    guard.release("10.0.0.1")
    assert guard.open_from("10.0.0.1") == 0


def test_zero_means_no_limit() -> None:
    guard = ConnectionGuard(per_address=0)
    assert all(guard.admit("10.0.0.1") for _ in range(1000))


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=200))
def test_no_address_ever_holds_more_than_its_limit(steps: list[tuple[str, bool]]) -> None:
    guard = ConnectionGuard(per_address=3)
    held: dict[str, int] = {}
    for address, opening in steps:
        if opening:
            if guard.admit(address):
                held[address] = held.get(address, 0) + 1
        elif held.get(address):
            guard.release(address)
            held[address] -= 1
        assert guard.open_from(address) == held.get(address, 0) <= 3


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-connections", "0", "--max-connections must be at least 1"),
        ("--max-connections-per-address", "-1", "--max-connections-per-address must be at least 0"),
        ("--header-timeout-s", "-2", "--header-timeout-s must be at least 0"),
        ("--body-grace-s", "-1", "--body-grace-s must be at least 0"),
        ("--body-min-bytes-per-s", "0", "--body-min-bytes-per-s must be above 0"),
    ],
)
def test_the_gates_limits_refuse_values_that_mean_nothing(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = ["--host", "h", "--port", "1", "--upstream-port", "2", "--ca", "c", "--cert", "c", "--key", "k"]
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*required, option, value])
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
