"""REST authentication and rate limiting: happy paths and one named test per refusal."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from gateway.auth import Authenticator, add_user, disable_user, fastapi_dependency
from gateway.ratelimit import Limit, RateLimiter
from xgate.errors import BudgetExhausted, InvalidInput, Unauthenticated, XgateError
from xgate.principal import Principal


@pytest.fixture
def users(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "users.json"
    return path, add_user(path, "alice", "civil_affairs", "caseworker", "gold")


def test_key_authenticates_to_principal(users: tuple[Path, str]) -> None:
    path, key = users
    auth = Authenticator(path)
    expected = Principal("alice", "civil_affairs", "caseworker", "gold")
    assert auth.authenticate({"Authorization": f"Bearer {key}"}) == expected
    assert auth.authenticate({"x-api-key": key}) == expected


def test_only_hash_stored(users: tuple[Path, str]) -> None:
    path, key = users
    text = path.read_text()
    secret = key.split("_", 2)[2]  # the secret itself may contain (or start with) "_"
    assert len(secret) == 43
    assert key not in text and secret not in text
    assert path.stat().st_mode & 0o077 == 0


def test_refuse_missing_key(users: tuple[Path, str]) -> None:
    with pytest.raises(Unauthenticated, match="missing API key"):
        Authenticator(users[0]).authenticate({})


def test_refuse_wrong_scheme(users: tuple[Path, str]) -> None:
    with pytest.raises(Unauthenticated, match="unsupported Authorization scheme"):
        Authenticator(users[0]).authenticate({"Authorization": f"Basic {users[1]}"})
    with pytest.raises(Unauthenticated, match="missing API key after 'Bearer'"):  # was "unsupported scheme"
        Authenticator(users[0]).authenticate({"Authorization": "Bearer   "})


def test_refuse_malformed_key(users: tuple[Path, str]) -> None:
    with pytest.raises(Unauthenticated, match="invalid API key"):
        Authenticator(users[0]).authenticate({"X-API-Key": "hunter2"})


def test_refuse_wrong_secret_for_known_key_id(users: tuple[Path, str]) -> None:
    path, key = users
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(Unauthenticated, match="invalid API key"):
        Authenticator(path).authenticate({"X-API-Key": forged})


def test_refuse_unknown_key_id(users: tuple[Path, str]) -> None:
    path, key = users
    with pytest.raises(Unauthenticated, match="invalid API key"):
        Authenticator(path).authenticate({"X-API-Key": "xgk_000000000000_" + key.split("_")[2]})


def test_refuse_disabled_user_and_reload(users: tuple[Path, str]) -> None:
    path, key = users
    auth = Authenticator(path)
    auth.authenticate({"X-API-Key": key})
    disable_user(path, "alice")
    with pytest.raises(Unauthenticated, match="disabled"):
        auth.authenticate({"X-API-Key": key})


def test_new_key_for_same_user_disables_old(users: tuple[Path, str]) -> None:
    path, old = users
    new = add_user(path, "alice", "civil_affairs", "caseworker", "silver")
    auth = Authenticator(path)
    assert auth.authenticate({"X-API-Key": new}).tier == "silver"
    with pytest.raises(Unauthenticated):
        auth.authenticate({"X-API-Key": old})


@pytest.mark.parametrize(
    "field,value", [("role", "root"), ("tier", "platinum"), ("agency", "Tax Bureau"), ("user", "bad user!")]
)
def test_add_user_refuses_bad_fields(tmp_path: Path, field: str, value: str) -> None:
    args = {"user": "bob", "agency": "tax", "role": "analyst", "tier": "bronze"} | {field: value}
    with pytest.raises(InvalidInput):
        add_user(tmp_path / "u.json", **args)


def test_fastapi_dependency_roles_and_rate_limit(users: tuple[Path, str]) -> None:
    path, key = users
    clock = [0.0]
    limiter = RateLimiter(1.0, 2, clock=lambda: clock[0])
    app = FastAPI()

    @app.exception_handler(XgateError)
    async def _err(request, exc: XgateError) -> JSONResponse:
        return JSONResponse(exc.to_public(), status_code=exc.http_status)

    # A dependency built from this test's locals: written as Annotated it would be a string (this module
    # has `from __future__ import annotations`) that FastAPI cannot resolve, so the default form stays.
    @app.get("/me")
    def me(p: Principal = Depends(fastapi_dependency(Authenticator(path), limiter=limiter))) -> dict[str, str]:  # noqa: FAST002
        return {"user": p.user}

    @app.get("/audit")
    def audit(p: Principal = Depends(fastapi_dependency(Authenticator(path), roles={"security_officer"}))) -> dict:  # noqa: FAST002
        return {}

    client = TestClient(app)
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/me", headers=h).json() == {"user": "alice"}
    assert client.get("/me").status_code == 401
    assert client.get("/audit", headers=h).status_code == 403
    assert client.get("/me", headers=h).status_code == 200
    refused = client.get("/me", headers=h)
    assert refused.status_code == 429 and refused.json()["details"]["retry_after_s"] > 0
    assert key not in json.dumps(refused.json())


def test_rate_limit_refills_and_reports_retry_after() -> None:
    clock = [100.0]
    rl = RateLimiter(2.0, 3, clock=lambda: clock[0])
    for _ in range(3):
        rl.acquire("u")
    with pytest.raises(BudgetExhausted) as info:
        rl.acquire("u")
    assert info.value.details["retry_after_s"] == pytest.approx(0.5)
    clock[0] += 0.5
    rl.acquire("u")
    rl.acquire("other")  # buckets are per user


def test_rate_limit_per_tier_override() -> None:
    rl = RateLimiter(1.0, 1, per_tier={"gold": Limit(1.0, 5)}, clock=lambda: 0.0)
    for _ in range(5):
        rl.acquire("g", tier="gold")
    rl.acquire("b", tier="bronze")
    with pytest.raises(BudgetExhausted):
        rl.acquire("b", tier="bronze")


def test_rate_limit_refuses_cost_above_burst() -> None:
    with pytest.raises(InvalidInput):
        RateLimiter(1.0, 2).acquire("u", cost=3)


def test_rate_limit_threadsafe() -> None:
    rl = RateLimiter(0.001, 50, clock=lambda: 0.0)
    ok: list[int] = []

    def worker() -> None:
        for _ in range(20):
            try:
                rl.acquire("u")
                ok.append(1)
            except BudgetExhausted:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 50


def test_rate_limit_memory_bounded() -> None:
    clock = [0.0]
    rl = RateLimiter(10.0, 1, clock=lambda: clock[0], max_users=2)
    rl.acquire("a")
    rl.acquire("b")
    with pytest.raises(BudgetExhausted, match="too many"):
        rl.acquire("c")
    clock[0] += 1.0  # a and b have refilled: their buckets can be forgotten
    rl.acquire("c")


def test_ensure_available_checks_without_consuming() -> None:
    clock = [0.0]
    rl = RateLimiter(1.0, 2, clock=lambda: clock[0])
    for _ in range(5):
        rl.ensure_available("a")  # never consumes
    rl.acquire("a")
    rl.acquire("a")
    with pytest.raises(BudgetExhausted) as info:
        rl.ensure_available("a")
    assert info.value.details["retry_after_s"] == 1.0
    clock[0] = 1.0
    rl.ensure_available("a")


def test_rest_authenticator_offloads_store_lookups_from_the_event_loop(users: tuple[Path, str]) -> None:
    """Replicas (users and buckets in PostgreSQL) authenticate in a worker thread, never on the loop."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from gateway.ratelimit import RateLimiter
    from gateway.wiring import RestAuthenticator

    seen: list[str] = []

    class Recording(RateLimiter):
        def acquire(self, user: str, cost: float = 1.0, tier: str | None = None) -> None:
            seen.append(threading.current_thread().name)
            super().acquire(user, cost, tier=tier)

    request = SimpleNamespace(headers={"Authorization": f"Bearer {users[1]}"}, client=None)
    inline = RestAuthenticator(Authenticator(users[0]), Recording(rate_per_s=10, burst=10))
    offloaded = RestAuthenticator(Authenticator(users[0]), Recording(rate_per_s=10, burst=10), offload=True)

    async def call(auth: RestAuthenticator) -> str:
        result = auth(request)  # type: ignore[arg-type]
        who = await result if asyncio.iscoroutine(result) else result
        return who.user  # type: ignore[union-attr]

    async def both() -> tuple[str, str]:
        return await call(inline), await call(offloaded)

    inline_user, offloaded_user = asyncio.run(both())
    assert inline_user == offloaded_user != ""
    loop_thread = threading.current_thread().name
    assert seen[0] == loop_thread and seen[1] != loop_thread
