"""The reports' queries on both databases, against hand-computed figures.

The facts go in through `RecordsStore.write` (so the roll-ups are the writer's own); the answer
rates then come from the roll-ups alone, the inbox figures from `messages`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import delete

from gateway.domain.records import SEOUL, CallFact, Fact, ThreadFact
from gateway.records import reports
from gateway.records.schema import calls
from gateway.records.store import RecordsStore

T = TypeVar("T")


def at(day: str, hour: int, minute: int = 0) -> float:
    y, m, d = (int(p) for p in day.split("-"))
    return datetime(y, m, d, hour, minute, tzinfo=SEOUL).timestamp()


_ids = iter(range(1, 1_000_000))


def call(
    day: str,
    department: str,
    lettering: str,
    ring: float | None,
    *,
    reason: str = "",
    direction: str = "outbound",
    kind: str = "mobile",
) -> CallFact:
    """An outbound call to a mobile; answered after `ring` seconds, or unanswered (ring None)."""
    start = at(day, 10)
    return CallFact(
        pbx="pbx1",
        call_id=f"c{next(_ids)}",
        direction=direction,
        extension="2001",
        department=department,
        party_hash="h" * 16,
        party_kind=kind,
        disposition="answered" if ring is not None else "no_answer",
        cause="",
        started_at=start,
        answered_at=start + ring if ring is not None else None,
        ended_at=start + (ring or 30.0) + 60,
        ring_seconds=ring if ring is not None else 30.0,
        talk_seconds=60.0 if ring is not None else 0.0,
        lettering=lettering,
        lettering_reason=reason,
    )


def call_facts() -> list[CallFact]:
    """November: civil-passport 7 calls / 4 answered (rings 3 5 8 10), welfare-policy 5 / 4
    (rings 4 6 12 2); October: civil-passport 2 / 0. Plus calls the report must not count."""
    nov2, nov3, oct15 = "2026-11-02", "2026-11-03", "2026-10-15"
    return [
        call(nov2, "civil-passport", "delivered", 3),
        call(nov2, "civil-passport", "delivered", 5),
        call(nov2, "civil-passport", "delivered", 8),
        call(nov2, "civil-passport", "delivered", None),
        call(nov2, "civil-passport", "unsupported_device", 10),
        call(nov2, "civil-passport", "skipped", None, reason="opted_out"),
        call(nov2, "civil-passport", "skipped", None, reason="opted_out"),
        call(nov3, "welfare-policy", "delivered", 4),
        call(nov3, "welfare-policy", "delivered", 6),
        call(nov3, "welfare-policy", "not_subscribed", 12),
        call(nov3, "welfare-policy", "not_subscribed", None),
        call(nov3, "welfare-policy", "skipped", 2, reason="quiet_hours"),
        # Not outbound calls to mobiles: never in the answer rate.
        call(nov2, "civil-passport", "skipped", 1, reason="landline", kind="landline"),
        call(nov2, "civil-passport", "skipped", 1, direction="inbound"),
        # October, for the comparison.
        call(oct15, "civil-passport", "delivered", None),
        call(oct15, "civil-passport", "delivered", None),
    ]


def thread_facts() -> list[ThreadFact]:
    """Four messages in November (and one in December):
    duty: t1 (holiday, after hours; auto-reply sent, answered +600 s, closed +3600 s),
          t2 (after hours; auto-reply suppressed, answered +1200 s);
    complaint: t3 (auto-reply sent, never answered), t4 (answered +300 s, closed +7200 s)."""
    out: list[ThreadFact] = []

    def received(thread: str, t: float, queue: str, rule: str, tags: tuple[str, ...], **kw: Any) -> None:
        out.append(
            ThreadFact(
                thread, "received", t, f"m-{thread}", message=f"m-{thread}", queue=queue, rule=rule, tags=tags, **kw
            )
        )

    def step(thread: str, kind: str, t: float, detail: str = "") -> None:
        out.append(ThreadFact(thread, kind, t, f"{kind}-{thread}-{t}", message=f"m-{thread}", detail=detail))

    t1 = at("2026-11-01", 22)
    received("t1", t1, "duty", "night", ("noise",), day_type="holiday", after_hours=True)
    step("t1", "auto_replied", t1 + 5, "sent")
    step("t1", "answered", t1 + 600)
    step("t1", "closed", t1 + 3600)
    t2 = at("2026-11-02", 20)
    received("t2", t2, "duty", "night", ("noise", "parking"), day_type="workday", after_hours=True)
    step("t2", "auto_replied", t2 + 5, "opted_out")
    step("t2", "answered", t2 + 1200)
    t3 = at("2026-11-03", 10)
    received("t3", t3, "complaint", "road", (), day_type="workday")
    step("t3", "auto_replied", t3 + 3, "sent")
    t4 = at("2026-11-03", 11)
    received("t4", t4, "complaint", "road", ("pothole",), day_type="workday")
    step("t4", "answered", t4 + 300)
    step("t4", "closed", t4 + 7200)
    t5 = at("2026-12-01", 9)
    received("t5", t5, "duty", "night", (), day_type="workday")
    return out


def run(url: str, body: Callable[[RecordsStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = RecordsStore(url)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def loaded(url: str, facts: Sequence[Fact]) -> str:
    async def write(store: RecordsStore) -> None:
        await store.write(list(facts))
        await store.write(list(facts))  # a redelivered batch changes nothing

    run(url, write)
    return url


@pytest.fixture
def calls_url(records_url: str) -> str:
    """The call facts stored, then the raw calls deleted: the answer rates read roll-ups only."""
    loaded(records_url, call_facts())

    async def purge_raw(store: RecordsStore) -> None:
        async with store.engine.begin() as conn:
            await conn.execute(delete(calls))

    run(records_url, purge_raw)
    return records_url


@pytest.fixture
def inbox_url(records_url: str) -> str:
    return loaded(records_url, thread_facts())


def table(rows: Sequence[Any]) -> dict[str, tuple[Any, ...]]:
    return {r.key: (r.calls, r.answered, r.median_ring_s) for r in rows}


def test_answer_rate_by_department(calls_url: str) -> None:
    rows = run(calls_url, lambda s: reports.answer_rate(s.engine, "2026-11-01", "2026-11-30"))
    assert [r.key for r in rows] == ["civil-passport", "welfare-policy", "total"]
    assert table(rows) == {
        "civil-passport": (7, 4, 6.5),
        "welfare-policy": (5, 4, 5.0),
        "total": (12, 8, 5.5),
    }
    total = rows[-1]
    assert total.rate == pytest.approx(8 / 12)
    assert total.low == pytest.approx(0.3906, abs=5e-4)  # Wilson, 8 of 12, by hand
    assert total.high == pytest.approx(0.8619, abs=5e-4)


def test_answer_rate_by_day_and_lettering(calls_url: str) -> None:
    by_day = run(calls_url, lambda s: reports.answer_rate(s.engine, "2026-10-01", "2026-11-30", by="day"))
    assert {r.key: (r.calls, r.answered) for r in by_day} == {
        "2026-10-15": (2, 0),
        "2026-11-02": (7, 4),
        "2026-11-03": (5, 4),
        "total": (14, 8),
    }
    by_outcome = run(calls_url, lambda s: reports.answer_rate(s.engine, "2026-11-01", "2026-11-30", by="lettering"))
    # Ordered as LetteringKind; a skipped outcome split by reason, whose ring median (rolled up
    # per outcome, not per reason) is unknown when the outcome has several reasons.
    assert [(r.key, r.calls, r.answered, r.median_ring_s) for r in by_outcome] == [
        ("delivered", 6, 5, 5.0),
        ("unsupported_device", 1, 1, 10.0),
        ("not_subscribed", 2, 1, 12.0),
        ("skipped/opted_out", 2, 0, None),
        ("skipped/quiet_hours", 1, 1, None),
        ("total", 12, 8, 5.5),
    ]


def test_answer_rate_for_some_departments(calls_url: str) -> None:
    rows = run(
        calls_url,
        lambda s: reports.answer_rate(s.engine, "2026-11-01", "2026-11-30", departments=["welfare-policy"]),
    )
    assert table(rows) == {"welfare-policy": (5, 4, 5.0), "total": (5, 4, 5.0)}
    nothing = run(calls_url, lambda s: reports.answer_rate(s.engine, "2025-01-01", "2025-12-31"))
    assert [(r.key, r.calls, r.rate, r.low) for r in nothing] == [("total", 0, None, None)]


def test_compare_periods(calls_url: str) -> None:
    rows = run(
        calls_url,
        lambda s: reports.compare_periods(s.engine, ("2026-10-01", "2026-10-31"), ("2026-11-01", "2026-11-30")),
    )
    found = {c.key: c for c in rows}
    assert [c.key for c in rows] == ["civil-passport", "welfare-policy", "total"]
    passport = found["civil-passport"]
    assert (passport.before.calls, passport.before.answered, passport.after.calls, passport.after.answered) == (
        2,
        0,
        7,
        4,
    )
    assert passport.difference_points == pytest.approx(400 / 7)
    assert passport.low_points is not None and passport.high_points is not None
    assert passport.low_points < 400 / 7 < passport.high_points
    assert found["welfare-policy"].difference_points is None  # nothing before
    assert found["total"].before.calls == 2 and found["total"].after.calls == 12


def test_inbox_by_queue(inbox_url: str) -> None:
    rows = run(inbox_url, lambda s: reports.inbox_report(s.engine, "2026-11-01", "2026-11-30"))
    got = {r.key: r for r in rows}
    assert [r.key for r in rows] == ["complaint", "duty", "total"]
    duty, complaint, total = got["duty"], got["complaint"], got["total"]
    assert (duty.received, duty.auto_replied, duty.answered, duty.closed) == (2, 1, 2, 1)
    assert duty.first_response_median_s == pytest.approx(900.0)
    assert duty.first_response_p90_s == pytest.approx(1140.0)
    assert duty.close_median_s == pytest.approx(3600.0)
    assert (duty.after_hours_share, duty.holiday_share) == (1.0, 0.5)
    assert (complaint.received, complaint.auto_replied, complaint.answered, complaint.closed) == (2, 1, 1, 1)
    assert complaint.first_response_median_s == pytest.approx(300.0)
    assert complaint.close_median_s == pytest.approx(7200.0)
    assert (complaint.after_hours_share, complaint.holiday_share) == (0.0, 0.0)
    assert (total.received, total.auto_replied, total.answered, total.closed) == (4, 2, 3, 2)
    assert total.first_response_median_s == pytest.approx(600.0)
    assert total.first_response_p90_s == pytest.approx(1080.0)
    assert total.close_median_s == pytest.approx(5400.0)
    assert (total.after_hours_share, total.holiday_share) == (0.5, 0.25)


def test_inbox_by_rule_tag_and_day(inbox_url: str) -> None:
    def received(by: reports.InboxBy) -> dict[str, int]:
        rows = run(inbox_url, lambda s: reports.inbox_report(s.engine, "2026-11-01", "2026-11-30", by=by))
        return {r.key: r.received for r in rows}

    assert received("rule") == {"night": 2, "road": 2, "total": 4}
    # A message counts under each of its tags; one without tags under "-".
    assert received("tag") == {"noise": 2, "parking": 1, "pothole": 1, "-": 1, "total": 4}
    assert received("day") == {"2026-11-01": 1, "2026-11-02": 1, "2026-11-03": 2, "total": 4}
    december = run(inbox_url, lambda s: reports.inbox_report(s.engine, "2026-12-01", "2026-12-01"))
    assert [(r.key, r.received, r.answered, r.first_response_median_s) for r in december] == [
        ("duty", 1, 0, None),
        ("total", 1, 0, None),
    ]


def test_bad_grouping_is_refused(sqlite_records_url: str) -> None:
    with pytest.raises(ValueError, match="answer rate by"):
        run(sqlite_records_url, lambda s: reports.answer_rate(s.engine, "2026-11-01", "2026-11-30", by="x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inbox report by"):
        run(sqlite_records_url, lambda s: reports.inbox_report(s.engine, "2026-11-01", "2026-11-30", by="x"))  # type: ignore[arg-type]


def test_compare_periods_by_day_pairs_days_in_order(calls_url: str) -> None:
    rows = run(
        calls_url,
        lambda s: reports.compare_periods(
            s.engine, ("2026-10-15", "2026-10-16"), ("2026-11-02", "2026-11-03"), by="day"
        ),
    )
    assert [(c.before.key, c.key, c.before.calls, c.after.calls) for c in rows] == [
        ("2026-10-15", "2026-11-02", 2, 7),
        ("total", "total", 2, 12),
    ]
