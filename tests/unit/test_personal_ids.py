"""Resident identity numbers and names in the free-text fields of a check (case id, references):
refused at the REST edge with a 400 naming the field (never echoing the value), refused again by
the audit records (defence in depth), and withheld from subject reports when an older log holds one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from audit.checkpoints import Signer, generate_key
from audit.records import AuditRecord
from audit.report import build_report
from audit.store import AuditLog
from audit.testing import ORIGIN, pseudonym, record
from gateway.app import create_app
from gateway.models import CheckRequest
from gateway.services import Services
from xgate.errors import InvalidInput
from xgate.principal import Principal
from xgate.pseudonym import id_checksum

NID = "110101197302232165"  # the reviewer's: a valid GB 11643 number
BODY: dict[str, Any] = {
    "program": "dibao",
    "purpose": "dibao",
    "legal_basis": "SAR-2014-art-12",
    "case_id": "C-1",
    "approval_ref": "apr_dev-federation-0000001",
    "mode": "plaintext",
    "pseudonyms": ["a" * 26],
}
# The reviewer's inputs (probe1.py, probe4.py) and the same numbers written other ways.
REFUSED = [
    ("case_id", "C" + NID),
    ("case_id", "110101-19730223-2165"),
    ("case_id", "CASE/1101.0119.7302.2321.65"),
    ("case_id", "c" + NID + "-x"),
    ("case_id", "CASE_" + NID[:6] + ":" + NID[6:]),
    ("approval_ref", "apr_张三-zhangsan"),
    ("approval_ref", NID),
    ("approval_ref", "apr_" + NID + "0000"),  # the reference pattern's 22 characters, an id inside
    ("approval_ref", "AP-2026-001"),  # not an approval reference at all
    ("consent_ref", "cns_张三"),
    ("consent_ref", NID),
    ("consent_ref", "cns_" + NID + "abcd"),
    ("legal_basis", "SAR-" + NID),
    ("program", "p" + NID),
    ("purpose", "p" + NID),
]
ORDINARY_CASE_IDS = [
    "C-1",
    "CASE-2024-000123",
    "dibao/2026/03/000451",
    "SAR:2026-03-14.7",
    "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",  # a uuid
    "20260314-000123-0042",
    "C" + NID[:-1],  # 17 digits: not an identity number
    "CASE-11010119730223",  # a birth date with a region prefix, no full number
]


class _Coordinator:
    def __init__(self) -> None:
        self.runs = 0
        self.nodes = self
        self.programs = None
        self.service = self

    def agencies(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None

    async def run(self, principal: Principal, request: Any, request_id: str | None = None, **_: Any) -> Any:
        self.runs += 1
        raise InvalidInput("stand-in: the check service is not part of this test")


def _authenticate(request: Request) -> Principal:
    return Principal(user="cw-001", agency="civil_affairs", role="caseworker", tier="gold")


@pytest.fixture
def client() -> Iterator[tuple[TestClient, _Coordinator]]:
    coordinator = _Coordinator()
    services = Services(authenticate=_authenticate, coordinator=coordinator)  # type: ignore[arg-type]
    with TestClient(create_app(services, max_body_bytes=100_000), raise_server_exceptions=False) as c:
        yield c, coordinator


def _post(c: TestClient, body: dict[str, Any]) -> Any:
    return c.post("/v1/checks", json=body, headers={"Authorization": "Bearer x"})


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_an_identity_number_or_name_in_a_free_text_field_is_refused_naming_the_field(
    client: tuple[TestClient, _Coordinator], field: str, value: str
) -> None:
    c, coordinator = client
    r = _post(c, {**BODY, field: value})
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["error"] == "invalid_input" and doc["message"].startswith(f"{field}:")
    assert value not in r.text and NID not in r.text and "张三" not in r.text  # never echoed
    assert coordinator.runs == 0  # refused before anything ran or was logged


@pytest.mark.parametrize("case_id", ORDINARY_CASE_IDS)
def test_ordinary_case_ids_and_references_are_accepted(client: tuple[TestClient, _Coordinator], case_id: str) -> None:
    body = CheckRequest.model_validate({**BODY, "case_id": case_id, "consent_ref": "cns_" + "k3Jd9QxT0bLm2VwYp7Rz4a"})
    assert body.case_id == case_id
    assert CheckRequest.model_validate({**BODY, "approval_ref": "", "consent_ref": ""}).approval_ref == ""
    c, coordinator = client
    r = _post(c, {**BODY, "case_id": case_id})
    assert coordinator.runs == 1 and "stand-in" in r.json()["message"], r.text  # past the edge, to the service


@st.composite
def _national_ids(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 829999))
    born = draw(st.dates(date(1900, 1, 1), date(2030, 12, 31)))
    body = f"{region:06d}{born:%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return body + id_checksum(body)


@st.composite
def _embedded(draw: st.DrawFn) -> str:
    """A valid id with separators (what CheckRequest's case_id pattern allows) between any of its
    characters, and letters or separators around it."""
    nid = draw(_national_ids())
    seps = st.text(alphabet="-_.:/", max_size=2)
    parts = [draw(seps) + ch for ch in nid]
    prefix = draw(st.text(alphabet="ABCabcz-_/", max_size=6))
    suffix = draw(st.text(alphabet="ABCabcz-_/", max_size=6))
    return prefix + "".join(parts) + suffix


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_embedded())
def test_any_valid_identity_number_embedded_with_separators_is_refused(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        CheckRequest.model_validate({**BODY, "case_id": text})
    assert [e["loc"] for e in info.value.errors()] == [("case_id",)]
    with pytest.raises(InvalidInput) as refused:
        AuditRecord.from_event({"kind": "request", "actor_user": "u1", "actor_agency": "tax", "case_id": text})
    assert text not in str(refused.value.to_public())


@pytest.mark.parametrize(
    "event",
    [
        {"case_id": "C" + NID},
        {"case_id": "110101-19730223-2165"},
        {"approval_ref": "apr_张三-zhangsan"},
        {"consent_ref": "cns_张三"},
        {"note": "case 1101 0119 7302 2321 65 done"},
        {"actor_user": "u" + NID},
    ],
)
def test_audit_records_refuse_embedded_identity_numbers_and_names_in_references(event: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as info:
        AuditRecord.from_event({"kind": "request", "actor_user": "u1", "actor_agency": "tax", **event})
    public = str(info.value.to_public())
    assert NID not in public and "2165" not in public and "张三" not in public


def test_a_case_id_an_older_log_holds_with_an_identity_number_is_withheld_from_the_report(tmp_path: Path) -> None:
    key = generate_key()
    log = AuditLog.open(tmp_path / "audit.sqlite", signer=Signer(ORIGIN, key), origin=ORIGIN)
    try:
        ok = record(1, kind="policy_decision", decision="allow", case_id="C-7")
        # Written before the records refused it (model_copy does not validate): the log keeps it forever.
        legacy = record(2, kind="policy_decision", decision="allow", subjects=(pseudonym(1),)).model_copy(
            update={"case_id": "C" + NID}
        )
        log.append(ok)
        log.append(legacy)
        log.publish_checkpoint()
        since = datetime.now(UTC) - timedelta(days=1)
        report = build_report(log, pseudonym(1), key.public_key(), since=since, until=None, generated=datetime.now(UTC))
    finally:
        log.close()
    cases = sorted(r.case_id for r in report.rows)
    assert "C-7" in cases and len(cases) == 2
    assert not any(NID in c or "2165" in c for c in cases)
