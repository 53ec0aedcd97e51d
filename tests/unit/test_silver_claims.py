"""Silver claims (policies/silver_claims.py): one program of an overlap group per subject, agency
and epoch; repeats of the same program pass; failed checks give their claims back; exact under
threads, on SQLite and on PostgreSQL (two replicas' pools on one database)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.silver_claims import SILVER_CLAIM_MIGRATIONS, SilverClaims
from tests.unit.test_budgets import pseudo
from xgate.db import SCHEMA_TABLE, PostgresDatabase, migrate
from xgate.errors import ConfigError, InvalidInput, PolicyDenied

GROUP = "dibao,target_discovery"
AGENCY = "civil_affairs"
EPOCH = 687
ENDS = 1_781_000_000.0


def _claim(claims: SilverClaims, subjects: list[str], program: str, epoch: int = EPOCH, agency: str = AGENCY) -> str:
    return claims.reserve(subjects, group=GROUP, program=program, agency=agency, epoch=epoch, epoch_ends=ENDS)


@pytest.fixture
def claims(tmp_path: Path) -> SilverClaims:
    return SilverClaims(tmp_path / "claims.sqlite")


def test_a_second_program_is_refused_for_the_claimed_subjects_only(claims: SilverClaims) -> None:
    a, b, c = pseudo(1), pseudo(2), pseudo(3)
    claims.commit(_claim(claims, [a, b], "dibao"))
    with pytest.raises(PolicyDenied, match=r"1 of 2 subjects already have a silver result from program 'dibao'"):
        _claim(claims, [c, b], "target_discovery")
    assert claims.holder(c, group=GROUP, agency=AGENCY, epoch=EPOCH) == set()  # all or nothing
    claims.commit(_claim(claims, [c], "target_discovery"))
    claims.commit(_claim(claims, [a, b], "dibao"))  # a repeat of the same program passes
    assert claims.holder(a, group=GROUP, agency=AGENCY, epoch=EPOCH) == {"dibao"}


def test_another_agency_or_the_next_epoch_is_not_bound(claims: SilverClaims) -> None:
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    claims.commit(_claim(claims, [pseudo(1)], "target_discovery", agency="tax"))
    claims.commit(_claim(claims, [pseudo(1)], "target_discovery", epoch=EPOCH + 1))
    # the next epoch's claim pruned the old one
    assert claims.holder(pseudo(1), group=GROUP, agency=AGENCY, epoch=EPOCH) == set()


def test_a_failed_check_gives_its_claims_back_and_an_answered_one_keeps_them(claims: SilverClaims) -> None:
    failed = _claim(claims, [pseudo(1)], "dibao")
    assert claims.release(failed) and not claims.release(failed)  # idempotent
    answered = _claim(claims, [pseudo(1)], "target_discovery")
    assert claims.commit(answered) and not claims.release(answered)  # settled: no longer released
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "dibao")


def test_a_repeat_released_leaves_the_answered_claim_in_force(claims: SilverClaims) -> None:
    claims.commit(_claim(claims, [pseudo(1)], "dibao"))
    claims.release(_claim(claims, [pseudo(1)], "dibao"))  # a repeat that failed
    with pytest.raises(PolicyDenied):
        _claim(claims, [pseudo(1)], "target_discovery")


def test_an_empty_batch_is_refused(claims: SilverClaims) -> None:
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
    assert len(kept) == 1 and sum(kept.values()) >= 1
    [winner] = kept
    assert claims.holder(pseudo(900), group=GROUP, agency=AGENCY, epoch=EPOCH) == {winner}


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[SilverClaims]]:
    a, b = PostgresDatabase(pg_url, max_size=6), PostgresDatabase(pg_url, max_size=6)
    with a.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS silver_claims")
        tx.execute(SCHEMA_TABLE)
        tx.execute("DELETE FROM xgate_schema WHERE component = 'silver_claims'")
    try:
        with pytest.raises(ConfigError, match=r"silver_claims v1 pending\): run `xgate gateway migrate`"):
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
        assert store.holder(pseudo(900), group=GROUP, agency=AGENCY, epoch=EPOCH) == {winner}
