"""Network addresses as operators type them: `host:port`, checked before they are written anywhere.

An address lands in TOML configs and in the CA-signed federation directory, so nothing but a host
name (or an IP, IPv6 in brackets) and a port passes: no quote, space or newline can end a string.
"""

from __future__ import annotations

import re

from xgate.errors import InvalidInput

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")


def host_port(option: str, value: str, *, any_port: bool = False) -> tuple[str, int]:
    """(host, port) of `value`; `any_port` allows port 0 (a free one: tests). InvalidInput names `option`."""
    match = _ADDRESS.fullmatch(value)  # fullmatch: `$` would let a final newline through
    port = int(match["port"]) if match else -1
    if match is None or not (0 if any_port else 1) <= port <= 65535:
        raise InvalidInput(f"{option}: '{value[:80]}' is not host:port (a host name or IP, a port 1-65535)")
    return match["host"].strip("[]"), port  # an IPv6 host as a socket binds it
