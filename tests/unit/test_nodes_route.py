"""GET /v1/nodes in process: every caller sees each node's health; only security officers and
administrators see how many subjects a node holds (for a record-DP training store, its row count is
only ever released with noise)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from xgate.errors import Unauthenticated
from xgate.principal import Principal

USERS = {
    "caseworker": Principal("cw-zhang", "civil_affairs", "caseworker", "gold"),
    "analyst": Principal("an-liu", "hrss", "analyst", "gold"),
    "officer": Principal("so-zhao", "civil_affairs", "security_officer", "gold"),
    "admin": Principal("ad-sun", "civil_affairs", "admin", "gold"),
}


def _authenticate(request: Request) -> Principal:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in USERS:
        raise Unauthenticated("missing or unknown API key")
    return USERS[token]


class _Nodes:
    def agencies(self) -> list[str]:
        return ["tax"]

    async def health(self, agency: str, deadline_s: float = 2.0) -> Any:
        return SimpleNamespace(status="serving", version="0.1.0", subjects=40_321)

    async def describe(self, agency: str, deadline_s: float = 2.0) -> Any:
        return SimpleNamespace(elements=[], computations=["he-encrypt/bfv"], he_params_id="bfv-8192")


@pytest.fixture
def client() -> Iterator[TestClient]:
    services = Services(authenticate=_authenticate, nodes=_Nodes())
    with TestClient(create_app(services)) as c:
        yield c


def _tax(client: TestClient, who: str) -> dict[str, Any]:
    r = client.get("/v1/nodes", headers={"Authorization": f"Bearer {who}"})
    assert r.status_code == 200, r.text
    (node,) = r.json()["nodes"]
    return dict(node)


@pytest.mark.parametrize("who", ["caseworker", "analyst"])
def test_other_callers_see_health_without_the_subject_count(client: TestClient, who: str) -> None:
    node = _tax(client, who)
    assert node == {"agency": "tax", "health": {"status": "serving", "version": "0.1.0"}}
    assert "40321" not in str(node) and "subjects" not in str(node)


@pytest.mark.parametrize("who", ["officer", "admin"])
def test_security_officers_and_admins_see_the_subject_count(client: TestClient, who: str) -> None:
    node = _tax(client, who)
    assert node["health"] == {"status": "serving", "version": "0.1.0", "subjects": 40_321}
