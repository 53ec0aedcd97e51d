"""Requester-signed checks (policies/check_statements.py) and their registry (policies/requesters.py):
a statement holds only for exactly the question, HE context and subjects it was signed for, by the
key registered for its user and agency, within its time window; every other case is refused, naming
what differs."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.artefacts import Signer
from crypto.envelope import SigningKey
from policies.check_statements import (
    MAX_AGE_S,
    MAX_SKEW_S,
    Question,
    RequesterKey,
    sign_check,
    subjects_digest,
    verify_statement,
)
from policies.requesters import Requesters, load_requesters
from xgate.errors import ConfigError, PolicyDenied

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
KEY = SigningKey.generate("civil_affairs", "requester")
OTHER = SigningKey.generate("civil_affairs", "requester")
SUBJECTS = [f"{chr(97 + i)}" * 26 for i in range(5)]  # 26-letter pseudonyms, a..e
QUESTION = Question(
    user="cw-zhang",
    agency="civil_affairs",
    program="dibao",
    purpose="dibao",
    legal_basis="SAR-2014-art-12",
    case_id="C-1",
    consent_ref="",
    approval_ref="apr_dev-federation-0000001",
    context_fingerprint="sha256:" + "ab" * 32,
    pseudonyms=SUBJECTS,
)


def _registry(*entries: tuple[SigningKey, str, str]) -> dict[str, RequesterKey]:
    out = {}
    for key, user, agency in entries:
        signer = Signer.of(user, base64.b64encode(key.public_raw).decode())
        out[signer.key_id] = RequesterKey(signer, user, agency)
    return out


REGISTRY = _registry((KEY, "cw-zhang", "civil_affairs"), (OTHER, "cw-li", "civil_affairs"))


def test_the_statement_holds_for_exactly_its_question() -> None:
    statement = sign_check(KEY, QUESTION, NOW)
    assert verify_statement(statement, REGISTRY, QUESTION, NOW + timedelta(minutes=3)).user == "cw-zhang"


@settings(max_examples=50, deadline=None)
@given(st.permutations(SUBJECTS))
def test_any_order_of_the_same_subjects_holds(order: list[str]) -> None:
    """The cohort view sends each criterion's subjects in its own secret order."""
    statement = sign_check(KEY, QUESTION, NOW)
    verify_statement(statement, REGISTRY, dataclasses.replace(QUESTION, pseudonyms=order), NOW)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("user", "cw-li", "user"),
        ("agency", "hrss", "agency"),
        ("program", "pension_survival", "program"),
        ("purpose", "target_discovery", "purpose"),
        ("legal_basis", "SIL-2010-art-17", "legal basis"),
        ("case_id", "C-2", "case id"),
        ("consent_ref", "cns_" + "x" * 22, "consent ref"),
        ("approval_ref", "", "approval ref"),
        ("context_fingerprint", "sha256:" + "cd" * 32, "HE context"),
        ("pseudonyms", [*SUBJECTS[:4], "f" * 26], "subjects"),
        ("pseudonyms", SUBJECTS[:4], "subjects"),
        ("pseudonyms", [*SUBJECTS, "f" * 26], "subjects"),
    ],
)
def test_a_statement_for_another_question_is_refused(field: str, value: object, named: str) -> None:
    statement = sign_check(KEY, QUESTION, NOW)
    asked = dataclasses.replace(QUESTION, **{field: value})
    with pytest.raises(PolicyDenied, match=named):
        verify_statement(statement, REGISTRY, asked, NOW)


def test_a_key_registered_for_another_user_cannot_sign_for_this_one() -> None:
    """cw-li's registered key signing a statement that names cw-zhang."""
    statement = sign_check(OTHER, QUESTION, NOW)
    with pytest.raises(PolicyDenied, match="registered for another user or agency"):
        verify_statement(statement, REGISTRY, QUESTION, NOW)


def test_an_unregistered_key_is_refused() -> None:
    statement = sign_check(SigningKey.generate("civil_affairs", "requester"), QUESTION, NOW)
    with pytest.raises(PolicyDenied, match="not signed by a registered signer"):
        verify_statement(statement, REGISTRY, QUESTION, NOW)


def test_the_time_window_is_enforced_at_both_ends() -> None:
    statement = sign_check(KEY, QUESTION, NOW)
    verify_statement(statement, REGISTRY, QUESTION, NOW + timedelta(seconds=MAX_AGE_S))
    verify_statement(statement, REGISTRY, QUESTION, NOW - timedelta(seconds=MAX_SKEW_S))
    with pytest.raises(PolicyDenied, match="minutes ago"):
        verify_statement(statement, REGISTRY, QUESTION, NOW + timedelta(seconds=MAX_AGE_S + 1))
    with pytest.raises(PolicyDenied, match="in the future"):
        verify_statement(statement, REGISTRY, QUESTION, NOW - timedelta(seconds=MAX_SKEW_S + 1))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "carries no requester statement"),
        ("{", "not JSON"),
        ('{"format": "xgate-approval/1", "key_id": "x", "body": {}, "signature": ""}', "format must be"),
        ("x" * 5000, "exceeds"),
    ],
)
def test_malformed_statements_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(PolicyDenied, match=why):
        verify_statement(text, REGISTRY, QUESTION, NOW)


def test_a_changed_field_breaks_the_signature() -> None:
    outer = json.loads(sign_check(KEY, QUESTION, NOW))
    outer["body"]["context_fingerprint"] = "sha256:" + "cd" * 32
    with pytest.raises(PolicyDenied, match="signature does not verify"):
        verify_statement(
            json.dumps(outer), REGISTRY, dataclasses.replace(QUESTION, context_fingerprint="sha256:" + "cd" * 32), NOW
        )


def test_a_well_signed_body_of_the_wrong_shape_is_named() -> None:
    from crypto.artefacts import sign_artefact

    text = sign_artefact({"user": "cw-zhang", "agency": "civil_affairs"}, KEY, fmt="xgate-check/1")
    with pytest.raises(PolicyDenied, match="field 'program' is malformed"):
        verify_statement(text, REGISTRY, QUESTION, NOW)


def test_no_registered_requester_refuses_every_check() -> None:
    with pytest.raises(PolicyDenied, match=r"no requester signing key is registered \(requesters.toml\)"):
        verify_statement(sign_check(KEY, QUESTION, NOW), {}, QUESTION, NOW)


def test_the_subjects_digest_ignores_order_only() -> None:
    assert subjects_digest(SUBJECTS) == subjects_digest(list(reversed(SUBJECTS)))
    assert subjects_digest(SUBJECTS) != subjects_digest(SUBJECTS[:4])


# -- the registry file ----------------------------------------------------------------------------
def _entry(key: SigningKey, user: str = "cw-zhang", agency: str = "civil_affairs") -> str:
    public = base64.b64encode(key.public_raw).decode()
    return f'[[requester]]\nuser = "{user}"\nagency = "{agency}"\npublic_key = "{public}"\n'


def test_the_registry_loads_and_is_reread_when_it_changes(tmp_path: Path) -> None:
    assert load_requesters(tmp_path) == {}  # absent: nobody registered
    (tmp_path / "requesters.toml").write_text("\ufeff" + _entry(KEY))  # a BOM from a Windows editor
    watched = Requesters(tmp_path)
    assert [k.user for k in watched.current().values()] == ["cw-zhang"]
    (tmp_path / "requesters.toml").write_text(_entry(KEY) + "\n" + _entry(OTHER, "cw-li-renamed"))
    assert sorted(k.user for k in watched.current().values()) == ["cw-li-renamed", "cw-zhang"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[[requester]]\nuser = 'a'\nagency = 'b'\n", "needs exactly user, agency and public_key"),
        ("[[requester]]\nuser = ''\nagency = 'b'\npublic_key = 'AAAA'\n", "must be non-empty strings"),
        ("[[requester]]\nuser = 'a'\nagency = 'b'\npublic_key = 'not base64!'\n", "not a base64 Ed25519"),
        ("requester = 3\n", r"array of tables"),
        ("[[requester]\n", "requesters.toml"),
        (_entry(KEY) + _entry(KEY, "cw-other"), "registered for another user or agency"),
    ],
)
def test_a_bad_registry_entry_is_named(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "requesters.toml").write_text(text)
    with pytest.raises(ConfigError, match=why):
        load_requesters(tmp_path)


def test_the_same_entry_appended_twice_is_one_registration(tmp_path: Path) -> None:
    """`cat requests/requester.toml >> requesters.toml` run twice by the operator."""
    (tmp_path / "requesters.toml").write_text(_entry(KEY) + _entry(KEY))
    assert [k.user for k in load_requesters(tmp_path).values()] == ["cw-zhang"]


def test_a_malformed_edit_keeps_the_registry_in_force_and_a_fresh_start_refuses_checks(tmp_path: Path) -> None:
    """A broken edit is logged and the previous registry stays (it was kept silently after one
    failed read before); with nothing loaded yet, checks are refused as policy, never a 500."""
    registry = tmp_path / "requesters.toml"
    registry.write_text(_entry(KEY))
    watched = Requesters(tmp_path)
    assert len(watched.usable()) == 1
    registry.write_text(_entry(KEY) + "[[requester]]\nuser = 'half an entry'\n")
    for _ in range(3):
        assert len(watched.usable()) == 1
    with pytest.raises(PolicyDenied, match="registry of requesters' signing keys cannot be used"):
        Requesters(tmp_path).usable()  # a restart on the broken file
    registry.write_text(_entry(KEY) + _entry(OTHER, "cw-li"))  # mended: taken at the next read
    assert len(watched.usable()) == 2
