"""A real federation on loopback, shared by the integration tests of one worker.

Nodes and the gateway are separate processes speaking mTLS gRPC / HTTPS, exactly as in
`make demo`; only the population is smaller so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devfed import DevFederation, prepare, start_gateway, start_nodes, write_gateway_config
from app.launcher import Supervisor

PEOPLE = 3000
APPLICANTS = 300
# Agreements allow 3 checks per applicant and program per 30 days (probing budget), so tests
# that run the same program draw disjoint slices of the applicants.


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> DevFederation:
    root: Path = tmp_path_factory.mktemp("federation")
    return prepare(root, people=PEOPLE, applicants=APPLICANTS, tls=True, plaintext_baseline=True)


@pytest.fixture(scope="session")
def federation(prepared: DevFederation) -> Iterator[DevFederation]:
    with Supervisor(log_dir=prepared.log_dir) as supervisor:
        start_nodes(prepared, supervisor)
        write_gateway_config(prepared)
        start_gateway(prepared, supervisor)
        prepared.supervisor = supervisor  # type: ignore[attr-defined]
        yield prepared


@pytest.fixture()
def client(federation: DevFederation):  # type: ignore[no-untyped-def]
    with federation.client("caseworker") as c:
        yield c
