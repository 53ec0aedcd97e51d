"""REST authentication for people and tools: API keys mapped to user, agency, role and tier.

A key looks like `xgk_<key_id>_<secret>`: key_id (12 hex digits) is public and selects the
user record; secret is 32 random bytes (base64url). Only SHA-256 of the whole key is stored
(users file, JSON, mode 0600), compared in constant time; the key itself is shown once by
`xgate pki add-user`. Callers send `Authorization: Bearer <key>` or `X-API-Key: <key>`.
The users file is re-read when it changes, so added/disabled users take effect without restart.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crypto.pki import AGENCY_ID
from gateway.ratelimit import Limiter
from xgate.errors import ConfigError, InvalidInput, NotFound, PolicyDenied, Unauthenticated
from xgate.principal import ROLES, TIERS, Principal
from xgate.pseudonym import contains_national_id

FORMAT = "xgate-users/1"
_KEY = re.compile(r"^xgk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_KEY_HEADERS = frozenset({"authorization", "x-api-key"})


def _hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class UserRecord:
    user: str
    agency: str
    role: str
    tier: str
    key_id: str
    key_sha256: str
    disabled: bool = False

    def principal(self) -> Principal:
        return Principal(user=self.user, agency=self.agency, role=self.role, tier=self.tier)


_USER_FIELDS = ("user", "agency", "role", "tier", "key_id", "key_sha256")


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"users file {path} is unreadable or not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("users"), list):
        raise ConfigError(f"users file {path} is not in {FORMAT} format")
    for n, user in enumerate(doc["users"]):  # a bad entry would fail every authentication with a 500
        if not isinstance(user, dict) or not all(isinstance(user.get(k), str) for k in _USER_FIELDS):
            raise ConfigError(f"users file {path}: entry {n} lacks one of {', '.join(_USER_FIELDS)}")
    return list(doc["users"])


def check_users_file(path: Path) -> int:
    """How many users `path` holds (`xgate config check`); ConfigError names what is wrong with it."""
    return len(_load(path))


def _save(path: Path, users: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"format": FORMAT, "users": users}, fh, indent=2)
    tmp.replace(path)


def check_user_id(user: str) -> str:
    """A user id's shape; never a resident identity number (ids reach every audit log and report)."""
    if not _USER.fullmatch(user):
        raise InvalidInput("user id must be 1-64 of letters, digits, _ . @ -")
    if contains_national_id(user):
        raise InvalidInput(
            "user id holds what looks like a resident identity number; use an id that carries no personal data"
        )
    return user


def new_user(user: str, agency: str, role: str, tier: str) -> tuple[str, dict[str, Any]]:
    """A validated user record with a fresh API key: (the key, shown once; the record, its hash only)."""
    check_user_id(user)
    if not AGENCY_ID.fullmatch(agency):
        raise InvalidInput("agency id must match ^[a-z][a-z0-9_]{1,31}$")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    if tier not in TIERS:
        raise InvalidInput(f"tier must be one of {', '.join(TIERS)}")
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    api_key = f"xgk_{key_id}_{secret}"
    return api_key, {
        "user": user,
        "agency": agency,
        "role": role,
        "tier": tier,
        "key_id": key_id,
        "key_sha256": _hash(api_key),
        "disabled": False,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def add_user(users_file: Path, user: str, agency: str, role: str, tier: str) -> str:
    """Register a user and return their new API key (the only time it is visible).

    Adding an existing user id issues a new key and disables the old one (key rotation).
    """
    api_key, rec = new_user(user, agency, role, tier)
    users = _load(users_file)
    for u in users:
        if u["user"] == user:
            u["disabled"] = True
    users.append(rec)
    _save(users_file, users)
    return api_key


def load_users(users_file: Path) -> list[dict[str, Any]]:
    """The records of a users file (ConfigError if unreadable)."""
    return _load(users_file)


def disable_user(users_file: Path, user: str) -> int:
    """Disable every key of a user; return how many were active."""
    users = _load(users_file)
    hits = [u for u in users if u["user"] == user and not u.get("disabled")]
    if not hits:
        raise NotFound(f"no active user '{user}'")
    for u in hits:
        u["disabled"] = True
    _save(users_file, users)
    return len(hits)


def extract_key(headers: Mapping[str, str]) -> str:
    """The API key from Authorization: Bearer or X-API-Key (header names case-insensitive).

    A request carrying the key twice (two Authorization or X-API-Key headers, or both) is a 400:
    silently choosing one would let a proxy and the gateway disagree on who is calling.
    """
    lower: dict[str, str] = {}
    for name, value in headers.items():  # Starlette's Headers.items() keeps repeated headers
        name = name.lower()
        if name in lower and name in _KEY_HEADERS:
            raise InvalidInput(f"the {name} header is repeated; send exactly one API key")
        lower[name] = value
    if "authorization" in lower and "x-api-key" in lower:
        raise InvalidInput("both Authorization and X-API-Key are present; send exactly one API key")
    auth = lower.get("authorization", "")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("unsupported Authorization scheme (use Bearer)")
        if not token.strip():
            raise Unauthenticated("missing API key after 'Bearer'")
        return token.strip()
    key = lower.get("x-api-key", "").strip()
    if not key:
        raise Unauthenticated("missing API key (Authorization: Bearer <key> or X-API-Key)")
    return key


def presented_key_id(headers: Mapping[str, str]) -> str | None:
    """The public key id of a well-formed presented key (failure accounting), else None."""
    try:
        m = _KEY.match(extract_key(headers))
    except (Unauthenticated, InvalidInput):
        return None
    return m.group(1) if m else None


class UserLookup(Protocol):
    """Where users live when they are not in a file: the replicas' shared database (gateway/user_store.py)."""

    def lookup(self, key_id: str) -> UserRecord | None: ...


class Authenticator:
    """Maps API keys to principals, re-reading the users file when it changes, or asking a
    shared user store (replicated mode), whose answers are kept for ``store_ttl_s``."""

    def __init__(
        self,
        users_file: Path | None = None,
        records: Iterable[UserRecord] = (),
        *,
        store: UserLookup | None = None,
        store_ttl_s: float = 2.0,
    ) -> None:
        self.users_file = users_file
        self.store = store
        self.store_ttl_s = store_ttl_s
        self._cache: dict[str, tuple[float, UserRecord | None]] = {}
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._by_key_id: dict[str, UserRecord] = {r.key_id: r for r in records}

    def _record(self, key_id: str) -> UserRecord | None:
        if self.store is None:
            self._refresh()
            return self._by_key_id.get(key_id)
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self.store_ttl_s:
            return hit[1]
        found = self.store.lookup(key_id)
        if len(self._cache) > 10_000:  # unknown key ids must not grow it without bound
            self._cache.clear()
        self._cache[key_id] = (now, found)
        return found

    def _refresh(self) -> None:
        if self.users_file is None:
            return
        try:
            st = self.users_file.stat()
        except OSError:
            raise ConfigError(f"users file {self.users_file} is missing") from None
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            records = {}
            for u in _load(self.users_file):
                rec = UserRecord(
                    u["user"],
                    u["agency"],
                    u["role"],
                    u["tier"],
                    u["key_id"],
                    u["key_sha256"],
                    bool(u.get("disabled", False)),
                )
                records[rec.key_id] = rec
            self._by_key_id, self._stamp = records, stamp

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Return the caller's Principal or raise Unauthenticated (reason without key material)."""
        key = extract_key(headers)
        m = _KEY.match(key)
        record = self._record(m.group(1)) if m else None
        # Hash and compare even for malformed/unknown keys so timing does not reveal which failed.
        expected = record.key_sha256 if record else "0" * 64
        matches = hmac.compare_digest(_hash(key), expected)
        if record is None or not matches:
            raise Unauthenticated("invalid API key")
        if record.disabled:
            raise Unauthenticated("API key disabled")
        return record.principal()

    def __call__(self, request: Any) -> Principal:
        """Use directly as the gateway's `authenticate(request)` callable (Starlette Request)."""
        return self.authenticate(request.headers)


def fastapi_dependency(
    authenticator: Authenticator, *, roles: Iterable[str] | None = None, limiter: Limiter | None = None
) -> Callable[[Any], Principal]:
    """FastAPI dependency: authenticate, check role, take a rate-limit token.

    caller: Principal = Depends(fastapi_dependency(auth, roles={"caseworker"}, limiter=rl))
    """
    allowed = None if roles is None else frozenset(roles)

    def dependency(request: Any) -> Principal:
        principal = authenticator.authenticate(request.headers)
        if allowed is not None and principal.role not in allowed:
            raise PolicyDenied(f"role '{principal.role}' may not use this endpoint")
        if limiter is not None:
            limiter.acquire(principal.user, tier=principal.tier)
        request.state.principal = principal
        return principal

    # FastAPI injects the Request when the parameter is annotated with it.
    from starlette.requests import Request

    dependency.__annotations__["request"] = Request
    return dependency
