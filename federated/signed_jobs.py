"""Training jobs signed by the analyst who asks for them (pure: no I/O).

The coordinator (the gateway, or whoever writes the Flower run config) hands each node the job
definition. Nodes decide every definition under their own policy and record its digest, but a
coordinator could still run a definition the analyst never asked for: fewer `min_nodes` (so it
can leave agencies out of an alignment), other features, more rounds. A signed job closes that:

* the analyst signs the whole definition (every field but `signature`, with `requester` = its own
  user id) with its Ed25519 key: an `xgate-training-job/1` artefact (crypto/artefacts.py), carried
  in the job's `signature` field, so it travels wherever the job does (REST body, run config);
* the public key is registered with the user in the policy set's principals.toml
  (`signing_key`); a job run in the name of a user with a key must carry that key's signature
  over exactly this definition, and with settings.toml `[training] require_signed_jobs = true`
  every job must;
* the gateway checks at submission, and every node with a policy directory checks again, against
  its own registry: when it decides a definition (federated/admission.py `PolicyAdmission`) and at
  every later message of a run (`admit_at_node`), before any recorded decision counts.

A job may carry `valid_until`; signed, the coordinator cannot move or drop it, and the gateway and
every node (`admit_at_node`, at each message) refuse the job after it (`expiry_problem`).

The signature is not part of the job's digest: a node decides a definition once whether or not it
arrived signed, so signing changes no recorded decision, and a refusal for a missing or wrong
signature is never recorded (it would refuse the signed definition too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crypto.artefacts import Signer, canonical, sign_artefact, verify_artefact
from crypto.envelope import SigningKey
from federated.jobs import JobSpec
from policies.loader import UserEntry
from xgate.errors import CryptoError

JOB_FORMAT = "xgate-training-job/1"
# A job's whole definition is in the artefact. Through the gateway the REST body carries the job
# twice (its fields and the signature) within 256 kB, so about 120 kB of definition fits there.
MAX_SIGNED_JOB_BYTES = 256 * 1024


def signed_body(job: JobSpec) -> dict[str, Any]:
    """What the requester signs: the whole definition but the signature itself."""
    body: dict[str, Any] = job.model_dump(mode="json", exclude={"signature"})
    return body


def sign_job(job: JobSpec, key: SigningKey) -> JobSpec:
    """The job with its requester's signature (the requester must already be set)."""
    if not job.requester:
        raise ValueError("a job is signed in its requester's name: set requester first")
    return job.model_copy(update={"signature": sign_artefact(signed_body(job), key, JOB_FORMAT)})


def signature_problem(job: JobSpec, requester: UserEntry | None, required: bool) -> str | None:
    """Why this job may not run for its requester, or None. `requester`: the registered principal
    (None if unregistered); `required`: the policy set's require_signed_jobs."""
    return signature_problem_for_key(job, requester.signing_key if requester is not None else None, required)


def signature_problem_for_key(job: JobSpec, key: str | None, required: bool) -> str | None:
    """As `signature_problem`, given the requester's registered key (base64 Ed25519) or None: what a
    ledger-only node uses, whose trusted keys are in its ledger (`xgate train allow --trust-key`)."""
    who = f"job '{job.job_id}'"
    if not job.signature:
        if key is not None:
            return (
                f"{who} is not signed: its requester '{job.requester}' has a registered signing key, so a job"
                " run in that name must carry its signature (xgate train sign)"
            )
        if required:
            return (
                f"{who} is not signed: this node requires signed training jobs ([training] require_signed_jobs"
                " in its policy set, or `xgate train allow --require-signed`)"
            )
        return None
    if key is None:
        return f"{who} is signed, but its requester '{job.requester or '(none)'}' has no registered signing key"
    signer = Signer.of(job.requester, key)
    try:
        _, body = verify_artefact(job.signature, {signer.key_id: signer}, JOB_FORMAT, MAX_SIGNED_JOB_BYTES)
    except CryptoError as exc:
        return f"{who}: its signature is not its requester's: {exc.message}"
    expected = signed_body(job)
    # A field this node knows and the signer's version did not is fine at its default value.
    newer = {k: v for k, v in expected.items() if k not in body and v == _default(k)}
    if canonical(body) != canonical({k: v for k, v in expected.items() if k not in newer}):
        changed = sorted(k for k in set(body) | (set(expected) - set(newer)) if body.get(k) != expected.get(k))
        return f"{who} differs from what its requester signed: {', '.join(changed) or 'its encoding'}"
    return None


def expiry_problem(job: JobSpec, now: datetime) -> str | None:
    """Why this job may no longer run at `now` (its `valid_until` has passed), or None."""
    until = job.valid_until_time()
    if until is None or now <= until:
        return None
    return f"job '{job.job_id}' expired at {job.valid_until}: its requester set it valid until then"


def _default(field: str) -> Any:
    """A JobSpec field's default (a required field's sentinel equals no value a job can hold)."""
    return JobSpec.model_fields[field].get_default(call_default_factory=True)
