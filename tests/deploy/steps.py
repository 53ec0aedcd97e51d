"""docs/deploy_steps.sh as data: blocks of commands, each for one host, in order.

Also renders README.md's "Deploying across machines" block from it (`python -m tests.deploy.steps`
prints the block; tests/unit/test_deploy_steps.py checks README holds exactly that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = REPO / "docs" / "deploy_steps.sh"
README = REPO / "README.md"
HOSTS = ("ca", "gateway", "agency", "client")
# The agencies of the 低保 program and their node hosts' names (the AGENCY/NODE pairs of the header).
AGENCIES = {
    "tax": "tax.xgate.test",
    "hrss": "hrss.xgate.test",
    "civil_affairs": "civil-affairs.xgate.test",
    "household": "household.xgate.test",
}
# `# @ HOST[ service| for each agency][ (only a, b)]`
_HEADER = re.compile(r"^# @ (\w+)( service| for each agency)?(?: \(only ([\w, ]+)\))?\s*$")


@dataclass(frozen=True)
class Block:
    host: str  # ca | gateway | agency | client
    service: bool  # a long-running service (started, then waited for)
    per_agency: bool  # run once per agency with AGENCY and NODE set
    script: str  # the lines as written (comments included)
    only: tuple[str, ...] = ()  # per agency: only these agencies (`(only tax, hrss)`); () = every agency

    @property
    def agencies(self) -> dict[str, str]:
        """agency -> node host name of the runs of a per-agency block."""
        return {a: fqdn for a, fqdn in AGENCIES.items() if not self.only or a in self.only}

    @property
    def commands(self) -> list[str]:
        return [ln for ln in self.script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def readme_block(text: str | None = None) -> str:
    """The file below its header (everything after the first blank line)."""
    text = STEPS.read_text() if text is None else text
    return text.split("\n\n", 1)[1].strip("\n") + "\n"


def parse(text: str | None = None) -> list[Block]:
    blocks: list[Block] = []
    current: tuple[str, bool, bool, tuple[str, ...]] | None = None
    lines: list[str] = []

    def flush() -> None:
        if current is not None:
            script = "\n".join(lines).strip("\n") + "\n"
            blocks.append(Block(current[0], current[1], current[2], script, current[3]))

    for line in readme_block(text).splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            host, flag = match.group(1), (match.group(2) or "").strip()
            if host not in HOSTS:
                raise ValueError(f"unknown host '{host}' in {STEPS.name}")
            only = tuple(a.strip() for a in (match.group(3) or "").split(",") if a.strip())
            if set(only) - set(AGENCIES):
                raise ValueError(f"unknown agency in '{line}' in {STEPS.name}")
            per_agency = host == "agency" or flag == "for each agency"
            if only and not per_agency:
                raise ValueError(f"'(only ...)' on a block that is not per agency: '{line}'")
            current, lines = (host, flag == "service", per_agency, only), []
            continue
        if current is None and line.strip():
            raise ValueError(f"command before the first `# @ HOST` line: {line!r}")
        lines.append(line)
    flush()
    return blocks


def readme_section() -> str:
    """README's fenced block (between the markers) as it stands."""
    text = README.read_text()
    start = text.index("<!-- deploy-steps:begin")
    body = text[text.index("```sh\n", start) + len("```sh\n") : text.index("```\n<!-- deploy-steps:end -->")]
    return body


if __name__ == "__main__":
    print(readme_block(), end="")  # noqa: T201  # the block to paste into README.md
