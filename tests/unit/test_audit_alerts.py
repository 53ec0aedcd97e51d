"""Alert rules: bursts, off-hours, repeated denials, many subjects (pure, over records)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from audit.alerts import (
    AlertConfig,
    burst,
    evaluate,
    is_off_hours,
    many_subjects,
    off_hours,
    repeated_denials,
    statement_reused,
)
from audit.testing import pseudonym, record

# 10:00 Beijing time on a Wednesday.
T0 = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)
CFG = AlertConfig(burst_requests=5, burst_window_s=60, denials=3, denials_window_s=300, distinct_subjects=4)


def _entries(specs: list[tuple[float, dict[str, object]]]) -> list[tuple[int, object]]:
    return [(i, record(i, time=T0 + timedelta(seconds=s), **kw)) for i, (s, kw) in enumerate(specs)]  # type: ignore[arg-type]


def test_burst_fires_once_per_cluster_with_its_indices() -> None:
    specs = [(i * 5.0, {"user": "alice"}) for i in range(6)] + [(10_000.0, {"user": "alice"})]
    alerts = burst(_entries(specs), CFG)  # type: ignore[arg-type]
    assert len(alerts) == 1
    assert alerts[0].entry_indices == (0, 1, 2, 3, 4, 5) and alerts[0].user == "alice"


def test_burst_below_threshold_or_spread_out_is_quiet() -> None:
    assert burst(_entries([(i * 5.0, {}) for i in range(4)]), CFG) == []  # type: ignore[arg-type]
    assert burst(_entries([(i * 20.0, {}) for i in range(10)]), CFG) == []  # type: ignore[arg-type]


def test_burst_is_per_user() -> None:
    specs = [(i * 1.0, {"user": f"u{i % 3}"}) for i in range(12)]
    assert burst(_entries(specs), CFG) == []  # type: ignore[arg-type]


def test_off_hours_and_weekend() -> None:
    cfg = AlertConfig()
    assert not is_off_hours(T0, cfg)
    assert is_off_hours(T0.replace(hour=15), cfg)  # 23:00 Beijing
    assert is_off_hours(T0 + timedelta(days=3), cfg)  # Saturday
    assert not is_off_hours(T0 + timedelta(days=3), cfg.model_copy(update={"weekends_off_hours": False}))
    specs = [(0.0, {}), (13 * 3600.0, {"user": "bob"}), (13 * 3600.0 + 60, {"user": "bob"})]
    alerts = off_hours(_entries(specs), cfg)  # type: ignore[arg-type]
    assert [(a.user, a.entry_indices) for a in alerts] == [("bob", (1, 2))]


def test_repeated_denials() -> None:
    specs = [(i * 30.0, {"decision": "deny", "kind": "policy_decision"}) for i in range(3)] + [
        (100.0, {"decision": "allow"})
    ]
    alerts = repeated_denials(_entries(specs), CFG)  # type: ignore[arg-type]
    assert len(alerts) == 1 and alerts[0].entry_indices == (0, 1, 2)
    assert repeated_denials(_entries(specs[:2]), CFG) == []  # type: ignore[arg-type]


def test_many_distinct_subjects_not_repeats() -> None:
    same = [(i * 1.0, {"subjects": (pseudonym(1),)}) for i in range(10)]
    assert many_subjects(_entries(same), CFG) == []  # type: ignore[arg-type]
    wide = [(i * 1.0, {"subjects": (pseudonym(i), pseudonym(i + 100))}) for i in range(2)]
    alerts = many_subjects(_entries(wide), CFG)  # type: ignore[arg-type]
    assert len(alerts) == 1 and alerts[0].count == 4


def test_evaluate_runs_every_rule_and_orders_by_time() -> None:
    specs = [(i * 1.0, {"decision": "deny"}) for i in range(6)]
    rules = {a.rule for a in evaluate(_entries(specs), CFG)}  # type: ignore[arg-type]
    assert rules == {"burst", "repeated_denials", "many_subjects"}


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        AlertConfig(burst_requests=0)
    with pytest.raises(ValidationError):
        AlertConfig(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        AlertConfig(unknown=1)  # type: ignore[call-arg]


def _answer(i: int, kind: str, request_id: str, statement: str) -> tuple[int, object]:
    entry = record(i, kind=kind, request_id=request_id, time=T0 + timedelta(seconds=i), user="cw-zhang")
    return i, entry.model_copy(update={"digests": {**entry.digests, "requester_statement": statement}})


def test_a_signed_check_answered_under_two_requests_is_an_alert() -> None:
    """THREAT_MODEL I1b: a node answers a statement while it is fresh, so a relaying gateway could
    have it answered again under a request id of its own; the node's log shows it."""
    entries = [_answer(0, "node_response", "req-a", "s1" * 32), _answer(1, "node_response", "req-b", "s1" * 32)]
    (alert,) = statement_reused(entries, CFG)  # type: ignore[arg-type]
    assert (alert.rule, alert.user, alert.count, alert.entry_indices) == ("statement_reused", "cw-zhang", 2, (0, 1))
    assert "2 request ids" in alert.summary and {a.rule for a in evaluate(entries, CFG)} >= {"statement_reused"}  # type: ignore[arg-type]


def test_one_request_answering_a_statement_several_times_is_quiet() -> None:
    """The cohort view asks a node once per criterion, and the gateway logs its decision and its
    result, all under one request id; a refused attempt answered nothing."""
    same_request = [_answer(i, kind, "req-a", "s1" * 32) for i, kind in enumerate(["node_response"] * 3 + ["result"])]
    assert statement_reused(same_request, CFG) == []  # type: ignore[arg-type]
    refused_then_answered = [
        _answer(0, "policy_decision", "req-a", "s1" * 32),
        _answer(1, "result", "req-b", "s1" * 32),
    ]
    assert statement_reused(refused_then_answered, CFG) == []  # type: ignore[arg-type]
    two_statements = [_answer(0, "node_response", "req-a", "s1" * 32), _answer(1, "node_response", "req-b", "s2" * 32)]
    assert statement_reused(two_statements, CFG) == []  # type: ignore[arg-type]
