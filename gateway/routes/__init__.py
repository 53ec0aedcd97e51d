"""The gateway's REST resources, one module each (the FastAPI project template's layout).

Each module has a module-level ``router``; gateway/app.py includes them all. Handlers take
what they need through the Annotated dependencies of gateway/deps.py.
"""

from fastapi import APIRouter

from gateway.routes import (
    audit,
    checks,
    consents,
    console,
    health,
    nodes,
    ops,
    policies,
    programs,
    subjects,
    training,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    ops.router,
    programs.router,
    nodes.router,
    checks.router,
    consents.router,
    audit.router,
    subjects.router,
    policies.router,
    training.router,
    console.router,
)
