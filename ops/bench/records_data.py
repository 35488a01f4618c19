"""A year of a 4,000-phone city's records, generated and loaded fast (the `records` benchmark).

`YearSpec` sizes it (15,000,000 calls and 200,000 threads by default). Rows are generated in
plain Python from pools of pre-drawn "shapes" (a call's direction, extension, party kind,
disposition, ring and talk times, lettering outcome...), so that a row costs a few table
look-ups rather than a dozen random draws; the same spec and seed always give the same rows.

The mix (`_call_shapes`): departments and extensions from `gateway.sim.directory_gen` (4,000
phones); ~60 % outbound (of which ~82 % to mobiles), ~35 % inbound, ~5 % internal; lettering of
outbound mobile calls delivered / unsupported_device / not_subscribed / failed / skipped (with
the guard's and `decide`'s reasons), answer rates ~74 % delivered down to ~54 % skipped; ring
times log-normal (answered, median ~7 s) or the PBX's ring-out (unanswered); calls by office
hours, weekdays far busier than weekends and the 2025 public holidays.

Loading: SQLite with `executemany` in large transactions (`PRAGMA synchronous=OFF`, journal
off, during the load only) into tables whose secondary indexes are dropped first and rebuilt
after; PostgreSQL with asyncpg's binary COPY (`copy_records_to_table`), reading the rows back
from the generated SQLite file (the same rows on both databases). Roll-ups are then built the
way migration 0002 backfills them: ``INSERT ... SELECT ... GROUP BY`` over `calls`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import yaml

from gateway.domain.records import SEOUL, CallFact
from gateway.records.schema import RING_CAP_S, calls, messages, sends, thread_events
from gateway.sim.directory_gen import generate_directory

PHONES = 4000
FIRST_DAY = date(2025, 1, 1)
DAYS = 365
PBXES = ("hanbit-main", "hanbit-annex")
# Korean public holidays of 2025 (substitute holidays included): the duty office's busy days.
_HOLIDAYS = """
    2025-01-01 2025-01-27 2025-01-28 2025-01-29 2025-01-30 2025-03-01 2025-03-03 2025-05-05
    2025-05-06 2025-06-03 2025-06-06 2025-08-15 2025-10-03 2025-10-05 2025-10-06 2025-10-07
    2025-10-08 2025-10-09 2025-12-25
"""
HOLIDAYS_2025 = frozenset(date.fromisoformat(d) for d in _HOLIDAYS.split())
CALL_COLUMNS = tuple(c.name for c in calls.columns)
MESSAGE_COLUMNS = tuple(c.name for c in messages.columns)
EVENT_COLUMNS = tuple(c.name for c in thread_events.columns)
SEND_COLUMNS = tuple(c.name for c in sends.columns)
POOL_BITS = 16  # 65,536 pre-drawn shapes / times of day


@dataclass(frozen=True, slots=True)
class YearSpec:
    calls: int = 15_000_000
    threads: int = 200_000
    seed: int = 15

    @property
    def key(self) -> str:
        """Names the cached file: a different size or seed is a different year (bump the
        version when the generator changes what it makes)."""
        return f"records-{self.calls}c-{self.threads}t-s{self.seed}-v1"


def day_kind(d: date) -> str:
    """routing.DayType of a day: weekday, weekend or holiday."""
    if d in HOLIDAYS_2025:
        return "holiday"
    return "weekend" if d.weekday() >= 5 else "weekday"


def day_start(d: date) -> float:
    """Epoch seconds of a Seoul day's midnight."""
    return datetime(d.year, d.month, d.day, tzinfo=SEOUL).timestamp()


def departments() -> list[tuple[str, list[str]]]:
    """(department id, its extensions) of the generated 4,000-phone directory."""
    doc = yaml.safe_load(generate_directory(PHONES, seed=7))
    out: list[tuple[str, list[str]]] = []
    for dept in doc["departments"]:
        exts: list[str] = []
        for item in dept["extensions"]:
            first, _, last = str(item).partition("-")
            exts.extend(str(n) for n in range(int(first), int(last or first) + 1))
        out.append((str(dept["id"]), exts))
    return out


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split by `weights`, largest remainder: the parts sum to `total` exactly."""
    shares = [total * w / sum(weights) for w in weights]
    parts = [int(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: shares[i] - parts[i], reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _day_weights() -> list[float]:
    return [
        {"weekday": 1.0, "weekend": 0.05, "holiday": 0.04}[day_kind(FIRST_DAY + timedelta(days=i))] for i in range(DAYS)
    ]


def _times_of_day(rng: random.Random, *, office: bool) -> list[float]:
    """Pre-drawn seconds after midnight: office hours with a morning and an afternoon peak and a
    lunch dip (`office`), or spread over the day with a quieter night (weekends, messages)."""
    hours = (
        [0, 0, 0, 0, 0, 0, 0, 0.3, 2.0, 9.0, 12.0, 11.0, 4.0, 8.0, 11.0, 11.0, 10.0, 7.0, 1.5, 0.6, 0.3, 0.1, 0, 0]
        if office
        else [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.5, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 3.5, 3, 2.5, 2, 1.2, 0.7]
    )
    n = 1 << POOL_BITS
    out = [h * 3600 + rng.random() * 3600 for h, k in enumerate(_split(n, hours)) for _ in range(k)]
    rng.shuffle(out)
    return out


@dataclass(frozen=True, slots=True)
class _Shape:
    """A call without its time, ids and citizen: drawn once, reused by many rows."""

    direction: str
    extension: str
    department: str
    party_kind: str
    disposition: str
    cause: str
    ring: float
    talk: float
    lettering: str
    reason: str
    call_notice: str
    postcall: str
    transfers: int
    recovered: bool


# (disposition, Q.850 cause, share of the unanswered calls)
_UNANSWERED: tuple[tuple[str, str, float], ...] = (
    ("no_answer", "19", 0.70),
    ("busy", "17", 0.15),
    ("cancelled", "16", 0.12),
    ("failed", "41", 0.02),
    ("congestion", "34", 0.01),
)
_MOBILE_LETTERING = (
    ("delivered", "", 0.58, 0.74),
    ("unsupported_device", "", 0.09, 0.60),
    ("not_subscribed", "", 0.14, 0.56),
    ("failed", "temporary_error", 0.02, 0.55),
    ("skipped", "duplicate", 0.05, 0.54),
    ("skipped", "opted_out", 0.04, 0.52),
    ("skipped", "known_no_lettering", 0.04, 0.57),
    ("skipped", "rate_limited", 0.02, 0.50),
    ("skipped", "unknown_extension", 0.02, 0.55),
)


def _pick(rng: random.Random, table: Sequence[tuple[Any, ...]], weight_at: int) -> tuple[Any, ...]:
    x = rng.random() * sum(t[weight_at] for t in table)
    for t in table:
        x -= t[weight_at]
        if x <= 0:
            return t
    return table[-1]


def _call_shapes(rng: random.Random) -> list[_Shape]:
    depts = departments()
    postcall_depts = {"civil-passport", "civil-callcenter", "welfare-policy", "jobs", "health-admin"}
    extensions = [(d, e) for d, exts in depts for e in exts]
    # Some departments' citizens pick up more often (their calls are expected): +-6 points.
    answer_bias = {d: rng.uniform(-0.06, 0.06) for d, _ in depts}
    shapes: list[_Shape] = []
    for _ in range(1 << POOL_BITS):
        dept, ext = rng.choice(extensions)
        u = rng.random()
        direction = "outbound" if u < 0.60 else ("inbound" if u < 0.95 else "internal")
        lettering, reason, p_answer = "skipped", direction, 0.80
        if direction == "internal":
            kind = "extension"
            p_answer = 0.85
        elif direction == "inbound":
            kind = _pick(rng, (("mobile", 0.6), ("landline", 0.35), ("special", 0.05)), 1)[0]
        else:
            kind = _pick(
                rng, (("mobile", 82), ("landline", 13), ("special", 3), ("international", 1), ("invalid", 1)), 1
            )[0]
            if kind == "mobile":
                lettering, reason, _, p_answer = _pick(rng, _MOBILE_LETTERING, 2)
                p_answer += answer_bias[dept]
            else:
                reason, p_answer = kind, 0.6
        if lettering == "skipped" and reason == "unknown_extension":
            dept, ext = "", str(rng.choice((1999, 2000, 9001, 9002)))  # lobby, fax: not in the directory
        answered = rng.random() < p_answer
        if answered:
            disposition, cause = "answered", "16"
            ring = min(120.0, math.exp(rng.gauss(math.log(7.0), 0.6)))
            talk = min(3600.0, math.exp(rng.gauss(math.log(90.0), 1.0)))
        else:
            disposition, cause, _ = _pick(rng, _UNANSWERED, 2)
            ring = {"no_answer": rng.uniform(25, 60), "busy": rng.uniform(0.5, 2), "cancelled": rng.uniform(3, 25)}.get(
                disposition, rng.uniform(0.2, 3)
            )
            talk = 0.0
        call_notice = "sent" if lettering == "unsupported_device" and rng.random() < 0.95 else ""
        postcall = ""
        if answered and direction == "outbound" and kind == "mobile" and dept in postcall_depts:
            postcall = "sent" if rng.random() < 0.8 else "capped"
        shapes.append(
            _Shape(
                direction,
                ext,
                dept,
                kind,
                disposition,
                cause,
                round(ring, 3),
                round(talk, 3),
                lettering,
                reason if lettering == "skipped" else ("" if lettering != "failed" else reason),
                call_notice,
                postcall,
                1 if rng.random() < 0.03 else 0,
                rng.random() < 0.001,
            )
        )
    return shapes


def _party_pool(rng: random.Random, size: int) -> list[str]:
    """Keyed-hash look-alikes (64 hex digits): citizens call and are called more than once."""
    return [hashlib.sha256(rng.randbytes(16)).hexdigest() for _ in range(size)]


def call_rows(spec: YearSpec) -> Iterator[tuple[Any, ...]]:
    """Every call of the year, day by day, each day in time order: tuples in `calls` column order.

    Ids are "<pbx>:<epoch>.<sequence>" (Asterisk's Uniqueid shape), increasing with time, so
    the primary key's B-tree is appended to rather than split everywhere."""
    rng = random.Random(spec.seed)
    shapes = _call_shapes(rng)
    parties = _party_pool(rng, 1 << 18)
    office, spread = _times_of_day(rng, office=True), _times_of_day(rng, office=False)
    bits = rng.getrandbits
    seq = 0
    for i, n in enumerate(_split(spec.calls, _day_weights())):
        d = FIRST_DAY + timedelta(days=i)
        base, day = day_start(d), d.isoformat()
        tod = office if day_kind(d) == "weekday" else spread
        for t in sorted(base + tod[bits(POOL_BITS)] for _ in range(n)):
            s = shapes[bits(POOL_BITS)]
            seq += 1
            pbx = PBXES[seq & 1]
            call_id = f"{int(t)}.{seq}"
            answered_at = t + s.ring if s.disposition == "answered" else None
            yield (
                f"{pbx}:{call_id}",
                pbx,
                call_id,
                s.direction,
                s.extension,
                s.department,
                "" if s.party_kind == "extension" else parties[bits(18)],
                s.party_kind,
                s.disposition,
                s.cause,
                t,
                answered_at,
                t + s.ring + s.talk,
                day,
                s.ring,
                s.talk,
                s.lettering,
                s.reason,
                s.call_notice,
                s.postcall,
                s.transfers,
                s.recovered,
            )


def fresh_call_facts(spec: YearSpec, n: int, *, first: date, prefix: str = "w") -> list[CallFact]:
    """`n` new calls (ids that the year does not hold) on the days from `first`, for the write
    figure: the year's mix, 10,000 calls a day."""
    rng = random.Random(spec.seed + 1)
    shapes = _call_shapes(rng)
    parties = _party_pool(rng, 4096)
    office = _times_of_day(rng, office=True)
    out: list[CallFact] = []
    for k in range(n):
        s = shapes[rng.getrandbits(POOL_BITS)]
        t = day_start(first + timedelta(days=k // 10_000)) + office[rng.getrandbits(POOL_BITS)]
        answered = s.disposition == "answered"
        out.append(
            CallFact(
                pbx=PBXES[k & 1],
                call_id=f"{prefix}{int(t)}.{k}",
                direction=s.direction,
                extension=s.extension,
                department=s.department,
                party_hash="" if s.party_kind == "extension" else parties[k & 4095],
                party_kind=s.party_kind,
                disposition=s.disposition,
                cause=s.cause,
                started_at=t,
                answered_at=t + s.ring if answered else None,
                ended_at=t + s.ring + s.talk,
                ring_seconds=s.ring,
                talk_seconds=s.talk,
                lettering=s.lettering,
                lettering_reason=s.reason,
                call_notice=s.call_notice,
                postcall=s.postcall,
                transfers=s.transfers,
                recovered=s.recovered,
            )
        )
    return out


# (rule, queue, tags, weight, auto-reply verdict weight): rules/routing.yaml's rules.
_MESSAGE_MIX = (
    ("default-complaint", "complaint", "", 40),
    ("streetlight-road", "complaint", "road,transport", 12),
    ("illegal-parking", "dept:transport", "parking", 15),
    ("noise-garbage", "dept:environment", "environment", 10),
    ("reply-to-department", "dept:welfare", "reply", 8),
    ("duty-line", "duty", "", 6),
    ("night-duty", "duty", "after-hours", 5),
    ("weekend-holiday-duty", "duty", "after-hours", 3),
    ("emergency", "duty", "emergency", 1),
)


def thread_rows(
    spec: YearSpec,
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Every thread's messages, their lifecycle events and the automatic replies' sends:
    ("messages" | "thread_events" | "sends", row in that table's column order), in time order
    per day. A thread has 1-3 citizen messages; ~85 % get the queue's automatic reply, ~75 % of
    threads are claimed, ~70 % answered (minutes to days later), ~62 % closed."""
    rng = random.Random(spec.seed + 2)
    parties = _party_pool(rng, 1 << 16)
    sealed = [base64.b64encode(rng.randbytes(rng.randint(40, 200))).decode() for _ in range(1024)]
    spread = _times_of_day(rng, office=False)
    weights = [1.0 if day_kind(FIRST_DAY + timedelta(days=i)) == "weekday" else 0.7 for i in range(DAYS)]
    serial = 0
    for i, n in enumerate(_split(spec.threads, weights)):
        d = FIRST_DAY + timedelta(days=i)
        base, kind = day_start(d), day_kind(d)
        for t in sorted(base + spread[rng.getrandbits(POOL_BITS)] for _ in range(n)):
            serial += 1
            rule, queue, tags, _ = _pick(rng, _MESSAGE_MIX, 3)
            thread = f"t{serial:09d}"
            party = parties[rng.getrandbits(16)]
            hour = (t - base) / 3600
            after = kind != "weekday" or not 9 <= hour < 18
            claimed = rng.random() < 0.75
            answer_at = t + math.exp(rng.gauss(math.log(1800 if not after else 20_000), 1.2))
            answered = claimed and rng.random() < 0.93
            closed = answered and rng.random() < 0.9
            close_at = answer_at + math.exp(rng.gauss(math.log(3600), 1.0))
            at = t
            for m in range(rng.choice((1, 1, 1, 1, 2, 2, 3))):
                at = t + m * rng.uniform(30, 600)
                mid = f"sandbox-sms:{serial:09d}{m}"
                replied = m == 0 and rng.random() < 0.85
                mday = datetime.fromtimestamp(at, SEOUL).date().isoformat()
                first_response = answer_at if answered and at <= answer_at else None
                yield (
                    "messages",
                    (
                        mid,
                        thread,
                        queue,
                        rule,
                        tags,
                        at,
                        mday,
                        kind,
                        after,
                        party,
                        sealed[rng.getrandbits(10)],
                        at + 2.0 if replied else None,
                        "sent" if replied else "",
                        first_response,
                        close_at if closed else None,
                    ),
                )
                yield "thread_events", (f"{thread}:received:{mid}", thread, "received", at, mday, queue, "", "", "")
                if replied:
                    yield (
                        "thread_events",
                        (f"{thread}:auto_replied:{mid}", thread, "auto_replied", at + 2, mday, queue, "", "sent", ""),
                    )
                    key = f"auto_reply:{mid}"
                    yield (
                        "sends",
                        (
                            key,
                            "auto_reply",
                            "sms",
                            "sandbox-sms",
                            "delivered",
                            at + 2,
                            at + 9,
                            mday,
                            party,
                            "",
                            "",
                            False,
                        ),
                    )
            staff = f"staff{rng.randint(1, 60):02d}"
            for step, when, ok in (
                ("claimed", t + min(answer_at - t, 600) / 2, claimed),
                ("answered", answer_at, answered),
                ("closed", close_at, closed),
            ):
                if ok:
                    eday = datetime.fromtimestamp(when, SEOUL).date().isoformat()
                    text = sealed[rng.getrandbits(10)] if step == "answered" else ""
                    yield (
                        "thread_events",
                        (f"{thread}:{step}:{staff}:{when:.3f}", thread, step, when, eday, queue, staff, "", text),
                    )


# ------------------------------------------------------------------------------ SQLite loading

_ROLLUP_SELECT = {
    # How migration 0002 backfills the roll-ups and what `RecordsStore.write` keeps: outbound
    # calls to mobiles, the reason only for skipped ones, ring seconds truncated and capped.
    "answer_daily": (
        "INSERT INTO answer_daily (day, department, lettering, reason, calls, answered) "
        "SELECT day, department, lettering, CASE WHEN lettering = 'skipped' THEN lettering_reason ELSE '' END, "
        "COUNT(*), SUM(CASE WHEN disposition = 'answered' THEN 1 ELSE 0 END) FROM calls "
        "WHERE direction = 'outbound' AND party_kind = 'mobile' "
        "GROUP BY day, department, lettering, CASE WHEN lettering = 'skipped' THEN lettering_reason ELSE '' END"
    ),
    "ring_daily": (
        "INSERT INTO ring_daily (day, department, lettering, ring_s, answered) "
        "SELECT day, department, lettering, {ring}, COUNT(*) FROM calls "
        "WHERE direction = 'outbound' AND party_kind = 'mobile' AND disposition = 'answered' "
        "GROUP BY day, department, lettering, {ring}"
    ),
}
# Migration 0002's expression: whole seconds truncated like Python's int() (SQLite's CAST
# truncates, PostgreSQL's rounds, hence FLOOR there), capped at RING_CAP_S.
RING_EXPR = {
    dialect: f"CASE WHEN ring_seconds < 0 THEN 0 WHEN ring_seconds >= {RING_CAP_S} THEN {RING_CAP_S} "
    f"ELSE CAST({seconds} AS INTEGER) END"
    for dialect, seconds in (("sqlite", "ring_seconds"), ("postgresql", "FLOOR(ring_seconds)"))
}


def rollup_statements(dialect: str) -> list[str]:
    """The daily roll-ups from `calls`, then the monthly ones from the daily (migration 0003's
    backfill, `gateway.records.rollups.MONTHLY_BACKFILL`)."""
    from gateway.records.rollups import MONTHLY_BACKFILL

    daily = [_ROLLUP_SELECT["answer_daily"], _ROLLUP_SELECT["ring_daily"].format(ring=RING_EXPR[dialect])]
    return daily + list(MONTHLY_BACKFILL)


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _secondary_indexes(db: sqlite3.Connection, tables: Sequence[str]) -> list[str]:
    """The CREATE INDEX statements of `tables` (dropped for the load, replayed after)."""
    marks = ",".join("?" * len(tables))
    return [
        str(sql)
        for (sql,) in db.execute(
            f"SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({marks})",
            tuple(tables),
        )
    ]


def load_sqlite(path: str, spec: YearSpec, *, log: Any = print) -> dict[str, Any]:
    """Fill the (migrated, empty) SQLite database at `path` with the year; returns timings and counts."""
    timings: dict[str, float] = {}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")  # a benchmark's bulk load: crash safety is not needed
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB for the index builds
        tables = ("calls", "messages", "thread_events", "sends")
        indexes = _secondary_indexes(db, tables)
        for sql in indexes:
            db.execute("DROP INDEX " + sql.split()[2])
        t0 = time.perf_counter()
        marks = ",".join("?" * len(CALL_COLUMNS))
        insert = f"INSERT INTO calls ({','.join(CALL_COLUMNS)}) VALUES ({marks})"
        done = 0
        for chunk in _chunks(call_rows(spec), 200_000):
            db.execute("BEGIN")
            db.executemany(insert, chunk)
            db.execute("COMMIT")
            done += len(chunk)
            if done % 3_000_000 < 200_000:
                log(f"records: {done:,} calls loaded ({time.perf_counter() - t0:.0f} s)")
        timings["calls_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        columns = {"messages": MESSAGE_COLUMNS, "thread_events": EVENT_COLUMNS, "sends": SEND_COLUMNS}
        statements = {
            name: f"INSERT INTO {name} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
            for name, cols in columns.items()
        }
        pending: dict[str, list[tuple[Any, ...]]] = {name: [] for name in columns}
        db.execute("BEGIN")
        for table, row in thread_rows(spec):
            pending[table].append(row)
            if len(pending[table]) >= 100_000:
                db.executemany(statements[table], pending[table])
                pending[table] = []
        for table, rows in pending.items():
            db.executemany(statements[table], rows)
        db.execute("COMMIT")
        timings["threads_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for sql in indexes:
            db.execute(sql)
        timings["indexes_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        db.execute("BEGIN")
        for sql in rollup_statements("sqlite"):
            db.execute(sql)
        db.execute("COMMIT")
        timings["rollups_s"] = time.perf_counter() - t0
        db.execute("ANALYZE")
        counts = table_counts(db)
    finally:
        db.close()
    return {"timings_s": {k: round(v, 1) for k, v in timings.items()}, "counts": counts}


COUNTED_TABLES = ("calls", "messages", "thread_events", "sends", "answer_daily", "ring_daily", "answer_monthly")


def table_counts(db: sqlite3.Connection) -> dict[str, int]:
    names = COUNTED_TABLES
    return {name: int(db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]) for name in names}


# ------------------------------------------------------------------------------ PostgreSQL loading


async def load_postgresql(dsn: str, source: str, *, log: Any = print) -> dict[str, Any]:
    """Copy the year from the generated SQLite file `source` into the (migrated, empty)
    PostgreSQL database at `dsn` with binary COPY; then indexes, roll-ups, ANALYZE."""
    import asyncpg

    timings: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    src = sqlite3.connect(source)
    try:
        tables = ("calls", "messages", "thread_events", "sends")
        indexes = [
            str(r["indexdef"])
            for r in await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE tablename = ANY($1::text[]) AND indexname NOT LIKE '%pkey'",
                list(tables),
            )
        ]
        for definition in indexes:
            await conn.execute("DROP INDEX " + definition.split()[2])
        for table in tables:
            t0 = time.perf_counter()
            columns = [c.name for c in {"calls": calls, "messages": messages, "thread_events": thread_events,
                                        "sends": sends}[table].columns]  # fmt: skip
            cursor = src.execute(f"SELECT {','.join(columns)} FROM {table}")
            done = 0
            while True:
                rows = cursor.fetchmany(100_000)
                if not rows:
                    break
                await conn.copy_records_to_table(table, records=_pg_rows(table, rows), columns=columns)
                done += len(rows)
                if table == "calls" and done % 3_000_000 < 100_000:
                    log(f"records: {done:,} calls copied to PostgreSQL ({time.perf_counter() - t0:.0f} s)")
            timings[f"{table}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for definition in indexes:
            await conn.execute(definition)
        timings["indexes_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with conn.transaction():
            for sql in rollup_statements("postgresql"):
                await conn.execute(sql)
        timings["rollups_s"] = time.perf_counter() - t0
        await conn.execute("ANALYZE")
        counts = {name: int(await conn.fetchval(f"SELECT COUNT(*) FROM {name}")) for name in COUNTED_TABLES}
    finally:
        src.close()
        await conn.close()
    return {"timings_s": {k: round(v, 1) for k, v in timings.items()}, "counts": counts}


_BOOLEAN_AT = {
    "calls": CALL_COLUMNS.index("recovered"),
    "messages": MESSAGE_COLUMNS.index("after_hours"),
    "sends": SEND_COLUMNS.index("fallback_used"),
}


def _pg_rows(table: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """SQLite gives booleans back as 0/1: binary COPY wants real booleans."""
    at = _BOOLEAN_AT.get(table)
    if at is None:
        return rows
    return [(*r[:at], bool(r[at]), *r[at + 1 :]) for r in rows]
