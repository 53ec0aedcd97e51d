"""Silver claims (policies/silver_claims.py): a person's silver result from one program bars the
programs sharing a question with it, per agency, for the window; repeats of the same program
pass and renew it; failed checks give their claims back; exact under threads, on SQLite and on
PostgreSQL (two replicas' pools on one database)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.silver_claims import DAY_S, SILVER_CLAIM_MIGRATIONS, SilverClaims
from tests.unit.test_budgets import pseudo
from xgate.db import SCHEMA_TABLE, PostgresDatabase, migrate
from xgate.errors import ConfigError, InvalidInput, PolicyDenied

AGENCY = "civil_affairs"
T0 = 1_780_000_000.0
OVERLAPS = {"dibao": ("target_discovery",), "target_discovery": ("dibao",), "other": ()}


def _claim(
    claims: SilverClaims,
    subjects: list[str],
    program: str,
    *,
    at: float = T0,
    agency: str = AGENCY,
    version: str = "q1",
    overlaps: tuple[str, ...] | None = None,
) -> str:
    return claims.reserve(
        subjects,
        program=program,
        claim=f"{program}@{version}",
        overlaps=OVERLAPS[program] if overlaps is None else overlaps,
        agency=agency,
        now=at,
        window_days=365,
    )


@pytest.fixture
def claims(tmp_path: Path) -> SilverClaims:
    return SilverClaims(tmp_path / "claims.sqlite")


def test_an_overlapping_program_is_refused_for_the_claimed_subjects_only(claims: SilverClaims) -> None:
    a, b, c = pseudo(1), pseudo(2), pseudo(3)
    claims.commit(_claim(claims, [a, b], "dibao"))
    with pytest.raises(PolicyDenied, match=r"1 of 2 subjects have a silver result from program 'dibao' within 365"):
        _claim(claims, [c, b], "target_discovery")
    assert claims.holders(c, agency=AGENCY) == set()  # all or nothing
    claims.commit(_claim(claims, [c], "target_discovery"))
    claims.commit(_claim(claims, [a, b], "dibao"))  # a repeat of the same program passes
    assert claims.holders(a, agency=AGENCY) == {"dibao"}


def test_the_window_outlasts_the_mask_epoch_and_a_repeat_renews_it(claims: SilverClaims) -> None:
    """The two verdicts leak whatever the masks: a month later is no different from a day."""
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "target_discovery", at=T0 + 40 * DAY_S)
    claims.commit(_claim(claims, [pseudo(1)], "dibao", at=T0 + 300 * DAY_S))  # a repeat, renewed
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "target_discovery", at=T0 + 400 * DAY_S)
    claims.commit(_claim(claims, [pseudo(1)], "target_discovery", at=T0 + 666 * DAY_S))  # past the window


def test_another_version_asking_other_questions_is_refused(claims: SilverClaims) -> None:
    claims.commit(_claim(claims, [pseudo(1)], "dibao", version="q1"))
    with pytest.raises(PolicyDenied, match="program 'dibao'"):
        _claim(claims, [pseudo(1)], "dibao", version="q2")


def test_a_program_joining_the_group_later_still_sees_the_old_claims(claims: SilverClaims) -> None:
    """Conflicts are found by the overlapping programs' ids, not by a group name that changes."""
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "other", overlaps=("dibao", "target_discovery"))


def test_another_agency_is_not_bound(claims: SilverClaims) -> None:
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    claims.commit(_claim(claims, [pseudo(1)], "target_discovery", agency="tax"))


def test_a_failed_check_gives_its_claims_back_and_an_answered_one_keeps_them(claims: SilverClaims) -> None:
    failed = _claim(claims, [pseudo(1)], "dibao")
    assert claims.release(failed) and not claims.release(failed)  # idempotent
    answered = _claim(claims, [pseudo(1)], "target_discovery")
    assert claims.commit(answered) and not claims.release(answered)  # settled: no longer released
    assert not claims.commit(answered)
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "dibao")


def test_a_repeat_released_leaves_the_answered_claim_in_force(claims: SilverClaims) -> None:
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    claims.release(_claim(claims, [pseudo(1)], "dibao"))  # a repeat that failed
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "target_discovery")


def test_repeats_keep_one_settled_claim_per_subject(claims: SilverClaims) -> None:
    for day in range(5):
        claims.commit(_claim(claims, [pseudo(1), pseudo(2)], "dibao", at=T0 + day * DAY_S))
    with claims.db.read() as tx:
        assert tx.execute("SELECT COUNT(*) FROM silver_claims").fetchone()[0] == 2


def test_bad_batches_are_refused(claims: SilverClaims) -> None:
    with pytest.raises(InvalidInput, match="no subjects"):
        _claim(claims, [], "dibao")


def _race(stores: list[SilverClaims]) -> Counter[str]:
    """Eight threads over the stores, half claiming for each program, all for the same subjects,
    each releasing every other claim it gets (a failed check): how many claims each program kept."""
    subjects = [pseudo(900 + i) for i in range(5)]
    kept: Counter[str] = Counter()
    guard, start = threading.Lock(), threading.Barrier(8)

    def worker(n: int) -> None:
        store, program = stores[n % len(stores)], ("dibao", "target_discovery")[n % 2]
        start.wait()
        for k in range(6):
            try:
                reservation = _claim(store, subjects, program)
            except PolicyDenied:
                continue
            if k % 2:
                store.release(reservation)
            else:
                store.commit(reservation)
                with guard:
                    kept[program] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return kept


def test_threads_racing_two_programs_leave_one_program_holding_the_subjects(claims: SilverClaims) -> None:
    kept = _race([claims])
    assert len(kept) == 1
    [winner] = kept
    assert claims.holders(pseudo(900), agency=AGENCY) == {winner}


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[SilverClaims]]:
    a, b = PostgresDatabase(pg_url, max_size=6), PostgresDatabase(pg_url, max_size=6)
    with a.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS silver_claims")
        tx.execute(SCHEMA_TABLE)
        tx.execute("DELETE FROM xgate_schema WHERE component = 'silver_claims'")
    try:
        with pytest.raises(
            ConfigError, match=r"silver_claims v1, silver_claims v2 pending\): run `xgate gateway migrate`"
        ):
            SilverClaims(a)
        migrate(a, SILVER_CLAIM_MIGRATIONS)
        yield [SilverClaims(a), SilverClaims(b)]
    finally:
        a.close()
        b.close()


def test_two_replicas_racing_two_programs_leave_one_program_holding_the_subjects(
    replicas: list[SilverClaims],
) -> None:
    kept = _race(replicas)
    assert len(kept) == 1
    [winner] = kept
    for store in replicas:
        assert store.holders(pseudo(900), agency=AGENCY) == {winner}
