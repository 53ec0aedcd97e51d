"""Compose's one-shot `setup` service: the README's deployment steps for a small federation.

Runs docs/deploy_steps.sh (copied into the image) block by block, each host being a directory of the
`fed` volume (/fed/<host>) and `scp` a local copy between them (packaging/scp-local); service blocks
and everything from the client's check on are left to compose (`docker compose up`, then
`docker compose run client`).
Idempotent: a finished setup leaves /fed/.done and is not repeated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STEPS = Path(os.environ.get("XGATE_STEPS", "/opt/xgate/share/deploy_steps.sh"))
SHIM = Path(os.environ.get("XGATE_SCP_SHIM", "/opt/xgate/share/scp-local"))
FED = Path(os.environ.get("XGATE_FED", "/fed"))
AGENCIES = {"tax": "tax.xgate.test", "hrss": "hrss.xgate.test",
            "civil_affairs": "civil-affairs.xgate.test", "household": "household.xgate.test"}  # fmt: skip
HOSTS = {"ca": "ca", "gateway": "gw.xgate.test", **AGENCIES, "client": "client.xgate.test"}
HEADER = re.compile(r"^# @ (\w+)( service| for each agency)?(?: \(only ([\w, ]+)\))?\s*$")


def blocks(text: str) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(host, flag, only these agencies (() = all), body) per `# @ HOST[ flag][ (only a, b)]` block."""
    found: list[tuple[str, str, tuple[str, ...], str]] = []
    for part in re.split(r"(?m)^(?=# @ )", text.split("\n\n", 1)[1]):
        head, _, body = part.partition("\n")
        match = HEADER.match(head)
        if match:
            only = tuple(a.strip() for a in (match.group(3) or "").split(",") if a.strip())
            found.append((match.group(1), (match.group(2) or "").strip(), only, body))
    return found


def main() -> int:
    # Docker's default umask (022) would leave the API keys, private keys and the pseudonym key the
    # steps write world-readable on the shared volume; every service runs as the same user.
    os.umask(0o077)
    if (FED / ".done").exists():
        print("setup already done")  # noqa: T201
        return 0
    bin_dir = FED / ".bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIM, bin_dir / "scp")
    (bin_dir / "scp").chmod(0o755)
    (FED / ".hosts").write_text("".join(f"{fqdn}={FED / host}\n" for host, fqdn in HOSTS.items()))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "XGATE_DEPLOY_HOSTS": str(FED / ".hosts")}
    for host in HOSTS:
        (FED / host).mkdir(exist_ok=True)
    for host, flag, only, body in blocks(STEPS.read_text()):
        if host == "client" and "xgate check" in body:
            break  # the check, and what follows it (renewal), is for a running federation
        if flag == "service":
            continue
        each = [(a, fqdn) for a, fqdn in AGENCIES.items() if not only or a in only]
        runs = each if host == "agency" or flag == "for each agency" else [(None, None)]
        for agency, fqdn in runs:
            where = FED / (agency if host == "agency" and agency else host)
            extra = {"AGENCY": agency, "NODE": fqdn} if agency else {}
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=where, env={**env, **extra},
                                  check=False)  # fmt: skip
            if done.returncode != 0:
                print(f"setup step on {where.name} failed:\n{body}", file=sys.stderr)  # noqa: T201
                return done.returncode
    (FED / ".done").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
