"""The Fleet gate's per-address connection count (the protocol around it runs against the real gate
process in tests/integration/test_fleet_gate_slow_clients.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federated.fleet_gate_connections import ConnectionGuard


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
