"""The authenticated caller of the REST API, as every decision point sees it."""

from __future__ import annotations

from dataclasses import dataclass

# consent_manager: the service acting for data subjects (registers and revokes signed consents)
ROLES = ("caseworker", "analyst", "security_officer", "admin", "consent_manager")
TIERS = ("gold", "silver", "bronze")


@dataclass(frozen=True)
class Principal:
    user: str
    agency: str
    role: str
    tier: str
