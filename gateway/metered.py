"""The check service, counted: checks by program and outcome, latency, policy refusals (/metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable

from exchange.service import CheckService
from exchange.types import CheckOutcome, CheckRequest
from xgate import metrics
from xgate.errors import BudgetExhausted, PolicyDenied, XgateError
from xgate.principal import Principal


class MeteredCheckService(CheckService):
    async def run(
        self,
        principal: Principal,
        request: CheckRequest,
        request_id: str | None = None,
        answered: Callable[[CheckOutcome], None] | None = None,
        owner: str = "",
        fence: Callable[[], None] | None = None,
    ) -> CheckOutcome:
        t0 = time.perf_counter()
        try:
            self.programs.get(request.program)
            program = request.program
        except XgateError:
            program = "unknown"  # never a caller-chosen label value
        outcome = "ok"
        try:
            return await super().run(principal, request, request_id, answered, owner, fence)
        except XgateError as exc:
            outcome = exc.code
            if isinstance(exc, BudgetExhausted):
                metrics.REFUSALS.labels("budget").inc()
            elif isinstance(exc, PolicyDenied):
                metrics.REFUSALS.labels("consent" if "consent" in exc.message else "policy").inc()
            raise
        finally:
            metrics.CHECKS.labels(program, outcome).inc()
            metrics.CHECK_SECONDS.labels(program).observe(time.perf_counter() - t0)
