"""The REST API keeps the contract its OpenAPI document states (issue 17 item 4), over a real
gateway process: one error shape with a request id, int64 overflows refused as 400, no dangling
references, and a bounded schemathesis run (every operation, each role's key and no key) that
finds no server error and no response that disagrees with the document.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.devfed import DevFederation, start_gateway, write_gateway_config
from gateway.api_contract import dangling_refs
from tests.integration.negative_helpers import wait_until_listening

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=170)]  # slow: handed out first (tests/conftest.py)

ROLES = ("caseworker", "analyst", "officer", "admin", None)  # None: no API key at all
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)
# This gateway has no [training] nodes, so a well-formed job is refused with the documented
# 503 training_unavailable; any other 5xx there (a 500) still fails the run.
CONFIG = """
[[operations]]
include-path = "/v1/training/jobs"
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", 503]
"""


@pytest.fixture(scope="module")
def contract_gateway(federation: DevFederation) -> str:
    """Limits high enough that the run tests the contract, not the rate limiter (429 is documented)."""
    name = "gw-contract"
    config = write_gateway_config(
        federation,
        config_path=federation.gateway_dir / f"{name}.toml",
        rate_per_s=10_000.0,
        rate_burst=10_000.0,
        failed_auth_per_s=10_000.0,
        failed_auth_burst=100_000.0,
    )
    url = start_gateway(federation, federation.supervisor, config_path=config, name=name)  # type: ignore[attr-defined]
    wait_until_listening(url)
    return url


def _http(fed: DevFederation, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(fed.ca_cert)), timeout=30)


def test_openapi_document_states_the_real_contract(contract_gateway: str, federation: DevFederation) -> None:
    with _http(federation, contract_gateway) as http:
        doc = http.get("/openapi.json").json()
    assert dangling_refs(doc) == set()  # `Mode` and `DPSpec` were referenced but not defined
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerApiKey"]["scheme"] == "bearer" and schemes["headerApiKey"]["name"] == "X-API-Key"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert "422" not in responses or "Idempotency" in responses["422"]["description"], (method, path)
            assert "HTTPValidationError" not in json.dumps(responses), (method, path)
            assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
            if path.startswith("/v1/"):
                assert {"401", "403", "429", "503"} <= set(responses), (method, path)
                assert op["security"], (method, path)
    check = doc["paths"]["/v1/checks"]["post"]["responses"]
    assert {"413", "502", "503", "504"} <= set(check)
    index = next(p for p in doc["paths"]["/v1/audit/entries/{index}"]["get"]["parameters"] if p["name"] == "index")
    assert index["schema"]["maximum"] == 2**63 - 1


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/audit/entries/99999999999999999999", 400, "invalid_input"),  # was OverflowError -> 500
        ("GET", "/v1/audit/entries/-9223372036854775809", 400, "invalid_input"),
        ("GET", "/v1/audit/proofs/inclusion?index=9223372036854775808&size=1", 400, "invalid_input"),
        ("GET", "/v1/audit/entries?offset=1" + "0" * 5000, 400, "invalid_input"),  # never parsed as an int
        ("GET", "/v1/no-such-thing", 404, "not_found"),  # was {"detail": "Not Found"}
        ("DELETE", "/v1/programs", 405, "method_not_allowed"),
        ("POST", "/v1/checks", 400, "invalid_input"),  # parse error: was FastAPI's 422 shape
    ],
)
def test_every_error_has_the_one_shape_with_a_request_id(
    contract_gateway: str, federation: DevFederation, method: str, path: str, status: int, code: str
) -> None:
    headers = {"Authorization": f"Bearer {federation.api_keys['officer']}", "Content-Type": "application/json"}
    with _http(federation, contract_gateway) as http:
        response = http.request(method, path, headers=headers, content=b"{not json" if method == "POST" else None)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "message", "details", "request_id"} and body["error"] == code, body
    assert body["request_id"] == response.headers["X-Request-Id"] and len(body["request_id"]) == 36
    if "integer" in body["message"]:
        assert "64-bit" in body["message"]


def test_errors_built_by_routers_get_the_request_id_too(contract_gateway: str, federation: DevFederation) -> None:
    """Consent and audit routers answer their own errors; the edge still puts them in the shape."""
    headers = {"Authorization": f"Bearer {federation.api_keys['caseworker']}"}
    with _http(federation, contract_gateway) as http:
        response = http.get("/v1/consents/no-such-consent", headers=headers)
    assert response.status_code in (403, 404), response.text
    assert response.json()["request_id"] == response.headers["X-Request-Id"]


def _schemathesis(url: str, ca: Path, key: str | None, report: Path, config: Path) -> dict[str, object]:
    exe = Path(sys.executable).parent / "schemathesis"
    args = [str(exe), "--config-file", str(config), "run", f"{url}/openapi.json", "--tls-verify", str(ca)]
    args += ["--checks", CHECKS + (",ignored_auth" if key else ""), "--max-examples", "3", "--seed", "20261202"]
    # Without a key every operation answers 401 before reading its input: the coverage phase's ~1,400
    # boundary inputs per run (a fifth of the file's time) would test that one answer again and again.
    phases = "examples,coverage,fuzzing" if key else "examples,fuzzing"
    args += ["--phases", phases, "--workers", "1", "--no-shrink", "--request-timeout", "20"]
    args += ["--report", "json", "--report-json-path", str(report)]
    if key is not None:
        args += ["-H", f"Authorization: Bearer {key}"]
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}
    # Bounded by --max-examples; the timeout only catches a hang (one run took 120 s with six test workers).
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, check=False, cwd=report.parent)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-2000:]
    result: dict[str, object] = json.loads(report.read_text())
    result["output"] = done.stdout[-6000:]
    return result


@pytest.mark.parametrize("role", ROLES, ids=[r or "no-auth" for r in ROLES])
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    contract_gateway: str, federation: DevFederation, tmp_path: Path, role: str | None
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    key = federation.api_keys[role] if role else None
    result = _schemathesis(contract_gateway, federation.ca_cert, key, tmp_path / "report.json", config)
    operations = result["operations"]
    assert isinstance(operations, dict) and operations["tested"] == operations["total"] >= 30
    assert result["errors"] == [], result["output"]
    assert result["failures"] == [], result["output"]
    cases = result["test_cases"]
    assert isinstance(cases, dict) and cases["generated"] >= 40
