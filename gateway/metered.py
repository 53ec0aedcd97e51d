"""The check coordinator, counted: checks by program and outcome, latency, policy refusals (/metrics)."""

from __future__ import annotations

import time

from gateway.checks import CheckCoordinator
from gateway.models import CheckRequest, CheckResponse
from xgate import metrics
from xgate.errors import BudgetExhausted, PolicyDenied, XgateError
from xgate.principal import Principal


class MeteredCheckCoordinator(CheckCoordinator):
    async def run(self, principal: Principal, body: CheckRequest) -> CheckResponse:
        t0 = time.perf_counter()
        try:
            self.programs.get(body.program)
            program = body.program
        except XgateError:
            program = "unknown"  # never a caller-chosen label value
        outcome = "ok"
        try:
            return await super().run(principal, body)
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
