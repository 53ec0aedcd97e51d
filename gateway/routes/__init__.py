"""The gateway's REST resources, one module each (the FastAPI project template's layout).

One URL per resource; each module has a module-level ``router`` and gateway/app.py includes
them all (plus the console's static pages, routes/console.py). Handlers take what they need
through the Annotated dependencies of gateway/deps.py.
"""

from fastapi import APIRouter

from gateway.routes import (
    approvals,
    audit,
    checks,
    consents,
    contexts,
    health,
    nodes,
    ops,
    policies,
    programs,
    subjects,
    training,
    whoami,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    ops.router,
    whoami.router,
    programs.router,
    nodes.router,
    checks.router,
    contexts.router,
    consents.router,
    approvals.router,
    audit.router,
    subjects.router,
    policies.router,
    training.router,
)
