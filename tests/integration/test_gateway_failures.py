"""A check fails as a whole, naming the agency, when one node is down, slow or talks garbage."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from client.sdk import GatewayError
from client.subjects import read_subjects
from tests.integration.rogue import start_rogue
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration


@contextmanager
def _closed_port() -> Iterator[int]:
    """A port held bound, never listening, for the block: connecting is refused, and no other
    process's bind can take it meanwhile (a port probed free and closed again could be)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def _gateway_with_tax_at(federation, tmp_path, name: str, tax_address: str, **overrides) -> str:
    addresses = {a: f"127.0.0.1:{p}" for a, p in federation.node_ports.items()}
    addresses["tax"] = tax_address
    config = write_gateway_config(
        federation, addresses, config_path=federation.gateway_dir / f"{name}.toml", **overrides
    )
    return start_gateway(federation, federation.supervisor, config_path=config, name=name)


_SLICES = iter(range(240, 300, 8))  # disjoint applicants per test: probing budgets are real


def _check(federation, url: str, n: int = 5):
    start = next(_SLICES)
    with (
        federation.client("caseworker", url) as client,
        pytest.raises(GatewayError) as info,
    ):
        client.check(
            "dibao",
            read_subjects(federation.applicants)[start : start + n],
            "dibao",
            LEGAL_BASIS["dibao"],
            "case-f",
            approval_ref=DEV_APPROVAL_REF,
        )
    return info.value


def test_node_down_is_503_naming_the_agency(federation, tmp_path):
    with _closed_port() as port:
        url = _gateway_with_tax_at(federation, tmp_path, "gw-down", f"127.0.0.1:{port}")
        error = _check(federation, url)
    assert error.http_status == 503 and error.code == "node_unavailable"
    assert "tax" in error.message


def test_slow_node_is_504_and_no_partial_verdict(federation, tmp_path):
    server, port = start_rogue(federation.pki_dir / "ca", tmp_path, "tax", "slow")
    try:
        # The rogue sleeps 10 s; 5 s leaves the real nodes time to answer on a loaded machine (at 1.5 s a
        # busy civil_affairs node was once the one named).
        url = _gateway_with_tax_at(federation, tmp_path, "gw-slow", f"127.0.0.1:{port}", deadline_seconds=5.0)
        error = _check(federation, url)
        assert error.http_status == 504 and error.code == "node_timeout" and "tax" in error.message
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("behaviour", "fragment"),
    [
        ("garbage", "tax"),
        ("not_protobuf", "tax"),
        ("impostor", "tax"),
    ],
)
def test_garbage_answers_are_502_naming_the_agency(federation, tmp_path, behaviour, fragment):
    server, port = start_rogue(federation.pki_dir / "ca", tmp_path, "tax", behaviour)
    try:
        url = _gateway_with_tax_at(federation, tmp_path, f"gw-{behaviour}", f"127.0.0.1:{port}")
        error = _check(federation, url)
        assert error.http_status == 502, error.message
        assert fragment in error.message
        assert "ciphertexts" not in error.message.lower() or "tax" in error.message
    finally:
        server.stop(0)


def test_gateway_keeps_serving_after_failures(client, federation):
    start = next(_SLICES)
    ids = read_subjects(federation.applicants)[start : start + 5]
    result = client.check("dibao", ids, "dibao", LEGAL_BASIS["dibao"], "case-ok", approval_ref=DEV_APPROVAL_REF)
    assert len(result.subjects) == 5


def test_a_node_holding_an_out_of_range_value_refuses_and_the_check_costs_nothing(federation):
    """THREAT_MODEL T11 at a running node: a stored value outside the element's declared range
    (planted in the store under the running process, past the loader) would break the masking
    bound. The hrss node refuses before encrypting anything; the gateway answers 502 naming hrss,
    never the value; and the failure is not the requester's, so the probing budget (3 checks per
    applicant and period) is untouched: four refused checks, then the answer once the data is fixed."""
    label = "hrss_caseworker"
    applicant = read_subjects(federation.applicants)[299]  # no other test checks this applicant's subsidy
    pseudonym = Pseudonymiser(load_key(federation.pseudonym_key)).pseudonym(applicant)
    element = "hrss.contribution_months"  # declared 0..720 months, stored unsealed ("general")
    store = sqlite3.connect(federation.node_dir("hrss") / "store.sqlite", timeout=30)
    where = "WHERE element = ? AND pseudonym = ?"
    (kept,) = store.execute(f"SELECT value FROM element_values {where}", (element, pseudonym)).fetchone()
    with (
        federation.client(label) as client,
        store,
    ):

        def check():
            return client.check(
                "unemployment_subsidy", [applicant], "unemployment_subsidy",
                LEGAL_BASIS["unemployment_subsidy"], "case-range",
            )  # fmt: skip

        try:
            with store:
                store.execute(f"UPDATE element_values SET value = ? {where}", (987_654, element, pseudonym))
            for _ in range(4):  # one more than the probing budget allows
                with pytest.raises(GatewayError) as info:
                    check()
                error = info.value
                assert error.http_status == 502 and error.code == "node_bad_response", error.message
                assert "agency 'hrss': its stored data failed a check" in error.message
                assert "outside the declared range" in error.message
                assert "987654" not in error.message and "987,654" not in error.message
        finally:
            with store:
                store.execute(f"UPDATE element_values SET value = ? {where}", (kept, element, pseudonym))
        result = check()  # positive control: the same applicant, budget intact, answered
    assert result.subjects == [applicant] and set(result.passes) == {"contributed_12_months", "no_wage_income"}
