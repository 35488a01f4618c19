"""The access records (접속기록) in the records store: `SqlAccessLog`, hash-chained appends.

An append runs in one transaction: the chain's head row is read and locked (PostgreSQL:
``SELECT ... FOR UPDATE``; SQLite: the transaction began with ``BEGIN IMMEDIATE``, which holds
the database's write lock), the record numbered head + 1 and hashed over the head's hash
(`gateway.domain.audit.chain_hash`), inserted, and the head moved to it. Appenders in many
coroutines or several gateways therefore queue on the head and never fork the chain.

Verification streams each chain in seq order from its anchor (the last purged record) and
checks the last record against the head (`gateway.domain.audit.verify_chain`). Listing and the
monthly CSV export (UTF-8 with a BOM, for Excel) read the same table.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.audit import (
    ACTION_LABELS,
    AccessEntry,
    AccessRecord,
    Chain,
    VerifyResult,
    chain_hash,
    chain_of,
    verify_chain,
)
from gateway.domain.records import SEOUL
from gateway.errors import StoreUnavailable
from gateway.records import auditchain
from gateway.records.schema import audit_heads, audit_log
from gateway.records.store import _WRITE_OPTION, RecordsError, RecordsStore

PAGE = 5000  # rows per read while verifying or exporting

_LIMITS = {c.name: int(length) for c in audit_log.columns if (length := getattr(c.type, "length", None))}

CSV_HEADER = (
    "일시",
    "계정",
    "접속지(IP)",
    "수행업무",
    "정보주체",
    "대상",
    "결과",
    "상세",
    "기록구분",
    "일련번호",
    "해시",
)
RESULT_LABELS = {"ok": "성공", "denied": "거부", "failed": "실패"}
CHAIN_LABELS = {Chain.ACCESS: "접속기록", Chain.ACCOUNTS: "계정 변경"}


def fitted(entry: AccessEntry) -> AccessEntry:
    """The entry with every text cut to its column's length (the hash covers what is stored)."""

    def cut(name: str, value: str) -> str:
        # A lone surrogate (from a URL or header that was not UTF-8) is written as its escape:
        # it could be neither hashed nor stored.
        return value.encode("utf-8", "backslashreplace").decode()[: _LIMITS[name]]

    return AccessEntry(
        at=entry.at,
        account=cut("account", entry.account),
        ip=cut("ip", entry.ip),
        action=cut("action", entry.action),
        subject=cut("subject", entry.subject),
        target=cut("target", entry.target),
        result=cut("result", entry.result),
        detail=cut("detail", entry.detail),
    )


def _record_of(row: Any) -> AccessRecord:
    entry = AccessEntry(
        at=float(row.at),
        account=row.account,
        ip=row.ip,
        action=row.action,
        subject=row.subject,
        target=row.target,
        result=row.result,
        detail=row.detail,
    )
    return AccessRecord(chain=row.chain, seq=int(row.seq), entry=entry, prev=row.prev, hash=row.hash)


class SqlAccessLog:
    """`gateway.ports.AccessLog` over the records store (see the module docstring). Every
    failure to reach the database is `StoreUnavailable`: what cannot be recorded is not done."""

    def __init__(self, store: RecordsStore, key: bytes) -> None:
        self.store = store
        self.key = key
        self._writer = store.engine.execution_options(**{_WRITE_OPTION: True})
        self._append_lock = asyncio.Lock()

    async def _run(self, what: str, op: Any) -> Any:
        try:
            return await self.store._guard(what, op)
        except RecordsError as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- writing --------------------------------------------------------------------------

    async def record(self, entry: AccessEntry) -> None:
        """Append `entry` to its chain (`chain_of(entry.action)`); durable when this returns."""
        await self.append(entry)

    async def append(self, entry: AccessEntry) -> AccessRecord:
        """Append and return the chained record."""
        entry = fitted(entry)
        chain = str(chain_of(entry.action))

        async def op() -> AccessRecord:
            async with self._writer.begin() as conn:
                head_seq, head_hash, _, _ = await auditchain.lock_head(conn, chain)
                seq = head_seq + 1
                digest = chain_hash(self.key, chain, seq, entry, head_hash)
                await conn.execute(
                    insert(audit_log).values(
                        chain=chain,
                        seq=seq,
                        at=entry.at,
                        account=entry.account,
                        ip=entry.ip,
                        action=entry.action,
                        subject=entry.subject,
                        target=entry.target,
                        result=entry.result,
                        detail=entry.detail,
                        prev=head_hash,
                        hash=digest,
                    )
                )
                await conn.execute(update(audit_heads).where(audit_heads.c.chain == chain).values(seq=seq, hash=digest))
            return AccessRecord(chain, seq, entry, head_hash, digest)

        # One append at a time per process: the chain serialises appends anyway (head row lock,
        # BEGIN IMMEDIATE), and queueing here costs nothing where waiting in SQLite's busy
        # handler sleeps between retries (50 pages at once: 650-970 ms -> ~100 ms, ops/bench console).
        async with self._append_lock:
            result: AccessRecord = await self._run("writing an access record", op)
        return result

    async def purge(self, chain: str, cutoff: float) -> int:
        """Remove the chain's records older than `cutoff` from its oldest end (the anchor moves
        to the last removed record in the same transaction): how many."""

        async def op() -> int:
            return await auditchain.purge_chain(self.store.engine, chain, cutoff)

        count: int = await self._run("purging access records", op)
        return count

    # -- verifying ------------------------------------------------------------------------

    async def verify(self, chain: str | None = None) -> list[VerifyResult]:
        """Each chain (or only `chain`) checked from its anchor to its head."""
        chains = [chain] if chain else [str(c) for c in Chain]

        async def op() -> list[VerifyResult]:
            out = []
            for name in chains:
                async with self.store.engine.connect() as conn:
                    if conn.dialect.name == "postgresql":
                        # One snapshot for the head and every page: appends meanwhile are not seen.
                        await conn.execution_options(isolation_level="REPEATABLE READ")
                    async with conn.begin():
                        out.append(await self._verify_one(conn, name))
            return out

        results: list[VerifyResult] = await self._run("verifying the access records", op)
        return results

    async def _verify_one(self, conn: AsyncConnection, chain: str) -> VerifyResult:
        h = audit_heads.c
        head_row = (
            await conn.execute(select(h.seq, h.hash, h.anchor_seq, h.anchor_hash).where(h.chain == chain))
        ).one_or_none()
        if head_row is None:
            return VerifyResult(chain, False, 0, None, "the chain's head row is missing")
        head = (int(head_row[0]), str(head_row[1]))
        anchor = (int(head_row[2]), str(head_row[3]))
        a = audit_log.c
        checked = 0
        position = anchor
        after = anchor[0] - 1 if anchor[0] > 0 else -1  # rows at or before the anchor are reported too
        while True:
            rows = (
                await conn.execute(select(audit_log).where(a.chain == chain, a.seq > after).order_by(a.seq).limit(PAGE))
            ).all()
            records = [_record_of(r) for r in rows]
            if records and records[0].seq <= anchor[0]:
                problem = "a record older than the purge anchor is back"
                return VerifyResult(chain, False, checked, records[0].seq, problem)
            last_page = len(records) < PAGE
            result = verify_chain(self.key, chain, records, anchor=position, head=head if last_page else None)
            if not result.ok:
                return VerifyResult(chain, False, checked + result.checked, result.first_bad_seq, result.problem)
            checked += result.checked
            if last_page:
                return VerifyResult(chain, True, checked)
            position = (records[-1].seq, records[-1].hash)
            after = records[-1].seq

    # -- reading --------------------------------------------------------------------------

    def _filtered(
        self,
        *,
        since: float | None,
        until: float | None,
        account: str | None,
        subject: str | None,
        action: str | None,
        chain: str | None,
    ) -> Select[Any]:
        a = audit_log.c
        query = select(audit_log)
        if since is not None:
            query = query.where(a.at >= since)
        if until is not None:
            query = query.where(a.at < until)
        if account:
            query = query.where(a.account == account)
        if subject:
            query = query.where(a.subject == subject)
        if action:
            query = query.where(a.action == action)
        if chain:
            query = query.where(a.chain == chain)
        return query

    async def list(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        account: str | None = None,
        subject: str | None = None,
        action: str | None = None,
        chain: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Sequence[AccessRecord]:
        """Records matching every filter given (`since` inclusive, `until` exclusive, epoch
        seconds), newest first."""
        a = audit_log.c
        query = (
            self._filtered(since=since, until=until, account=account, subject=subject, action=action, chain=chain)
            .order_by(a.at.desc(), a.chain, a.seq.desc())
            .limit(max(1, limit))
            .offset(max(0, offset))
        )

        async def op() -> list[AccessRecord]:
            async with self.store.engine.connect() as conn:
                return [_record_of(r) for r in (await conn.execute(query)).all()]

        records: list[AccessRecord] = await self._run("reading access records", op)
        return records

    async def export_csv(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        account: str | None = None,
        subject: str | None = None,
        action: str | None = None,
        chain: str | None = None,
    ) -> bytes:
        """The matching records as CSV (oldest first; UTF-8 with a BOM so Excel reads Hangul;
        Korean headers and action labels; times in Asia/Seoul)."""
        a = audit_log.c
        base = self._filtered(since=since, until=until, account=account, subject=subject, action=action, chain=chain)

        async def op() -> bytes:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(CSV_HEADER)
            async with self.store.engine.connect() as conn:
                offset = 0
                while True:
                    page = base.order_by(a.at, a.chain, a.seq).limit(PAGE).offset(offset)
                    rows = (await conn.execute(page)).all()
                    for row in rows:
                        writer.writerow(csv_row(_record_of(row)))
                    if len(rows) < PAGE:
                        break
                    offset += PAGE
            return ("\ufeff" + out.getvalue()).encode("utf-8")

        body: bytes = await self._run("exporting access records", op)
        return body


def seoul_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, SEOUL).strftime("%Y-%m-%d %H:%M:%S")


def csv_row(record: AccessRecord) -> list[str]:
    e = record.entry
    return [
        seoul_time(e.at),
        _safe(e.account),
        _safe(e.ip),
        ACTION_LABELS.get(e.action, e.action),
        _safe(e.subject),
        _safe(e.target),
        RESULT_LABELS.get(e.result, e.result),
        _safe(e.detail),
        CHAIN_LABELS.get(Chain(record.chain), record.chain) if record.chain in set(Chain) else record.chain,
        str(record.seq),
        record.hash,
    ]


def _safe(value: str) -> str:
    """A cell Excel will not run as a formula (CSV injection: a stated reason may begin with '=')."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
