"""Authentication under attack, over a real gateway process (issue 17 item 3).

Behind an ingress every caller shares one address: a scanner's failures there, or on a victim's
public key id, must not lock out the holders of valid keys. Repeated key headers are a 400.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest

from app.devfed import DevFederation, start_gateway, write_gateway_config
from tests.integration.negative_helpers import wait_until_listening

pytestmark = pytest.mark.integration

BAD_SECRET = "A" * 43


def _variant(fed: DevFederation, name: str, **overrides: object) -> str:
    config = write_gateway_config(fed, config_path=fed.gateway_dir / f"{name}.toml", **overrides)
    url = start_gateway(fed, fed.supervisor, config_path=config, name=name)  # type: ignore[attr-defined]
    wait_until_listening(url)
    return url


@pytest.fixture(scope="module")
def guarded(federation: DevFederation) -> Iterator[httpx.Client]:
    """A gateway whose failure buckets hold 3 attempts and practically never refill."""
    url = _variant(federation, "gw-auth-attack", failed_auth_per_s=0.001, failed_auth_burst=3)
    verify = ssl.create_default_context(cafile=str(federation.ca_cert))
    with httpx.Client(base_url=url, verify=verify, timeout=30) as http:
        yield http


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key_id(key: str) -> str:
    return key.split("_")[1]


def test_scanner_at_the_ingress_address_does_not_lock_out_valid_keys(
    guarded: httpx.Client, federation: DevFederation
) -> None:
    """Attack: one anonymous scanner exhausts the shared address's failure bucket. Before the fix
    the address bucket was checked before the key, so every caseworker got 429."""
    codes = [guarded.get("/v1/programs", headers=_bearer(f"xgk_{i:012x}_{BAD_SECRET}")).status_code for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429], codes
    refused = guarded.get("/v1/programs", headers={"Authorization": "Bearer not-a-key"})
    assert refused.status_code == 429 and refused.json()["error"] == "budget_exhausted"
    assert "too many failed authentications" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    for label in ("caseworker", "analyst", "officer"):  # same address, valid keys: served
        assert guarded.get("/v1/programs", headers=_bearer(federation.api_keys[label])).status_code == 200


def test_hammering_a_key_id_is_limited_but_its_owner_keeps_working(
    guarded: httpx.Client, federation: DevFederation
) -> None:
    victim = federation.api_keys["caseworker_silver"]
    forged = f"xgk_{_key_id(victim)}_{BAD_SECRET}"
    statuses = [guarded.get("/v1/programs", headers=_bearer(forged)).status_code for _ in range(4)]
    assert statuses[-1] == 429, statuses  # the key id's (and the address's) failures are limited
    last = guarded.get("/v1/programs", headers=_bearer(forged))
    assert last.status_code == 429 and "failed authentications" in last.json()["message"]
    assert guarded.get("/v1/programs", headers=_bearer(victim)).status_code == 200
    assert guarded.get("/v1/programs", headers={"X-API-Key": victim}).status_code == 200


def test_key_id_bucket_limits_failures_spread_over_addresses(federation: DevFederation) -> None:
    """Failures on one key id are limited even when the address bucket still has room (a
    distributed guesser): the key id's own bucket answers 429 naming the key id."""
    url = _variant(federation, "gw-auth-keyid", failed_auth_per_s=0.001, failed_auth_burst=3)
    verify = ssl.create_default_context(cafile=str(federation.ca_cert))
    victim = federation.api_keys["hrss_caseworker"]
    with httpx.Client(base_url=url, verify=verify, timeout=30) as http:
        forged = _bearer(f"xgk_{_key_id(victim)}_{BAD_SECRET}")
        assert [http.get("/v1/programs", headers=forged).status_code for _ in range(3)] == [401, 401, 401]
        # The address's bucket is as empty as the key id's here (one client); what matters is that
        # the owner is still served and that the refusal names the exhausted bucket.
        refused = http.get("/v1/programs", headers=forged)
        assert refused.status_code == 429
        assert refused.json()["message"].startswith("too many failed authentications for this")
        assert http.get("/v1/programs", headers=_bearer(victim)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer {key}"), ("Authorization", "Bearer {other}")],
        [("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")],
        [("X-API-Key", "{key}"), ("X-API-Key", "{other}")],
        [("Authorization", "Bearer {key}"), ("X-API-Key", "{other}")],
    ],
    ids=["two-authorization", "same-twice", "two-x-api-key", "both-kinds"],
)
def test_repeated_key_headers_are_400(
    guarded: httpx.Client, federation: DevFederation, headers: list[tuple[str, str]]
) -> None:
    keys = {"key": federation.api_keys["caseworker"], "other": federation.api_keys["analyst"]}
    sent = [(name, value.format(**keys)) for name, value in headers]
    response = guarded.get("/v1/programs", headers=sent)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_input" and "exactly one API key" in body["message"]
    assert keys["key"] not in response.text and keys["other"] not in response.text


def test_sub_second_retry_after_is_rounded_up(federation: DevFederation) -> None:
    """A 0.2 s wait used to be sent as `Retry-After: 0` (int() truncation)."""
    url = _variant(federation, "gw-auth-retry", failed_auth_per_s=5.0, failed_auth_burst=1)
    verify = ssl.create_default_context(cafile=str(federation.ca_cert))
    with httpx.Client(base_url=url, verify=verify, timeout=30) as http:
        assert http.get("/v1/programs", headers=_bearer("nope")).status_code == 401
        refused = http.get("/v1/programs", headers=_bearer("nope"))
        assert refused.status_code == 429
        assert 0 < refused.json()["details"]["retry_after_s"] < 1
        assert refused.headers["Retry-After"] == "1"
