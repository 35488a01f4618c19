"""Retention periods and the purge's clock: what is past its period, and when the purge runs.

Pure (no I/O): `gateway.records.retention` does the deleting with these answers.

A cutoff is a Seoul midnight: a record made on Seoul day D is kept through day D + `days` and
destroyed by the first purge after that (with a daily purge: on day D + `days` + 1). Whole days
go at once, so the purge's count is "what expired since yesterday" and matches the `day` column
of every report and roll-up. Seoul has had no daylight saving time since 1988, so a day is
always 24 hours there; the arithmetic still goes through the calendar, not through 86,400 s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from gateway.domain.records import SEOUL

# The kinds of `gateway.yaml`'s `records.retention_days` (see `Retention`).
RETENTION_KINDS = ("messages", "calls", "sends", "access", "accounts")

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True, slots=True)
class Retention:
    """Days each kind of record is kept (README: texts and threads 1 year, calls 1 year, access
    records 2 years).

    `consent` covers the opt-out audit stream (every opt-out / opt-in with its time). None: the
    access records' period. The notes this project follows (FIELD-NOTES, Personal Information
    Protection Act safety measures) set no separate period for consent-change records; the
    refusal itself (`gw:optout:<hash>`) is never purged, so honouring it does not depend on this
    history. A city whose counsel wants it kept longer sets it here.
    """

    messages: int = 365
    calls: int = 365
    sends: int = 365
    access: int = 730
    # Account grants and changes (the ACCOUNTS access-record chain): 3 years (safety measures §5).
    accounts: int = 1095
    consent: int | None = None

    def __post_init__(self) -> None:
        for name in (*RETENTION_KINDS, "consent"):
            value = getattr(self, name)
            if value is None and name == "consent":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"retention of {name}: a whole number of days, at least 1 (got {value!r})")

    @classmethod
    def from_days(cls, days: Mapping[str, int]) -> Retention:
        """From `records.retention_days` (kinds not given keep their default)."""
        unknown = sorted(set(days) - {*RETENTION_KINDS, "consent"})
        if unknown:
            raise ValueError(f"unknown retention kind(s): {', '.join(unknown)}")
        return cls(**{k: int(v) for k, v in days.items()})

    @property
    def consent_days(self) -> int:
        return self.consent if self.consent is not None else self.access


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Epoch seconds: a record of each kind older than its cutoff is past its retention."""

    now: float
    messages: float
    calls: float
    sends: float
    access: float
    consent: float
    accounts: float = 0.0


@dataclass(frozen=True, slots=True)
class PurgeCount:
    """What the purge of one kind removed (in a dry run: would remove), as the `purges` table
    records it."""

    kind: str  # "calls", "messages", "thread_events", "sends"; "threads", "inbox", "optout_audit", "audit"
    store: str  # "sql" or "redis"
    cutoff: float
    count: int
    detail: str = ""


def cutoff(now: float, days: int) -> float:
    """The Seoul midnight starting the day `days` days before `now`'s Seoul day."""
    today = datetime.fromtimestamp(now, SEOUL).date()
    return datetime.combine(today - timedelta(days=days), time(0), SEOUL).timestamp()


def plan_purge(retention: Retention, now: float) -> Cutoffs:
    """What a purge at `now` removes: every kind's cutoff."""
    return Cutoffs(
        now=now,
        messages=cutoff(now, retention.messages),
        calls=cutoff(now, retention.calls),
        sends=cutoff(now, retention.sends),
        access=cutoff(now, retention.access),
        consent=cutoff(now, retention.consent_days),
        accounts=cutoff(now, retention.accounts),
    )


def parse_hhmm(text: str) -> time:
    """ "03:30" -> 03:30 (24-hour clock); ValueError otherwise."""
    match = _HHMM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a time of day HH:MM (00:00-23:59): {text!r}")
    return time(int(match.group(1)), int(match.group(2)))


def next_purge_at(now: float, at: str) -> float:
    """The next time after `now` (epoch seconds) the Seoul clock shows `at` ("HH:MM")."""
    when = parse_hhmm(at)
    local = datetime.fromtimestamp(now, SEOUL)
    candidate = datetime.combine(local.date(), when, SEOUL)
    if candidate.timestamp() <= now:
        candidate = datetime.combine(local.date() + timedelta(days=1), when, SEOUL)
    return candidate.timestamp()
