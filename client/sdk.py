"""Requester SDK: pseudonymise, encrypt-context, call the gateway, decrypt signs.

The secret key stays in this process. Its public context (~0.5 MB) is registered with the gateway
once (`POST /v1/contexts`) and checks name it by fingerprint (`sha256:` of its bytes, computed
here); a gateway that does not know the fingerprint (first use of a key, expired, another
federation or an unshared replica) answers 404 `context_unknown`, and the check registers the
context and is sent again, transparently. National ids never leave it either: only pseudonyms are
sent, and the mapping back to ids is kept locally for the result table.

Several gateways (replicas of one federation) may be given: a request that could not be
answered (connection refused or lost, timeout, 502/503/504, 429, or 409 while the same check is
still running elsewhere; not an agency node's failure, which every replica would meet alike) is
retried on the next one, a bounded number of times, with jittered
exponential backoff that honours Retry-After up to a cap. Each check carries a fresh
`Idempotency-Key` (uuid4) reused for its retries, so the gateways answer it once: a retry is
neither charged nor computed twice (docs/PROTOCOL.md, "Retries and idempotency keys"). Refusals
(other 4xx) are never retried.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np

from crypto.envelope import SigningKey
from crypto.he import RequesterKeys, context_fingerprint
from exchange.cohort import CohortCount, debias
from policies.check_statements import Question, sign_check
from xgate.errors import CryptoError, InvalidInput
from xgate.errors import GatewayError as GatewayError  # re-exported: the SDK's callers catch it
from xgate.logging import get_logger
from xgate.pseudonym import Pseudonymiser

log = get_logger("xgate.client.sdk")

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # not answered: another gateway (or later) may answer
IN_PROGRESS = "idempotency_in_progress"  # 409: the same check is still running on some gateway
# idempotent: GETs and checks (Idempotency-Key), retried on every condition above;
# unsent: other POSTs, moved to the next gateway only when the request never reached one;
# none: one attempt on the gateway that answered last (state that lives on that gateway).
Retry = Literal["idempotent", "unsent", "none"]


@dataclass
class CheckResult:
    request_id: str
    program: str
    program_version: str
    view: str
    subjects: list[str]  # the caller's own identifiers, in request order
    criteria: list[str]
    descriptions: dict[str, str]
    passes: dict[str, np.ndarray]  # criterion -> bool per subject
    timings_ms: dict[str, float] = field(default_factory=dict)
    wire_bytes: int = 0  # client <-> gateway HTTP bodies
    node_bytes: int = 0  # gateway <-> nodes protobuf messages, as the gateway reports them
    gateway: str = ""  # the base URL that answered
    attempts: int = 1  # requests sent for this check (retries included)
    replayed: bool = False  # the answer was the gateway's stored one (Idempotent-Replayed)
    # cohort view: the gateway's randomized response (epsilon_per_criterion, flip_probability,
    # epsilon_per_query, period_spent, period_cap), needed to debias the counts
    privacy: dict[str, float] = field(default_factory=dict)

    @property
    def overall(self) -> np.ndarray:
        result = np.ones(len(self.subjects), dtype=bool)
        for criterion in self.criteria:
            result &= self.passes[criterion]
        return result

    def rows(self) -> list[dict[str, Any]]:
        """Per-subject rows, as much as the caller's tier reveals.

        per_criterion (gold): every criterion and the verdict; overall (silver): the verdict only
        (criteria were permuted per subject by the gateway); cohort (bronze): no rows at all.
        """
        if self.view == "cohort":
            raise InvalidInput("the cohort view has no per-subject results: use counts()")
        overall = self.overall
        if self.view == "overall":
            return [{"subject": s, "eligible": bool(overall[i])} for i, s in enumerate(self.subjects)]
        return [
            {"subject": s, **{c: bool(self.passes[c][i]) for c in self.criteria}, "eligible": bool(overall[i])}
            for i, s in enumerate(self.subjects)
        ]

    def counts(self) -> dict[str, int]:
        """Passing subjects per criterion and overall; in the cohort view the *noisy* count per
        criterion (slots are flipped at random and shuffled per criterion, so there is no overall
        count): use cohort_counts() for the debiased estimates."""
        if self.view == "cohort":
            return {c: int(self.passes[c].sum()) for c in self.criteria}
        out = {c: int(self.passes[c].sum()) for c in self.criteria} if self.view != "overall" else {}
        out["eligible"] = int(self.overall.sum())
        return out

    def cohort_counts(self) -> dict[str, CohortCount]:
        """Cohort view: per criterion the noisy count, its unbiased estimate and standard error."""
        if self.view != "cohort":
            raise InvalidInput("only the cohort view has noisy counts: use counts()")
        p = self.privacy.get("flip_probability")
        if p is None:
            raise CryptoError("the gateway's cohort answer does not state its flip probability")
        n = len(self.subjects)
        return {c: debias(int(self.passes[c].sum()), n, float(p)) for c in self.criteria}


class GatewayClient:
    def __init__(
        self,
        base_url: str | Sequence[str],
        api_key: str,
        pseudonymiser: Pseudonymiser | None = None,  # checks need it; training jobs do not
        keys: RequesterKeys | None = None,
        timeout_s: float = 120.0,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
        *,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        retry_after_cap_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        signer: SigningKey | None = None,
        identity: tuple[str, str] | None = None,
    ) -> None:
        """``base_url``: one gateway or several replicas of one federation (tried in order, then
        sticking to the one that answered). ``max_attempts`` bounds the requests per call;
        a Retry-After beyond ``retry_after_cap_s`` is not waited for (the error is raised).
        ``signer``: the requesting user's registered signing key (requesters.toml), which signs
        every check (policies/check_statements.py); ``identity``: its (user, agency), asked of
        the gateway (GET /v1/whoami) when not given."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            raise InvalidInput("at least one gateway URL is needed")
        if len(set(urls)) != len(urls):
            raise InvalidInput("a gateway URL is listed twice")
        if max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1")
        self.urls = [u.strip().rstrip("/") for u in urls]
        for url in self.urls:
            try:
                parts = urlsplit(url)
                _ = parts.port  # a port that is not a number raises here, not at the first request
                usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:  # an unclosed IPv6 bracket, a port out of range
                usable = False
            if not usable:
                raise InvalidInput(f"gateway URL {url!r} is not an http(s) address (e.g. https://gw.example:8443)")
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.retry_after_cap_s = retry_after_cap_s
        self._sleep = sleep
        self._jitter = jitter
        self._current = 0  # the gateway that answered last
        tls: ssl.SSLContext | bool = verify if isinstance(verify, bool) else True
        if isinstance(verify, str):
            try:
                tls = ssl.create_default_context(cafile=verify)  # the federation CA, not the system store
            except (OSError, ssl.SSLError) as exc:
                why = "no PEM certificate in it" if isinstance(exc, ssl.SSLError) else exc.strerror or str(exc)
                raise InvalidInput(f"--ca {verify}: cannot use it as the federation CA certificate ({why})") from None
            if cert is not None:
                tls.load_cert_chain(*cert)
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            verify=tls,
        )
        self._pseudonymiser = pseudonymiser
        self._keys = keys
        self._signer = signer
        self._identity = identity
        self.last_attempts = 0  # requests the last call sent
        self.last_replayed = False
        self.context_registrations = 0  # POST /v1/contexts this client sent
        self.last_request_bytes = 0  # HTTP body bytes of the last request and its answer

    @property
    def url(self) -> str:
        """The gateway that answered last (the first one before any call)."""
        return self.urls[self._current]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def keys(self) -> RequesterKeys:
        if self._keys is None:
            self._keys = RequesterKeys.generate()
        return self._keys

    def _call(
        self,
        method: str,
        path: str,
        *,
        retry: Retry = "idempotent",
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], int]:
        index = self._current
        attempts = self.max_attempts if retry != "none" else 1
        wait = 0.0
        failure: GatewayError | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                index = (index + 1) % len(self.urls)  # the next gateway (the same one if there is one)
                self._sleep(max(wait, self._backoff(attempt)))
            url = self.urls[index]
            self.last_attempts = attempt
            try:
                response = self._http.request(method, url + path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                failure = GatewayError(
                    503,
                    {
                        "error": "gateway_unreachable",
                        "message": f"no answer from the gateway at {url}: {type(exc).__name__}",
                    },
                )
                log.warning("gateway_attempt_failed", url=url, attempt=attempt, error=type(exc).__name__)
                if retry == "idempotent" or (retry == "unsent" and unsent):
                    wait = 0.0
                    continue
                raise failure from None
            size = len(response.content) + len(response.request.content or b"")
            self.last_request_bytes = size
            try:
                body = response.json()
            except ValueError:
                body = {"error": "bad_response", "message": response.text[:200]}
            if response.status_code < 400:
                self._current = index
                self.last_replayed = response.headers.get("Idempotent-Replayed") == "true"
                return body, size
            failure = GatewayError(response.status_code, body if isinstance(body, dict) else {})
            if retry != "idempotent" or not _retryable(response.status_code, failure.code):
                raise failure
            after = _retry_after(response.headers.get("Retry-After"))
            if after is not None and after > self.retry_after_cap_s:
                raise failure  # e.g. a probing budget that resets in days: not worth waiting for
            wait = after or 0.0
            log.warning(
                "gateway_attempt_failed", url=url, attempt=attempt, status=response.status_code, error=failure.code
            )
        assert failure is not None
        raise failure

    def _backoff(self, attempt: int) -> float:
        """Jittered exponential backoff before attempt ``attempt`` (>= 2): half to all of base * 2^(n-2)."""
        base = min(self.retry_after_cap_s, self.backoff_s * 2.0 ** (attempt - 2))
        return base * (0.5 + 0.5 * self._jitter())

    def register_context(self) -> tuple[str, int]:
        """Register this client's public HE context (idempotent); returns its fingerprint and the bytes moved."""
        data = base64.b64encode(self.keys.public_context).decode("ascii")
        body, size = self._call("POST", "/v1/contexts", json={"public_context": data})
        self.context_registrations += 1
        fingerprint = str(body.get("fingerprint", ""))
        if fingerprint != context_fingerprint(self.keys.public_context):
            raise CryptoError("the gateway registered the context under another fingerprint")
        return fingerprint, size

    def programs(self) -> list[dict[str, Any]]:
        body, _ = self._call("GET", "/v1/programs")
        return list(body)  # type: ignore[arg-type]

    def check(
        self,
        program: str,
        subjects: Sequence[str],
        purpose: str,
        legal_basis: str,
        case_id: str,
        consent_ref: str = "",
        approval_ref: str = "",
        mode: str = "he",
    ) -> CheckResult:
        """Run one check over national ids (pseudonymised here, never sent)."""
        if not subjects:
            raise InvalidInput("no subjects to check")
        if self._pseudonymiser is None:
            raise InvalidInput("this client has no pseudonym key: checks need one")
        pseudonyms = [self._pseudonymiser.pseudonym(s) for s in subjects]
        if len(set(pseudonyms)) != len(pseudonyms):
            raise InvalidInput("the subject list names the same person twice")
        payload: dict[str, Any] = {
            "program": program,
            "purpose": purpose,
            "legal_basis": legal_basis,
            "case_id": case_id,
            "consent_ref": consent_ref,
            "approval_ref": approval_ref,
            "mode": mode,
            "pseudonyms": pseudonyms,
        }
        extra = 0
        if mode == "he":
            payload["context_fingerprint"] = context_fingerprint(self.keys.public_context)
        payload["requester_statement"] = self._statement(payload)
        # One key for this check and all its retries: the gateways answer it once.
        key = {"Idempotency-Key": str(uuid.uuid4())}
        earlier = 0  # check requests sent before the context was registered
        try:
            body, size = self._call("POST", "/v1/checks", json=payload, headers=key)
        except GatewayError as exc:
            if mode != "he" or exc.code != "context_unknown":
                raise
            extra, earlier = self.last_request_bytes, self.last_attempts
            _, registered = self.register_context()
            body, size = self._call("POST", "/v1/checks", json=payload, headers=key)
            extra += registered
        result = self._decode(body, list(subjects), size + extra)
        result.gateway, result.replayed = self.url, self.last_replayed
        result.attempts = earlier + self.last_attempts
        return result

    def _statement(self, payload: Mapping[str, Any]) -> str:
        """This check signed by the requesting user: the question, the HE context and the subjects."""
        if self._signer is None:
            raise InvalidInput(
                "this client has no requester signing key: every check is signed by its requester"
                " (xgate requester keygen, then the federation operator registers it in requesters.toml)"
            )
        if self._identity is None:
            body, _ = self._call("GET", "/v1/whoami")
            self._identity = (str(body["user"]), str(body["agency"]))
        user, agency = self._identity
        question = Question.of(user, agency, payload, str(payload.get("context_fingerprint", "")))
        return sign_check(self._signer, question, datetime.now(UTC))

    # -- federated training --------------------------------------------------------------------
    def submit_training_job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/training/jobs; returns {job_id, state, status_url, decision} (202) or raises GatewayError."""
        # Not idempotent across gateways: moved on only when no gateway received it.
        body, _ = self._call("POST", "/v1/training/jobs", json=dict(job), retry="unsent")
        return body

    def training_job_status(self, job_id: str) -> dict[str, Any]:
        body, _ = self._call("GET", f"/v1/training/jobs/{job_id}/status", retry="none")  # where it runs
        return body

    def wait_training_job(
        self,
        job_id: str,
        timeout_s: float = 3600.0,
        poll_s: float = 2.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job's status until it is completed, failed or refused (returned, not raised)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.training_job_status(job_id)
            if on_status is not None:
                on_status(status)
            if status.get("state") in ("completed", "failed", "refused"):
                return status
            if time.monotonic() > deadline:
                raise GatewayError(
                    504, {"error": "timeout", "message": f"job '{job_id}' still running after {timeout_s:.0f} s"}
                )
            time.sleep(poll_s)

    def _packed_signs(self, body: dict[str, Any], count: int) -> np.ndarray | None:
        """A small batch's one shared result ciphertext, decrypted to signs (one slot block per criterion)."""
        packed = body.get("packed_ciphertexts") or []
        if not packed:
            return None
        if len(packed) != 1:
            raise CryptoError(f"a packed answer holds one ciphertext, got {len(packed)}")
        try:
            raw = base64.b64decode(packed[0], validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("the packed result ciphertext is not base64") from None
        # A padded check's criteria sit in blocks past the first (exchange/pads.py): the result's
        # slots run up to the end of the last block, and the ones before decrypt to 0.
        blocks = [int(item["block"]) for item in body["criteria"] if item.get("block") is not None]
        try:
            return self.keys.decrypt_signs(raw, count * (max(blocks) + 1 if blocks else 0))
        except CryptoError as exc:
            raise CryptoError(
                f"results name slot block {max(blocks, default=0)}, which the answer does not hold ({exc.message})"
            ) from None

    def _decode(self, body: dict[str, Any], subjects: list[str], size: int) -> CheckResult:
        count = int(body["subjects"])
        if count != len(subjects):
            raise InvalidInput(f"gateway answered for {count} subjects, asked {len(subjects)}")
        chunk = int(body["chunk_size"])
        passes: dict[str, np.ndarray] = {}
        descriptions: dict[str, str] = {}
        shared = self._packed_signs(body, count)
        for item in body["criteria"]:
            name = item["criterion"]
            descriptions[name] = item.get("description", "")
            if item.get("passes") is not None:
                passes[name] = np.asarray(item["passes"], dtype=bool)
                continue
            if item.get("block") is not None:
                block = int(item["block"])
                if shared is None or not 0 <= block < len(shared) // max(count, 1):
                    raise CryptoError(f"result for '{name}' names slot block {block}, which the answer does not hold")
                passes[name] = shared[block * count : (block + 1) * count]
                continue
            parts = []
            for i, blob in enumerate(item["ciphertexts"]):
                try:
                    raw = base64.b64decode(blob, validate=True)
                except (binascii.Error, ValueError):
                    raise CryptoError(f"result ciphertext {i} of '{name}' is not base64") from None
                parts.append(self.keys.decrypt_signs(raw, min(chunk, count - i * chunk)))
            passes[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
            if len(passes[name]) != count:
                raise CryptoError(f"result for '{name}' covers {len(passes[name])} subjects, expected {count}")
        return CheckResult(
            request_id=body["request_id"],
            program=body["program"],
            program_version=body["program_version"],
            view=body["view"],
            subjects=subjects,
            criteria=list(passes),
            descriptions=descriptions,
            passes=passes,
            timings_ms=dict(body.get("timings_ms", {})),
            wire_bytes=size,
            node_bytes=int(body.get("node_bytes", 0)),
            privacy={k: float(v) for k, v in (body.get("privacy") or {}).items() if v is not None},
        )


def _retryable(status: int, code: str) -> bool:
    """Unanswered by this gateway. An agency node's failure (`node_*`: down, late, garbage, its own
    rate limit) is not: every replica reaches the same node, so the error names it and is final."""
    if code.startswith("node_") or code == "tls_handshake_failed":
        return False
    return status in RETRY_STATUSES or (status == 409 and code == IN_PROGRESS)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp()) - time.time())
