"""The registered requesters' signing keys: `requesters.toml` in the policy set.

    [[requester]]
    user = "cw-zhou"                 # the user id the gateway authenticates (its users file)
    agency = "civil_affairs"
    public_key = "<base64 Ed25519>"   # `xgate requester keygen` prints this entry

The requesting user makes the key pair (only the public half travels); the federation operator
adds the entry and publishes the CA-signed policy bundle, so a gateway operator cannot register a
key of its own. The gateway and every node re-read the file when it changes (policies/watched.py;
signed mode: only the version the bundle in force signed). An absent file registers nobody, and
then every check is refused (policies/check_statements.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import tomli_w

from crypto.artefacts import Signer
from crypto.policy_bundle import Installed
from policies.check_statements import RequesterKey
from policies.watched import WatchedFile, registry_entries
from xgate.errors import ConfigError, CryptoError, PolicyDenied
from xgate.logging import get_logger

log = get_logger("xgate.policies.requesters")

REQUESTERS_FILE = "requesters.toml"


def requester_entry(user: str, agency: str, public_raw: bytes) -> str:
    """The `[[requester]]` entry registering a public key (what `xgate requester keygen` prints)."""
    public = base64.b64encode(public_raw).decode()
    return tomli_w.dumps({"requester": [{"user": user, "agency": agency, "public_key": public}]})


def load_requesters(policy_dir: Path) -> dict[str, RequesterKey]:
    """The registered requesters' keys, by key id; ConfigError naming the entry that is wrong."""
    path = policy_dir / REQUESTERS_FILE
    out: dict[str, RequesterKey] = {}
    for i, entry in enumerate(registry_entries(path, "requester", ("user", "agency", "public_key"))):
        user, agency = entry["user"], entry["agency"]
        if not (isinstance(user, str) and user.strip() and isinstance(agency, str) and agency.strip()):
            raise ConfigError(f"{path}: requester #{i + 1}: user and agency must be non-empty strings")
        try:
            signer = Signer.of(user, str(entry["public_key"]))
        except CryptoError as exc:
            raise ConfigError(f"{path}: requester #{i + 1}: {exc.message}") from None
        registered = RequesterKey(signer, user, agency)
        if out.get(signer.key_id, registered) != registered:
            raise ConfigError(f"{path}: requester #{i + 1}: its public key is registered for another user or agency")
        out[signer.key_id] = registered  # the same entry appended twice is one registration
    return out


def requesters_problem(policy_dir: Path) -> str | None:
    """`xgate config check`: why the policy set's requesters.toml cannot be used (None: it can, or
    it is absent, which registers nobody and refuses every check but training works)."""
    try:
        load_requesters(policy_dir)
    except ConfigError as exc:
        return exc.message
    return None


class Requesters(WatchedFile[dict[str, RequesterKey]]):
    """The registered requesters of a policy directory, re-read when the file changes."""

    def __init__(self, policy_dir: Path, bundle: Callable[[], Installed | None] | None = None) -> None:
        # bundle: the signed policy bundle in force (signed mode): only the file it signed is loaded
        super().__init__(policy_dir / REQUESTERS_FILE, lambda path: load_requesters(path.parent), bundle)

    def usable(self) -> dict[str, RequesterKey]:
        """The registry for a check; PolicyDenied (audited as a refusal, never a 500) while no
        version of the file could be used. The reason is in the service log, not the answer."""
        try:
            return self.current()
        except ConfigError:
            raise PolicyDenied(
                "check refused: the registry of requesters' signing keys cannot be used (see the service log)"
            ) from None

    def warn_if_none(self) -> None:
        """At a service's start: say in its log that no check can be answered yet (a training-only
        deployment registers nobody; anyone else has forgotten requesters.toml)."""
        try:
            registered = len(self.current())
        except ConfigError as exc:
            log.warning("requesters_unusable", file=str(self.path), error=exc.message)
            return
        if registered == 0:
            log.warning("no_requesters_registered", file=str(self.path), effect="every eligibility check is refused")
