"""Alert rules over audit records (pure): bursts, off-hours access, repeated denials, wide probing,
one signed check answered under several requests, and the alerts a service recorded itself (kind
"alert", e.g. the gateway's log-integrity alarm).

Each rule groups records per user, slides a time window over them and reports one alert per
contiguous stretch in which the threshold was met, with the entry indices behind it, so an officer
can pull exactly those entries (and their proofs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from audit.records import AuditRecord


class AlertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    burst_requests: int = Field(default=30, ge=2)
    burst_window_s: int = Field(default=60, ge=1)
    office_start_hour: int = Field(default=7, ge=0, le=23)
    office_end_hour: int = Field(default=20, ge=1, le=24)  # exclusive
    weekends_off_hours: bool = True
    timezone: str = "Asia/Shanghai"
    denials: int = Field(default=5, ge=1)
    denials_window_s: int = Field(default=600, ge=1)
    distinct_subjects: int = Field(default=500, ge=2)
    subjects_window_s: int = Field(default=3600, ge=1)
    request_kinds: tuple[str, ...] = ("request",)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError("unknown time zone") from exc
        return v


@dataclass(frozen=True)
class Alert:
    rule: str  # burst | off_hours | repeated_denials | many_subjects | statement_reused | recorded ones
    user: str
    agency: str
    start: datetime
    end: datetime
    count: int
    entry_indices: tuple[int, ...]
    reason: str = ""  # recorded alerts: what happened (e.g. truncated, forked)
    summary: str = ""

    def to_public(self) -> dict[str, object]:
        extra = {"reason": self.reason, "summary": self.summary} if self.reason or self.summary else {}
        return extra | {
            "rule": self.rule,
            "user": self.user,
            "agency": self.agency,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "count": self.count,
            "entry_indices": list(self.entry_indices),
        }


Indexed = tuple[int, AuditRecord]


def _by_user(entries: Iterable[Indexed], keep: Callable[[AuditRecord], bool]) -> dict[tuple[str, str], list[Indexed]]:
    out: dict[tuple[str, str], list[Indexed]] = defaultdict(list)
    for idx, rec in entries:
        if keep(rec):
            out[(rec.actor.user, rec.actor.agency)].append((idx, rec))
    for items in out.values():
        items.sort(key=lambda x: (x[1].time, x[0]))
    return out


def _windows(
    rule: str,
    key: tuple[str, str],
    items: Sequence[Indexed],
    window_s: int,
    measure: Callable[[Sequence[Indexed]], int],
    threshold: int,
) -> list[Alert]:
    """Slide a window ending at each item; merge overlapping windows that meet the threshold."""
    alerts: list[Alert] = []
    lo = 0
    current: list[Indexed] = []  # union of items in consecutive triggering windows
    for hi in range(len(items)):
        t = items[hi][1].time
        while (t - items[lo][1].time).total_seconds() > window_s:
            lo += 1
        window = items[lo : hi + 1]
        if measure(window) >= threshold:
            seen = {i for i, _ in current}
            current.extend(x for x in window if x[0] not in seen)
        elif current:
            alerts.append(_alert(rule, key, current, measure))
            current = []
    if current:
        alerts.append(_alert(rule, key, current, measure))
    return alerts


def _alert(rule: str, key: tuple[str, str], items: list[Indexed], measure: Callable[[Sequence[Indexed]], int]) -> Alert:
    items = sorted(items, key=lambda x: (x[1].time, x[0]))
    return Alert(rule, key[0], key[1], items[0][1].time, items[-1][1].time, measure(items), tuple(i for i, _ in items))


def burst(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    groups = _by_user(entries, lambda r: r.kind in cfg.request_kinds)
    return [
        a
        for key, items in groups.items()
        for a in _windows("burst", key, items, cfg.burst_window_s, len, cfg.burst_requests)
    ]


def repeated_denials(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    groups = _by_user(entries, lambda r: r.decision == "deny")
    return [
        a
        for key, items in groups.items()
        for a in _windows("repeated_denials", key, items, cfg.denials_window_s, len, cfg.denials)
    ]


def many_subjects(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    def distinct(window: Sequence[Indexed]) -> int:
        return len({s for _, r in window for s in r.subjects})

    groups = _by_user(entries, lambda r: r.kind in cfg.request_kinds and bool(r.subjects))
    return [
        a
        for key, items in groups.items()
        for a in _windows("many_subjects", key, items, cfg.subjects_window_s, distinct, cfg.distinct_subjects)
    ]


ANSWER_KINDS = frozenset({"node_response", "result"})  # a node's answer; the gateway's answered check


def statement_reused(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    """A requester's signed statement (policies/check_statements.py) answered under more than one
    request id. A node answers a statement for as long as it is fresh (15 minutes), so whoever relays
    it, the gateway, could have it answered again (THREAT_MODEL I1b); an SDK's retry after a failed
    attempt sends it again too, which the gateway's own entries of that attempt show."""
    by_statement: dict[str, list[Indexed]] = defaultdict(list)
    for index, record in entries:
        digest = record.digests.get("requester_statement")
        if isinstance(digest, str) and record.request_id and record.kind in ANSWER_KINDS:
            by_statement[digest].append((index, record))
    alerts = []
    for items in by_statement.values():
        requests = {record.request_id for _, record in items}
        if len(requests) > 1:
            first = items[0][1]
            alerts.append(
                Alert(
                    "statement_reused",
                    first.actor.user,
                    first.actor.agency,
                    first.time,
                    items[-1][1].time,
                    len(requests),
                    tuple(i for i, _ in items),
                    summary=f"one signed check answered under {len(requests)} request ids: a retry after a"
                    " failed attempt, or a replay",
                )
            )
    return alerts


def is_off_hours(when: datetime, cfg: AlertConfig) -> bool:
    local = when.astimezone(ZoneInfo(cfg.timezone))
    if cfg.weekends_off_hours and local.weekday() >= 5:
        return True
    return not cfg.office_start_hour <= local.hour < cfg.office_end_hour


def off_hours(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    """One alert per user and local calendar day with any off-hours request."""
    tz = ZoneInfo(cfg.timezone)
    days: dict[tuple[str, str, str], list[Indexed]] = defaultdict(list)
    for idx, rec in entries:
        if rec.kind in cfg.request_kinds and is_off_hours(rec.time, cfg):
            days[(rec.actor.user, rec.actor.agency, rec.time.astimezone(tz).date().isoformat())].append((idx, rec))
    return [_alert("off_hours", (u, a), items, len) for (u, a, _), items in sorted(days.items())]


def recorded(entries: Iterable[Indexed], cfg: AlertConfig) -> list[Alert]:
    """Alerts a service appended itself (kind "alert"): one each, with its rule, reason and summary."""
    out = []
    for idx, rec in entries:
        if rec.kind != "alert":
            continue
        meta = rec.metadata
        out.append(
            Alert(
                str(meta.get("rule", "alert")),
                rec.actor.user,
                rec.actor.agency,
                rec.time,
                rec.time,
                1,
                (idx,),
                reason=str(meta.get("reason", "")),
                summary=str(meta.get("summary", "")),
            )
        )
    return out


RULES = (burst, off_hours, repeated_denials, many_subjects, statement_reused, recorded)


def evaluate(entries: Iterable[Indexed], cfg: AlertConfig | None = None) -> list[Alert]:
    """All rules over (index, record) pairs; alerts ordered by start time."""
    cfg = cfg or AlertConfig()
    items = list(entries)
    alerts = [a for rule in RULES for a in rule(items, cfg)]
    return sorted(alerts, key=lambda a: (a.start, a.rule, a.user))
