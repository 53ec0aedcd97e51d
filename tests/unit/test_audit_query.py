"""`xgate audit query` and `xgate audit report` on a database file (issue 14 items 3 and 4)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from audit.checkpoints import Signer, generate_key, save_keypair
from audit.query import Filters, parse_when
from audit.records import Actor, AuditRecord
from audit.report import mask_national_id
from audit.store import AuditLog
from audit.testing import ORIGIN
from xgate.errors import InvalidInput
from xgate.pseudonym import Pseudonymiser, write_key

runner = CliRunner()
ALICE = "110101199003071234"  # a valid GB 11643 id (synthetic)
BOB = "11010119900307125X"
T0 = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai


def _valid(first17: str) -> str:
    from xgate.pseudonym import id_checksum

    return first17 + id_checksum(first17)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    alice, bob = _valid(ALICE[:17]), _valid(BOB[:17])
    key_file = tmp_path / "pseudonym.key"
    pseudo = Pseudonymiser(write_key(key_file))
    pa, pb = pseudo.pseudonym(alice), pseudo.pseudonym(bob)
    key = generate_key()
    _, pub = save_keypair(key, tmp_path / "log")
    db = tmp_path / "audit.db"

    def rec(kind: str, t: int, user: str, rid: str, **kw: Any) -> AuditRecord:
        agency = kw.pop("agency", "civil_affairs")
        return AuditRecord(
            kind=kind,
            time=T0 + timedelta(minutes=t),
            actor=Actor(user=user, agency=agency, role="caseworker"),
            request_id=rid,
            **kw,
        )

    why = {"program": "dibao", "purpose": "dibao", "legal_basis": "SAR-2014-art-12"}
    records = [
        rec("request", 0, "cw-zhang", "r1", metadata={"method": "POST", "route": "/v1/checks", "status": 200}),
        rec("policy_decision", 0, "cw-zhang", "r1", decision="allow", subjects=(pa, pb), case_id="C-1", **why),
        rec("result", 1, "cw-zhang", "r1", **why),
        rec("request", 60, "cw-li", "r2", metadata={"method": "POST", "route": "/v1/checks", "status": 403}),
        rec("policy_decision", 60, "cw-li", "r2", decision="deny", subjects=(pa,), case_id="C-2", **why),
        rec("request", 61, "anonymous", "r3", metadata={"method": "GET", "route": "/v1/programs", "status": 401}),
        rec("request", 62, "cw-li", "r4", metadata={"method": "POST", "route": "/v1/checks", "status": 400}),
        rec("policy_decision", 2 * 24 * 60, "cw-chen", "r5", decision="allow", subjects=(pa,), agency="hrss", **why),
    ]
    with AuditLog.open(db, signer=Signer(ORIGIN, key), origin=ORIGIN) as log:
        log.append_many(records)
        log.publish_checkpoint()
    return {"db": db, "pub": pub, "key_file": key_file, "alice": alice, "pa": pa, "pb": pb, "tmp": tmp_path}


def _query(setup: dict[str, Any], *args: str) -> Any:
    r = runner.invoke(app, ["audit", "query", "--db", str(setup["db"]), *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_who_accessed_a_person_in_a_period_from_the_national_id(setup: dict[str, Any]) -> None:
    out = _query(
        setup, "--subject-id", setup["alice"], "--pseudonym-key", str(setup["key_file"]),
        "--since", "2026-03-04", "--until", "2026-03-05", "--format", "json",
    )  # fmt: skip
    rows = json.loads(out)
    assert [(r["user"], r["agency"], r["purpose"], r["legal_basis"], r["outcome"]) for r in rows] == [
        ("cw-zhang", "civil_affairs", "dibao", "SAR-2014-art-12", "answered"),
        ("cw-li", "civil_affairs", "dibao", "SAR-2014-art-12", "refused"),
    ]  # the hrss access two days later is outside the period
    assert setup["alice"] not in out  # the national id never appears in the output


def test_every_refused_request_today(setup: dict[str, Any]) -> None:
    out = _query(setup, "--refused", "--since", "2026-03-04T00:00+08:00", "--until", "2026-03-05T00:00+08:00")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["index", "time", "kind", "request_id"]
    assert [line.split()[3] for line in lines[1:]] == ["r2", "r3", "r4"]  # 403, 401, 400; not the 200
    rows = list(csv.DictReader(io.StringIO(_query(setup, "--status", "401", "--format", "csv"))))
    assert [(r["request_id"], r["user"], r["status"]) for r in rows] == [("r3", "anonymous", "401")]


def test_filters_combine(setup: dict[str, Any]) -> None:
    rows = json.loads(_query(setup, "--user", "cw-li", "--kind", "policy_decision", "--format", "json"))
    assert [(r["request_id"], r["decision"]) for r in rows] == [("r2", "deny")]
    rows = json.loads(_query(setup, "--agency", "hrss", "--program", "dibao", "--format", "json"))
    assert [r["request_id"] for r in rows] == ["r5"]
    rows = json.loads(_query(setup, "--request-id", "r1", "--format", "json"))  # one id finds everything
    assert [r["kind"] for r in rows] == ["request", "policy_decision", "result"]
    rows = json.loads(_query(setup, "--pseudonym", setup["pb"], "--format", "json"))
    assert [r["request_id"] for r in rows] == ["r1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pseudonym", "not-a-pseudonym"], "pseudonym"),
        (["--subject-id", "12345"], "pseudonym key"),
        (["--since", "yesterday-ish"], "is not a time"),
        (["--status", "999"], "HTTP status"),
        (["--format", "xml"], "--format"),
        (["--since", "2026-03-05", "--until", "2026-03-04"], "later than since"),
    ],
)
def test_bad_queries_say_what_is_wrong(setup: dict[str, Any], args: list[str], message: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("XGATE_PSEUDONYM_KEY", raising=False)
    r = runner.invoke(app, ["audit", "query", "--db", str(setup["db"]), *args])
    assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output, r.output


def test_query_needs_exactly_one_source(setup: dict[str, Any]) -> None:
    r = runner.invoke(app, ["audit", "query"])
    assert r.exit_code == 1 and "exactly one of --db" in r.output


def test_parse_when() -> None:
    now = datetime(2026, 3, 4, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai
    assert parse_when("today", now=now) == datetime(2026, 3, 3, 16, 0, tzinfo=UTC)
    assert parse_when("yesterday", now=now) == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    assert parse_when("2026-03-04T09:00Z") == datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    with pytest.raises(InvalidInput):
        Filters(since=datetime(2026, 1, 1))  # naive


@pytest.mark.parametrize("kind", ["nope", "Request", "training-job", ""])
def test_an_unknown_kind_is_refused_not_answered_with_nothing(kind: str) -> None:
    """`kind=nope` answered 200 with no entries, as if nothing had happened (review)."""
    with pytest.raises(InvalidInput, match="kind must be a record kind"):
        Filters(kind=kind)
    assert Filters(kind="request").kind == "request" and Filters(kind="training_job_refused").kind


def test_an_unknown_kind_is_refused_by_the_cli(setup: dict[str, Any]) -> None:
    r = runner.invoke(app, ["audit", "query", "--db", str(setup["db"]), "--kind", "nope"])
    assert r.exit_code != 0 and "kind must be a record kind" in r.output, r.output


def test_report_for_a_person(setup: dict[str, Any]) -> None:
    out = setup["tmp"] / "report.html"
    r = runner.invoke(
        app,
        [
            "audit", "report", "--db", str(setup["db"]), "--key", str(setup["pub"]), "--out", str(out),
            "--subject-id", setup["alice"], "--pseudonym-key", str(setup["key_file"]),
            "--since", "2026-03-01", "--until", "2026-04-01",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "3 accesses" in r.output and "<td>cw-zhang" in page and "<td>hrss</td>" in page
    assert "SAR-2014-art-12" in page and "Refused by policy" in page and page.count("proof verified") == 3
    assert setup["alice"] not in page and mask_national_id(setup["alice"]) in page
    assert "<script" not in page


def test_report_refuses_evidence_that_does_not_verify(setup: dict[str, Any]) -> None:
    _, other = save_keypair(generate_key(), setup["tmp"] / "other")
    r = runner.invoke(
        app,
        ["audit", "report", "--db", str(setup["db"]), "--key", str(other), "--out", str(setup["tmp"] / "x.html"),
         "--pseudonym", setup["pa"]],
    )  # fmt: skip
    assert r.exit_code == 1 and "does not verify" in r.output and not (setup["tmp"] / "x.html").exists()


# -- the same filters on the REST API ------------------------------------------------------------


@pytest.fixture
def rest(setup: dict[str, Any]) -> Any:
    from fastapi import Request
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from gateway.services import Services
    from xgate.principal import Principal

    class Decision:
        def raise_if_denied(self) -> None:
            return None

    class Engine:
        def decide(self, request: Any) -> Decision:
            return Decision()

    def officer(request: Request) -> Principal:
        return Principal("so-1", "audit_office", "security_officer", "gold")

    log = AuditLog.open(setup["db"], origin=ORIGIN)
    client = TestClient(create_app(Services(authenticate=officer, policy=Engine(), audit_log=log)))
    yield client, log
    log.close()


def test_rest_filters_refused_and_status(rest: Any) -> None:
    client, log = rest
    day = {"since": "2026-03-04T00:00:00+08:00", "until": "2026-03-05T00:00:00+08:00"}
    r = client.get("/v1/audit/entries", params={"refused": "true", **day})
    assert r.status_code == 200, r.text
    assert [e["record"]["request_id"] for e in r.json()["entries"]] == ["r2", "r3", "r4"]
    r = client.get("/v1/audit/entries", params={"status": 401})
    assert [e["record"]["actor"]["user"] for e in r.json()["entries"]] == ["anonymous"]
    assert client.get("/v1/audit/entries", params={"status": 99}).status_code == 400
    # The read itself is on record, under the id the response carries, with its filters.
    (read,) = log.entries(request_id=r.headers["X-Request-Id"], limit=10)
    assert read.record.kind == "audit_read" and read.record.metadata["filter_status"] == 401


def test_rest_subject_accesses_name_the_user_and_take_a_period(rest: Any, setup: dict[str, Any]) -> None:
    client, _ = rest
    r = client.get(f"/v1/subjects/{setup['pa']}/accesses", params={"since": "2026-03-04", "until": "2026-03-05"})
    assert r.status_code == 200, r.text
    rows = r.json()["accesses"]
    assert [(a["user"], a["agency"], a["legal_basis"], a["outcome"]) for a in rows] == [
        ("cw-zhang", "civil_affairs", "SAR-2014-art-12", "answered"),
        ("cw-li", "civil_affairs", "SAR-2014-art-12", "refused"),
    ]
    everything = client.get(f"/v1/subjects/{setup['pa']}/accesses").json()["accesses"]
    assert [a["user"] for a in everything][:3] == ["cw-zhang", "cw-li", "cw-chen"]
    bad = client.get(f"/v1/subjects/{setup['pa']}/accesses", params={"since": "2026-03-05", "until": "2026-03-04"})
    assert bad.status_code == 400 and "later than since" in bad.json()["message"] and bad.json()["request_id"]


def test_report_from_the_rest_api_trusts_nothing_it_is_told(rest: Any, setup: dict[str, Any]) -> None:
    """The report built from REST views re-hashes every record and checks every proof with the
    officer's copy of the log key: an altered record, a forged proof or another key is refused."""
    import copy

    from audit.checkpoints import load_public_key
    from audit.report import report_from_views
    from xgate.errors import IntegrityError

    client, _ = rest
    accesses = client.get(f"/v1/subjects/{setup['pa']}/accesses").json()["accesses"]
    decisions = [client.get(f"/v1/audit/entries/{a['index']}").json() for a in accesses]
    results = {
        a["request_id"]: [
            client.get(f"/v1/audit/entries/{e['index']}").json()
            for e in client.get("/v1/audit/entries", params={"request_id": a["request_id"], "kind": "result"}).json()[
                "entries"
            ]
        ]
        for a in accesses
    }
    pub = load_public_key(setup["pub"])
    kw: dict[str, Any] = {"pseudonym": setup["pa"], "since": None, "until": None, "generated": T0}
    report = report_from_views(ORIGIN, pub, decisions, results, **kw)
    assert [(r.user, r.outcome, r.sealed) for r in report.rows] == [
        ("cw-zhang", "answered", True),
        ("cw-li", "refused", True),
        ("cw-chen", "not answered", True),
    ]
    altered = copy.deepcopy(decisions)
    altered[1]["record"]["legal_basis"] = "SAR-2014-art-99"  # a nicer-looking reason
    with pytest.raises(IntegrityError, match="leaf hash"):
        report_from_views(ORIGIN, pub, altered, results, **kw)
    forged = copy.deepcopy(decisions)
    forged[0]["inclusion_proof"][0] = "00" * 32
    with pytest.raises(IntegrityError):
        report_from_views(ORIGIN, pub, forged, results, **kw)
    with pytest.raises(IntegrityError, match="not signed by the expected log key"):
        report_from_views(ORIGIN, generate_key().public_key(), decisions, results, **kw)
    other = copy.deepcopy(decisions)
    other[0]["record"]["subjects"] = [setup["pb"]]  # an entry about someone else, passed off as this one
    with pytest.raises(IntegrityError):
        report_from_views(ORIGIN, pub, other, results, **kw)


@pytest.mark.parametrize("tz", ["Mars/Base", "", "../../etc/passwd"])
def test_an_unknown_time_zone_is_refused_naming_it(setup: dict[str, Any], tz: str) -> None:
    """ZoneInfoNotFoundError / ValueError tracebacks with --since, silently ignored without."""
    for extra in (["--since", "today"], []):
        r = runner.invoke(app, ["audit", "query", "--db", str(setup["db"]), "--tz", tz, *extra])
        assert r.exit_code == 1 and f"--tz: no time zone '{tz}'" in r.output, r.output
