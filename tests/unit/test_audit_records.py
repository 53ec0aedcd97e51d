"""Audit records: canonical encoding, versioning, and refusal of anything like personal data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from audit.records import SCHEMA, AuditRecord
from audit.testing import pseudonym, record
from xgate.errors import InvalidInput


def test_canonical_is_sorted_compact_utf8_and_versioned() -> None:
    rec = record(1, metadata={"note": "审核通过"})
    data = rec.canonical()
    body = json.loads(data)
    assert body["schema"] == SCHEMA
    assert data == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "审核通过".encode() in data


def test_canonical_equals_pydantic_dump() -> None:
    rec = record(2, decision="deny", policy_ids=("p1", "p2"), policy_set_hash="ab" * 32, metadata={"n": None, "k": 3})
    ref = rec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert json.loads(rec.canonical()) == ref


def test_time_is_normalised_to_utc_milliseconds() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=timezone(timedelta(hours=8)))
    body = json.loads(record(1, time=t).canonical())
    assert body["time"] == "2026-01-01T19:04:05.678Z"
    with pytest.raises(ValidationError):
        record(1, time=datetime(2026, 1, 1))  # naive


@given(st.integers(0, 10_000), st.sampled_from(["request", "result", "training_round", "audit_read"]))
def test_parse_roundtrip(i: int, kind: str) -> None:
    rec = record(i, kind=kind)
    assert AuditRecord.parse(rec.canonical()) == rec


def test_parse_refuses_non_canonical_bytes() -> None:
    data = record(1).canonical()
    spaced = json.dumps(json.loads(data), sort_keys=True).encode()
    with pytest.raises(InvalidInput, match="canonical"):
        AuditRecord.parse(spaced)
    with pytest.raises(InvalidInput):
        AuditRecord.parse(b'{"schema":"xgate-audit/2"}')


@pytest.mark.parametrize(
    "event",
    [
        {"national_id": "x"},
        {"income": 3000},
        {"monthly_income": 3000},
        {"value": 1},
        {"values": [1, 2]},
        {"name": "Zhang San"},
        {"address": "x"},
        {"metadata": {"secret_key": "k"}},
        {"note": "110101199003077777"},
        {"note": "phone 13812345678"},
        {"case_id": "11010119900307777X"},
        {"subjects": ["110101199003077777"]},
        {"subjects": ["Zhang San"]},
        {"result_sha256": "not-a-digest"},
        {"kind": "dump_everything"},
        {"decision": "maybe"},
        {"policy_set_hash": "xyz"},
        {"payload": "x"},
        {"Bad-Key": 1},
        {"nested": {"a": 1}},
        {"big": "x" * 300},
    ],
)
def test_personal_or_malformed_data_is_refused(event: dict[str, object]) -> None:
    base = {"kind": "request", "actor_user": "u1", "actor_agency": "tax"}
    with pytest.raises(InvalidInput) as info:
        AuditRecord.from_event({**base, **event})
    # The public message never echoes the offending value.
    assert "110101199003077777" not in str(info.value.to_public())
    assert "Zhang" not in str(info.value.to_public())


def test_from_event_maps_flat_fields() -> None:
    rec = AuditRecord.from_event(
        {
            "kind": "training_round",
            "actor_user": "fl-server",
            "actor_agency": "gateway",
            "actor_role": "service",
            "request_id": "f4b3c9a4-9a3e-4cf6-8d0f-446655440000",
            "round": 3,
            "model_sha256": "ef" * 32,
            "subjects": [pseudonym(3)],
        }
    )
    assert rec.metadata == {"round": 3} and rec.digests == {"model": "ef" * 32}
    assert rec.actor.role == "service" and rec.subjects == (pseudonym(3),)


def test_records_are_immutable() -> None:
    rec = record(1)
    with pytest.raises(ValidationError):
        rec.kind = "result"  # type: ignore[misc]


def test_default_time_is_now() -> None:
    rec = AuditRecord(kind="request", actor={"user": "u", "agency": "a", "role": "r"})  # type: ignore[arg-type]
    assert abs((rec.time - datetime.now(UTC)).total_seconds()) < 60
