"""Register a user in a policy set's principals.toml (what `xgate pki add-user --principals` does).

The policy engine takes a caller's agency, role and tier from principals.toml, never from the
request, so a REST user missing there is denied; adding both in one command removes that trap.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from policies.loader import UserEntry, UsersFile
from xgate.errors import ConfigError

HEADER = """# Registered principals. The gateway authenticates a caller (certificate / token) to a user id;
# the engine takes agency, role and tier from here, never from the request.
# role: caseworker | analyst | security_officer | admin; tier: gold | silver | bronze.
"""


def register_principal(
    path: Path, user: str, agency: str, role: str, tier: str, signing_key: str | None = None
) -> bool:
    """Add (or update) the user's entry; True when the file changed. Validates like the policy loader.
    `signing_key`: the analyst's job-signing public key (base64 Ed25519, `xgate train keygen`); an
    entry's key is otherwise kept as it is."""
    try:
        text = path.read_text()
        current = UsersFile.model_validate(tomllib.loads(text))
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"principals file {path}: {exc}") from None
    known = next((u for u in current.users if u.id == user), None)
    kept = {"signing_key": known.signing_key} if known is not None and known.signing_key else {}  # not ours to drop
    if signing_key is not None:
        kept = {"signing_key": signing_key}
    try:
        entry = UserEntry.model_validate({"id": user, "agency": agency, "role": role, "tier": tier, **kept})
    except ValueError as exc:
        raise ConfigError(f"principal '{user[:40]}': {exc}") from None
    others = [u for u in current.users if u.id != user]
    if len(others) == len(current.users):  # new: append, keeping the file's comments
        path.write_text(text.rstrip("\n") + "\n\n" + _table(entry))
        return True
    if entry in current.users:
        return False
    users = [*others, entry]
    path.write_text(HEADER + "".join("\n" + _table(u) for u in users))
    return True


def _table(entry: UserEntry) -> str:
    return "[[users]]\n" + "".join(tomli_w.dumps({k: v}) for k, v in entry.model_dump(exclude_none=True).items())
