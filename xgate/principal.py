"""The authenticated caller of the REST API, as every decision point sees it."""

from __future__ import annotations

from dataclasses import dataclass

# consent_manager: the service acting for data subjects (registers and revokes signed consents)
# approver: signs and registers approvals for its own agency's cases (approvers.toml holds its key)
ROLES = ("caseworker", "analyst", "security_officer", "admin", "consent_manager", "approver")
TIERS = ("gold", "silver", "bronze")


@dataclass(frozen=True)
class Principal:
    user: str
    agency: str
    role: str
    tier: str
