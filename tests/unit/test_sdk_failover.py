"""The SDK's retries over several gateways (client/sdk.py), against scripted HTTP answers.

A check that gets no answer from one gateway is retried on the next with the same
Idempotency-Key; refusals are never retried; waits are bounded and honour Retry-After up to a cap.
The processes-level test (a dead first gateway, a real federation) is
tests/integration/test_idempotent_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.sdk import GatewayClient, _retry_after
from crypto.envelope import SigningKey
from xgate.errors import GatewayError, InvalidInput
from xgate.pseudonym import Pseudonymiser

A, B = "https://gw-a.test:8443", "https://gw-b.test:8443"
ALICE = "110101199003071233"  # a valid GB 11643 id (synthetic)
SIGNER, WHO = SigningKey.generate("civil_affairs", "requester"), ("cw-test", "civil_affairs")

Script = Callable[[httpx.Request], httpx.Response]


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={"request_id": "r-1", "program": "dibao", "program_version": "1", "view": "per_criterion",
              "subjects": 1, "chunk_size": 4096, "criteria": [{"criterion": "income", "passes": [True]}]},
    )  # fmt: skip


def refusal(status: int, error: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"error": error, "message": error}, headers=headers)


class Gateways:
    """Per base URL a list of scripted answers (a callable or an exception to raise), in order."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.scripts = {A: scripts.get("a", []), B: scripts.get("b", [])}
        self.seen: list[tuple[str, str | None]] = []  # (base URL, Idempotency-Key)
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.seen.append((base, request.headers.get("Idempotency-Key")))
        step = self.scripts[base].pop(0) if self.scripts[base] else answer
        if isinstance(step, Exception):
            raise step
        result: httpx.Response = step(request)
        return result

    def client(self, urls: str | tuple[str, ...] = (A, B), **kwargs: Any) -> GatewayClient:
        client = GatewayClient(
            urls, "key", Pseudonymiser(b"\x01" * 32), sleep=self.sleeps.append, signer=SIGNER, identity=WHO, **kwargs
        )
        client._http = httpx.Client(transport=httpx.MockTransport(self.handle))
        return client


def check(client: GatewayClient) -> Any:
    return client.check("dibao", [ALICE], "eligibility", "reg:1", "case-1", mode="plaintext")


def test_a_dead_first_gateway_is_skipped_with_the_same_key_and_the_next_check_sticks() -> None:
    gw = Gateways(a=[httpx.ConnectError("refused")])
    with gw.client() as client:
        result = check(client)
        assert (result.gateway, result.attempts) == (B, 2)
        (first, key1), (second, key2) = gw.seen
        assert (first, second) == (A, B) and key1 == key2 and key1 is not None and len(key1) == 36
        check(client)
    assert gw.seen[2][0] == B  # the gateway that answered is tried first from then on
    assert gw.seen[2][1] != key1  # every check has a key of its own


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("connection dropped mid-answer"),
        lambda r: httpx.Response(502, text="<html>bad gateway</html>"),  # a load balancer's own 502
        lambda r: refusal(503, "overloaded", "1"),
        lambda r: refusal(503, "store_unavailable"),
        lambda r: refusal(504, "deadline_exceeded"),
        lambda r: refusal(429, "budget_exhausted", "2"),
        lambda r: refusal(409, "idempotency_in_progress", "1"),
    ],
    ids=["connect-timeout", "read-timeout", "dropped", "502", "503", "503-store", "504", "429", "409-in-progress"],
)
def test_unanswered_attempts_are_retried_on_the_next_gateway(failure: Any) -> None:
    gw = Gateways(a=[failure])
    with gw.client() as client:
        result = check(client)
    assert result.gateway == B and [u for u, _ in gw.seen] == [A, B]
    assert len({k for _, k in gw.seen}) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "invalid_input"),
        (401, "unauthenticated"),
        (403, "policy_denied"),
        (409, "training_busy"),
        (413, "payload_too_large"),
        (422, "idempotency_key_reused"),
        (500, "internal_error"),
        (502, "node_bad_response"),  # an agency node's failure: every replica reaches the same node
        (503, "node_unavailable"),
        (503, "tls_handshake_failed"),
        (504, "node_timeout"),
        (429, "node_rate_limited"),
    ],
)
def test_refusals_are_never_retried(status: int, error: str) -> None:
    gw = Gateways(a=[lambda r: refusal(status, error)])
    with gw.client() as client, pytest.raises(GatewayError) as refused:
        check(client)
    assert (refused.value.http_status, refused.value.code) == (status, error)
    assert len(gw.seen) == 1 and gw.sleeps == []


def test_retry_after_is_honoured_and_one_beyond_the_cap_is_not_waited_for() -> None:
    gw = Gateways(a=[lambda r: refusal(503, "overloaded", "3")])
    with gw.client(retry_after_cap_s=10) as client:
        check(client)
    assert gw.sleeps and gw.sleeps[0] >= 3.0
    gw = Gateways(a=[lambda r: refusal(429, "budget_exhausted", str(30 * 86400))])  # a probing budget
    with gw.client(retry_after_cap_s=10) as client, pytest.raises(GatewayError) as refused:
        check(client)
    assert refused.value.code == "budget_exhausted" and len(gw.seen) == 1 and gw.sleeps == []


def test_attempts_are_bounded_and_backoff_is_jittered_and_growing() -> None:
    down = [httpx.ConnectError("refused")] * 10
    gw = Gateways(a=list(down), b=list(down))
    with gw.client(max_attempts=5, backoff_s=0.2, jitter=lambda: 1.0) as client, pytest.raises(GatewayError) as failed:
        check(client)
    assert failed.value.code == "gateway_unreachable" and failed.value.http_status == 503
    assert [u for u, _ in gw.seen] == [A, B, A, B, A]
    assert gw.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6])
    gw = Gateways(a=[httpx.ConnectError("refused")])
    with gw.client(backoff_s=0.2, jitter=lambda: 0.0) as client:
        check(client)
    assert gw.sleeps == pytest.approx([0.1])  # jitter: between half and all of the step


def test_one_gateway_still_works_and_retries_on_itself() -> None:
    gw = Gateways(a=[lambda r: refusal(503, "store_unavailable")])
    with gw.client(A) as client:
        result = check(client)
    assert result.gateway == A and [u for u, _ in gw.seen] == [A, A]


def test_a_training_job_moves_on_only_when_no_gateway_received_it() -> None:
    gw = Gateways(a=[httpx.ConnectError("refused")], b=[lambda r: httpx.Response(202, json={"job_id": "j1"})])
    with gw.client() as client:
        assert client.submit_training_job({"job_id": "j1"})["job_id"] == "j1"
    gw = Gateways(a=[httpx.ReadTimeout("sent, no answer")])  # it may be running there: never sent twice
    with gw.client() as client, pytest.raises(GatewayError, match="ReadTimeout"):
        client.submit_training_job({"job_id": "j1"})
    assert len(gw.seen) == 1
    gw = Gateways(a=[lambda r: refusal(503, "training_unavailable")])
    with gw.client() as client, pytest.raises(GatewayError):
        client.submit_training_job({"job_id": "j1"})
    assert len(gw.seen) == 1 and gw.seen[0][1] is None  # no idempotency key: not a check


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ([], "at least one"),
        ([A, A], "twice"),
        ([A, " "], "at least one"),
        # Refused at once, not after four attempts ending in "UnsupportedProtocol" (thirteenth session's review).
        (["not-a-url"], "'not-a-url' is not an http"),
        ([A, "ftp://gw.example"], "is not an http"),
        (["https://"], "is not an http"),
        (["https://[::1"], "is not an http"),
        (["https://gw:abc"], "is not an http"),
    ],
)
def test_bad_gateway_lists_are_refused(urls: list[str], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        GatewayClient(urls, "key")


def test_retry_after_reads_seconds_and_dates() -> None:
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait


def test_xgate_check_takes_several_gateways_and_tries_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    seen: list[Any] = []

    class Recording(GatewayClient):
        def __init__(self, base_url: Any, *args: Any, **kwargs: Any) -> None:
            seen.append(base_url)
            super().__init__(base_url, *args, **kwargs, backoff_s=0.01)

    monkeypatch.setattr("client.sdk.GatewayClient", Recording)
    monkeypatch.delenv("XGATE_GATEWAY", raising=False)
    subjects, key = tmp_path / "subjects.csv", tmp_path / "pseudonym.key"
    subjects.write_text(f"national_id\n{ALICE}\n")
    key.write_text("ab" * 32)
    SIGNER.save(tmp_path / "sign.key")
    dead = [f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{_closed_port()}"]
    args = ["check", "--program", "dibao", "--subjects", str(subjects), "--purpose", "dibao", "--legal-basis", "L-1",
            "--case-id", "C-1", "--pseudonym-key", str(key), "--key-file", str(tmp_path / "requester.key"),
            "--api-key", "k", "--gateway", dead[0], "--gateway", dead[1]]  # fmt: skip
    unsigned = CliRunner().invoke(app, [*args, "--signing-key", str(tmp_path / "absent.key")])
    assert unsigned.exit_code == 1 and "absent.key does not exist" in unsigned.output, unsigned.output
    assert "xgate requester keygen" in unsigned.output and seen == []
    res = CliRunner().invoke(app, [*args, "--signing-key", str(tmp_path / "sign.key")])
    assert seen == [dead]
    assert res.exit_code == 2, res.output
    assert "no answer from the gateway" in res.output and "Traceback" not in res.output


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_he_check_names_its_context_by_fingerprint_and_registers_it_once_on_context_unknown(
    requester_keys: Any,
) -> None:
    import json

    from crypto.he import context_fingerprint

    ref = context_fingerprint(requester_keys.public_context)
    bodies: list[tuple[str, dict[str, Any]]] = []

    def record(step: Script) -> Script:
        def wrapped(request: httpx.Request) -> httpx.Response:
            bodies.append((request.url.path, json.loads(request.content)))
            return step(request)

        return wrapped

    def registered(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"fingerprint": ref, "expires_at": 1.0, "bytes": 1})

    def plain(request: httpx.Request) -> httpx.Response:  # the HE answer's shape is not under test here
        return answer(request)

    gw = Gateways(a=[record(lambda r: refusal(404, "context_unknown")), record(registered), record(plain),
                     record(plain)])  # fmt: skip
    with gw.client(A, keys=requester_keys) as client:
        first = client.check("dibao", [ALICE], "eligibility", "reg:1", "case-1")
        second = client.check("dibao", [ALICE], "eligibility", "reg:1", "case-2")
        assert client.context_registrations == 1
        assert (first.attempts, second.attempts) == (2, 1)  # the check requests each one sent
    paths = [p for p, _ in bodies]
    assert paths == ["/v1/checks", "/v1/contexts", "/v1/checks", "/v1/checks"]
    checks = [b for p, b in bodies if p == "/v1/checks"]
    assert all(b["context_fingerprint"] == ref and "public_context" not in b for b in checks)
    assert gw.seen[0][1] == gw.seen[2][1]  # the resent check keeps its Idempotency-Key


def test_a_context_registered_under_another_fingerprint_is_refused(requester_keys: Any) -> None:
    from xgate.errors import CryptoError

    def wrong(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"fingerprint": "sha256:" + "0" * 64, "expires_at": 1.0})

    gw = Gateways(a=[wrong])
    with gw.client(A, keys=requester_keys) as client, pytest.raises(CryptoError, match="another fingerprint"):
        client.register_context()


@pytest.mark.parametrize(
    "url", ["https://[::1]:8443", "http://localhost:8443", "https://gw.example/xgate", "HTTPS://GW.EXAMPLE"]
)
def test_gateway_urls_of_every_usual_form_are_taken(url: str) -> None:
    GatewayClient(url, "key")


def test_a_ca_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    """It printed "[X509: NO_CERTIFICATE_OR_CRL_FOUND] ... (_ssl.c:4154)", naming neither the flag nor the file."""
    not_a_cert = tmp_path / "applicants.csv"
    not_a_cert.write_text("national_id\n")
    with pytest.raises(
        InvalidInput, match=r"--ca .*applicants\.csv: cannot use it as the federation CA certificate \(no PEM"
    ):
        GatewayClient(A, "key", verify=str(not_a_cert))
    with pytest.raises(InvalidInput, match=r"--ca .*absent\.pem: cannot use it .*No such file"):
        GatewayClient(A, "key", verify=str(tmp_path / "absent.pem"))
