"""The gateway's check wiring: the check service and the node directory it fans out through.

The check itself (validate, decide, fan out, combine, record) is exchange/service.py, which takes
and returns domain types; the route (gateway/routes/checks.py) translates REST <-> domain. The
node directory is kept here too because the app also uses it for health, checkpoints and shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.service import CheckService
from gateway.fanout import NodeDirectory
from policies.programs import ProgramRegistry


@dataclass
class CheckCoordinator:
    service: CheckService
    nodes: NodeDirectory

    @property
    def programs(self) -> ProgramRegistry:
        return self.service.programs
