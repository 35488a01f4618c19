"""The access-record chains' retention purge (the rows are written by `gateway.staff.audit`).

The purge removes a chain's oldest records only, a contiguous run from its oldest end (every
record before the first one that is still within its period), and in the same transaction
writes the last removed record's (seq, hash) as the chain's anchor, from which `gateway audit
verify` starts. A record out of time order (its time taken a moment before an earlier-numbered
one's) waits for the next purge rather than leave a hole in the chain.

Here, not in `gateway.staff`, because the records purge (`gateway.records.retention`) runs it
and the records layer sits below the staff layer.
"""

from __future__ import annotations

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.records.schema import audit_heads, audit_log
from gateway.records.store import _WRITE_OPTION

CHUNK = 5000


async def lock_head(conn: AsyncConnection, chain: str) -> tuple[int, str, int, str]:
    """The chain's head row (seq, hash, anchor_seq, anchor_hash), locked until the transaction
    ends (PostgreSQL: FOR UPDATE; SQLite: the transaction began IMMEDIATE, the database is ours)."""
    h = audit_heads.c
    query = select(h.seq, h.hash, h.anchor_seq, h.anchor_hash).where(h.chain == chain)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).one_or_none()
    if row is None:
        raise LookupError(f"audit chain {chain!r} has no head row (run `gateway records migrate`)")
    return int(row[0]), str(row[1]), int(row[2]), str(row[3])


async def _boundary(conn: AsyncConnection, chain: str, cutoff: float) -> int | None:
    """The seq of the chain's first record at or after `cutoff` (None: every record is older)."""
    a = audit_log.c
    value = (await conn.execute(select(func.min(a.seq)).where(a.chain == chain, a.at >= cutoff))).scalar()
    return None if value is None else int(value)


async def count_due(engine: AsyncEngine, chain: str, cutoff: float) -> int:
    """How many records a purge with `cutoff` would remove (a dry run)."""
    a = audit_log.c
    async with engine.connect() as conn:
        keep = await _boundary(conn, chain, cutoff)
        query = select(func.count()).select_from(audit_log).where(a.chain == chain)
        if keep is not None:
            query = query.where(a.seq < keep)
        return int((await conn.execute(query)).scalar_one())


async def purge_chain(engine: AsyncEngine, chain: str, cutoff: float, *, chunk: int = CHUNK) -> int:
    """Delete the chain's records older than `cutoff` from its oldest end, `chunk` at a time,
    each chunk in one transaction with the anchor moved to its last removed record: how many."""
    writer = engine.execution_options(**{_WRITE_OPTION: True})
    a = audit_log.c
    total = 0
    while True:
        async with writer.begin() as conn:
            if conn.dialect.name == "sqlite":
                await conn.exec_driver_sql("PRAGMA secure_delete = ON")
            _, _, anchor_seq, _ = await lock_head(conn, chain)
            keep = await _boundary(conn, chain, cutoff)
            upper = (await conn.execute(select(func.max(a.seq)).where(a.chain == chain))).scalar()
            if upper is None:
                return total
            last = (keep - 1) if keep is not None else int(upper)
            last = min(last, anchor_seq + chunk)
            if last <= anchor_seq:
                return total
            row = (await conn.execute(select(a.hash).where(a.chain == chain, a.seq == last))).one_or_none()
            if row is None:
                # A hole at the boundary (a deleted row): the purge never papers over tampering;
                # `audit verify` reports it.
                return total
            deleted = (await conn.execute(delete(audit_log).where(and_(a.chain == chain, a.seq <= last)))).rowcount
            await conn.execute(
                update(audit_heads).where(audit_heads.c.chain == chain).values(anchor_seq=last, anchor_hash=row[0])
            )
        total += int(deleted)
        if keep is not None and last >= keep - 1:
            return total
