"""Lease bookkeeping shared by the reservation stores (budgets, consents, approvals, silver claims).

A reservation is held for `lease_s` seconds on the database's clock; one whose lease ran out is
given back under its store's lock (the gateway that made it is presumed dead: a check commits
before it answers, so an unsettled reservation never reached a requester). `release_owned` gives
back every reservation of one owner, the Idempotency-Key claim of an attempt taken over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from xgate.db import Database, Tx, db_now


class _Revocable(Protocol):
    @property
    def revoked_at(self) -> object: ...


class LeasedReservations:
    """Mixed into a reservation store (it sets `db`, then calls `_init_leases`)."""

    db: Database
    lease_s: float
    _lease_clock: Callable[[], float] | None

    def _init_leases(self, lease_s: float, lease_clock: Callable[[], float] | None) -> None:
        """``lease_s``: how long a reservation may stay pending (longer than any check may take);
        ``lease_clock``: the database's clock unless given (tests)."""
        if not (math.isfinite(lease_s) and lease_s > 0):
            raise ValueError("lease_s must be a positive number of seconds")
        self.lease_s = lease_s
        self._lease_clock = lease_clock

    def _now(self, tx: Tx) -> float:
        return self._lease_clock() if self._lease_clock is not None else db_now(tx)

    def _release_owned(self, table: str, owner: str, release: Callable[[str], bool]) -> int:
        """Give back, with the store's own `release`, every pending reservation in `table` (a fixed
        name) held by `owner`."""
        if not owner:  # rows of an earlier version have no owner: never released wholesale
            return 0
        with self.db.read() as tx:
            rows = tx.execute(f"SELECT id FROM {table} WHERE owner = ?", (owner,)).fetchall()  # noqa: S608
        return sum(release(str(r[0])) for r in rows)

    def _reserved_record_revoked(
        self, table: str, reservation: str, get: Callable[[Tx, str], _Revocable | None]
    ) -> bool:
        """Whether the record (looked up by `get`) a pending reservation in `table` (a fixed name,
        with the record's ref) uses is revoked: a read; the store's `commit` decides again under
        the record's lock. Lets a check refuse before it charges anything else."""
        with self.db.read() as tx:
            found = tx.execute(f"SELECT ref FROM {table} WHERE id = ?", (reservation,)).fetchone()  # noqa: S608
            record = get(tx, str(found[0])) if found is not None else None
        return record is not None and record.revoked_at is not None


__all__ = ["LeasedReservations"]
