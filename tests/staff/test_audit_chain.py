"""The access records' hash chains on SQLite and PostgreSQL: concurrent appenders never fork a
chain; an edited, deleted or truncated record is found by `verify`; the retention purge keeps
the chain verifiable (gateway.staff.audit, gateway.records.auditchain)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import delete, select, text, update

from gateway.domain.audit import AccessEntry, Action
from gateway.domain.retention import Retention
from gateway.records.retention import run_purge
from gateway.records.schema import audit_heads, audit_log, purges
from tests.staff.conftest import Staff, make_staff

DAY = 86400.0


def entry(n: int, at: float | None = None, action: str = Action.VIEW_THREAD) -> AccessEntry:
    return AccessEntry(
        at=time.time() if at is None else at,
        account=f"kim{n % 3}",
        ip="10.0.0.7",
        action=action,
        subject=f"t{n:08d}",
        target="duty",
        detail="목록에서 열람",
    )


async def seqs(staff: Staff, chain: str = "access") -> list[int]:
    async with staff.store.engine.connect() as conn:
        rows = await conn.execute(select(audit_log.c.seq).where(audit_log.c.chain == chain).order_by(audit_log.c.seq))
        return [int(r[0]) for r in rows]


async def test_concurrent_appenders_of_two_gateways_never_fork_the_chain(staff: Staff) -> None:
    other = await make_staff(staff.store.url)  # a second gateway on the same database
    try:
        await asyncio.gather(
            *(staff.access.record(entry(n)) for n in range(60)),
            *(other.access.record(entry(100 + n)) for n in range(60)),
            *(other.access.record(entry(200 + n, action=Action.ACCOUNT_CHANGE)) for n in range(20)),
        )
    finally:
        await other.store.close()
    assert await seqs(staff) == list(range(1, 121))
    assert await seqs(staff, "accounts") == list(range(1, 21))
    results = await staff.access.verify()
    assert [(r.chain, r.ok, r.checked) for r in results] == [("access", True, 120), ("accounts", True, 20)]
    async with staff.store.engine.connect() as conn:
        prevs = (await conn.execute(select(audit_log.c.prev).where(audit_log.c.chain == "access"))).scalars().all()
    assert len(set(prevs)) == 120  # every record links to a different predecessor: one line, no fork


async def test_an_edited_record_is_found(staff: Staff) -> None:
    for n in range(10):
        await staff.access.record(entry(n))
    assert (await staff.access.verify("access"))[0].ok
    async with staff.store.engine.begin() as conn:
        await conn.execute(
            update(audit_log).where(audit_log.c.chain == "access", audit_log.c.seq == 4).values(detail="고친 내용")
        )
    (result,) = await staff.access.verify("access")
    assert not result.ok and result.first_bad_seq == 4 and "altered" in result.problem
    assert result.checked == 3


async def test_a_deleted_record_in_the_middle_is_found(staff: Staff) -> None:
    for n in range(10):
        await staff.access.record(entry(n))
    async with staff.store.engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.chain == "access", audit_log.c.seq == 6))
    (result,) = await staff.access.verify("access")
    assert not result.ok and result.first_bad_seq == 6 and "missing" in result.problem


async def test_deleting_the_newest_records_is_found_against_the_head(staff: Staff) -> None:
    for n in range(10):
        await staff.access.record(entry(n))
    async with staff.store.engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.chain == "access", audit_log.c.seq >= 9))
    (result,) = await staff.access.verify("access")
    assert not result.ok and "newest" in result.problem and result.checked == 8


async def test_a_record_rehashed_without_the_key_is_found(staff: Staff) -> None:
    """Someone with the database alone recomputes a plain SHA-256: the keyed hash does not match."""
    for n in range(3):
        await staff.access.record(entry(n))
    async with staff.store.engine.begin() as conn:
        await conn.execute(
            update(audit_log).where(audit_log.c.chain == "access", audit_log.c.seq == 2).values(account="lee")
        )
        await conn.execute(text("UPDATE audit_log SET hash = prev WHERE chain = 'access' AND seq = 2"))
    (result,) = await staff.access.verify("access")
    assert not result.ok and result.first_bad_seq == 2


async def test_the_purge_removes_the_oldest_end_and_the_chain_still_verifies(staff: Staff) -> None:
    now = time.time()
    for n in range(6):
        await staff.access.record(entry(n, at=now - (800 - n) * DAY))  # past the 730 days
    # One out of time order: numbered after an old one, its time is recent. It stops the purge
    # there, so the purge never leaves a hole in the chain.
    await staff.access.record(entry(6, at=now - 10 * DAY))
    await staff.access.record(entry(7, at=now - 900 * DAY))
    for n in range(8, 12):
        await staff.access.record(entry(n, at=now - 5 * DAY))
    cutoff = now - 730 * DAY
    assert await staff.access.purge("access", cutoff) == 6
    assert await seqs(staff) == list(range(7, 13))
    async with staff.store.engine.connect() as conn:
        head = (await conn.execute(select(audit_heads).where(audit_heads.c.chain == "access"))).one()
    assert (head.anchor_seq, head.seq) == (6, 12)
    (result,) = await staff.access.verify("access")
    assert result.ok and result.checked == 6
    assert await staff.access.purge("access", cutoff) == 0  # nothing more at the oldest end
    # Tampering after a purge is still found.
    async with staff.store.engine.begin() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.chain == "access", audit_log.c.seq == 7))
    (result,) = await staff.access.verify("access")
    assert not result.ok and result.first_bad_seq == 7


async def test_the_records_purge_purges_both_chains_and_records_it(staff: Staff) -> None:
    now = time.time()
    for n in range(3):
        await staff.access.record(entry(n, at=now - 800 * DAY))  # access: 730 days
    await staff.access.record(entry(3, at=now - 800 * DAY, action=Action.ACCOUNT_ADD))  # accounts: 1095 days
    await staff.access.record(entry(4, at=now - 1200 * DAY, action=Action.ACCOUNT_CHANGE))
    await staff.access.record(entry(5, at=now))
    plan = await run_purge(staff.store.engine, None, Retention(), now, dry_run=True)
    assert {p.kind: p.count for p in plan if p.kind.endswith("_log")} == {"access_log": 3, "accounts_log": 0}
    done = await run_purge(staff.store.engine, None, Retention(), now)
    assert {p.kind: p.count for p in done if p.kind.endswith("_log")} == {"access_log": 3, "accounts_log": 0}
    assert all(r.ok for r in await staff.access.verify())
    async with staff.store.engine.connect() as conn:
        rows = (await conn.execute(select(purges.c.kind, purges.c.count).where(purges.c.kind.like("%_log")))).all()
    assert sorted((r[0], r[1]) for r in rows) == [("access_log", 3), ("accounts_log", 0)]
    # The account change of 1200 days ago waits behind the one of 800 days ago (the oldest end
    # first); with a 700-day period both are due.
    done = await run_purge(staff.store.engine, None, Retention(accounts=700), now)
    assert {p.kind: p.count for p in done}["accounts_log"] == 2
    assert all(r.ok for r in await staff.access.verify())


async def test_listing_filters_and_the_csv_export(staff: Staff) -> None:
    now = time.time()
    await staff.access.record(AccessEntry(now - 20, "kim", "10.0.0.1", Action.VIEW_THREAD, subject="t1"))
    await staff.access.record(AccessEntry(now - 10, "lee", "10.0.0.2", Action.REPLY, subject="t1", detail="=1+1"))
    await staff.access.record(AccessEntry(now - 5, "kim", "10.0.0.1", Action.VIEW_THREAD, subject="t2"))
    newest_first = await staff.access.list()
    assert [r.entry.subject for r in newest_first] == ["t2", "t1", "t1"]
    assert [r.entry.account for r in await staff.access.list(account="kim")] == ["kim", "kim"]
    assert [r.entry.action for r in await staff.access.list(subject="t1", action=Action.REPLY)] == ["reply"]
    assert len(await staff.access.list(since=now - 12, until=now)) == 2
    assert len(await staff.access.list(limit=1, offset=1)) == 1
    body = await staff.access.export_csv(account="lee")
    assert body.startswith("\ufeff".encode())  # Excel reads the BOM as UTF-8
    lines = body.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("일시,계정,접속지(IP),수행업무,정보주체")
    assert "답장" in lines[1] and "'=1+1" in lines[1]  # a formula-like cell is neutralised
    assert len(lines) == 2
