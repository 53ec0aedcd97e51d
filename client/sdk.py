"""Requester SDK: pseudonymise, encrypt-context, call the gateway, decrypt signs.

The secret key stays in this process. National ids never leave it either: only pseudonyms are
sent, and the mapping back to ids is kept locally for the result table.
"""

from __future__ import annotations

import base64
import binascii
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from crypto.he import RequesterKeys
from xgate.errors import CryptoError, InvalidInput
from xgate.errors import GatewayError as GatewayError  # re-exported: the SDK's callers catch it
from xgate.pseudonym import Pseudonymiser


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
        out = {c: int(self.passes[c].sum()) for c in self.criteria} if self.view != "overall" else {}
        out["eligible"] = int(self.overall.sum())
        return out


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        pseudonymiser: Pseudonymiser | None = None,  # checks need it; training jobs do not
        keys: RequesterKeys | None = None,
        timeout_s: float = 120.0,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        tls: ssl.SSLContext | bool = verify if isinstance(verify, bool) else True
        if isinstance(verify, str):
            tls = ssl.create_default_context(cafile=verify)  # the federation CA, not the system store
            if cert is not None:
                tls.load_cert_chain(*cert)
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            verify=tls,
        )
        self._pseudonymiser = pseudonymiser
        self._keys = keys

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

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
        response = self._http.request(method, path, **kwargs)
        size = len(response.content) + len(response.request.content or b"")
        try:
            body = response.json()
        except ValueError:
            body = {"error": "bad_response", "message": response.text[:200]}
        if response.status_code >= 400:
            raise GatewayError(response.status_code, body if isinstance(body, dict) else {})
        return body, size

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
        if mode == "he":
            payload["public_context"] = base64.b64encode(self.keys.public_context).decode("ascii")
        body, size = self._call("POST", "/v1/checks", json=payload)
        return self._decode(body, list(subjects), size)

    # -- federated training --------------------------------------------------------------------
    def submit_training_job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/training/jobs; returns {job_id, state, status_url, decision} (202) or raises GatewayError."""
        body, _ = self._call("POST", "/v1/training/jobs", json=dict(job))
        return body

    def training_job_status(self, job_id: str) -> dict[str, Any]:
        body, _ = self._call("GET", f"/v1/training/jobs/{job_id}/status")
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

    def _decode(self, body: dict[str, Any], subjects: list[str], size: int) -> CheckResult:
        count = int(body["subjects"])
        if count != len(subjects):
            raise InvalidInput(f"gateway answered for {count} subjects, asked {len(subjects)}")
        chunk = int(body["chunk_size"])
        passes: dict[str, np.ndarray] = {}
        descriptions: dict[str, str] = {}
        for item in body["criteria"]:
            name = item["criterion"]
            descriptions[name] = item.get("description", "")
            if item.get("passes") is not None:
                passes[name] = np.asarray(item["passes"], dtype=bool)
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
        )
