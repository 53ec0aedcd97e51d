"""The REST side of one eligibility check: REST model -> domain request -> check service -> REST model.

The check itself (validate, decide, fan out, combine, record) is exchange/service.py, which takes
and returns domain types; this adapter only translates (gateway/models.py) and holds the node
directory the app also uses for health, checkpoints and shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.service import CheckService
from gateway.fanout import NodeDirectory
from gateway.models import CheckRequest, CheckResponse, from_domain, to_domain
from policies.programs import ProgramRegistry
from xgate.principal import Principal


@dataclass
class CheckCoordinator:
    service: CheckService
    nodes: NodeDirectory

    @property
    def programs(self) -> ProgramRegistry:
        return self.service.programs

    async def run(self, principal: Principal, body: CheckRequest) -> CheckResponse:
        return from_domain(await self.service.run(principal, to_domain(body)))
