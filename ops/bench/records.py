"""Records benchmark: ``python -m ops.bench.records [--quick] [--db sqlite,postgresql]``.

A year of a 4,000-phone city (`ops.bench.records_data`: 15,000,000 calls, 200,000 threads;
quick: 300,000 calls, 20,000 threads) loaded into SQLite (a cached file under
ops/bench/results/, reused by the next run of the same size and seed) and into a private
PostgreSQL (`gateway.sim.pgproc.PostgresProcess`), then, per database, each figure beside its
goal and a baseline measured in the same run:

* the answer-rate report for the whole year by department (`gateway.records.reports.answer_rate`,
  over the monthly and daily roll-ups), goal <= 1 s; baselines: the same report from the daily
  roll-ups only, and the same rows computed by GROUP BY over the raw `calls` table. All must
  agree exactly (calls, answered, median ring time per department);
* `RecordsStore.write` in batches of 1,000 fresh calls, goal >= 2,000 calls/s; baseline: a plain
  executemany INSERT of the same rows into an empty copy of `calls` (same columns and indexes, no
  idempotency, no roll-ups), batch for batch interleaved. Then the rows and roll-ups are counted,
  and the first batch written again must change nothing;
* the purge of one day of the year (`gateway.records.retention.run_purge`, retention set so that
  exactly the first day has expired), goal <= 10 s; every row older than the cutoff gone, the
  roll-ups unchanged, each kind recorded in `purges`;
* intake during a purge: signed SMS webhooks to the real gateway app (`ops.bench.inbound`'s
  server and load generator) at a fixed concurrency, steps alternating without and with a purge
  of the next day running in another process (as the worker would run it): p99 with / without.

And once (SQLite): the lettering p99 at 500 calls/s with records on (the gateway's pipeline
recording into a `StreamRecordSink`, a `RecordsWriter` in another process draining the stream
into SQLite) against records off, interleaved runs, median p99 of each (`ops.bench.records_latency`).

Exit status 0 when every count and check holds, 1 otherwise, 2 for bad arguments. Timing goals
are reported, never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Index, MetaData, Table, case, func, insert, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.analytics import RateRow, median_from_histogram
from gateway.domain.records import CallFact, seoul_day
from gateway.domain.retention import Retention, plan_purge
from gateway.records.schema import answer_daily, answer_monthly, calls, purges, ring_daily, ring_monthly
from gateway.records.store import RecordsStore
from ops.bench.records_data import (
    DAYS,
    FIRST_DAY,
    RING_EXPR,
    YearSpec,
    day_kind,
    day_start,
    fresh_call_facts,
    load_postgresql,
    load_sqlite,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_REPORT_S = 1.0
GOAL_WRITES_PER_S = 2000.0
GOAL_PURGE_S = 10.0
GOAL_P99_RATIO = 1.0
YEAR = (FIRST_DAY.isoformat(), (FIRST_DAY + timedelta(days=DAYS - 1)).isoformat())
WRITE_FIRST_DAY = FIRST_DAY + timedelta(days=DAYS)  # fresh calls go after the year
RETENTION = Retention(messages=365, calls=365, sends=365)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the year


def sqlite_year(spec: YearSpec, cache_dir: Path, *, use_cache: bool) -> tuple[Path, dict[str, Any]]:
    """The generated year as a SQLite file: from the cache when it holds this size and seed
    (its sidecar JSON written last marks it complete), else generated now (and cached)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = cache_dir / f"{spec.key}.sqlite3", cache_dir / f"{spec.key}.json"
    if use_cache and path.is_file() and meta_path.is_file():
        meta: dict[str, Any] = json.loads(meta_path.read_text("utf-8"))
        _say(f"records: year cached in {path} ({meta['counts']['calls']:,} calls): generation skipped")
        # Made by an earlier schema? Migrated forward in place, as an upgrade would (a new
        # migration backfills what it adds from what is there).
        before, after = asyncio.run(_migrate(path))
        if before != after:
            _say(f"records: cached year migrated from revision {before} to {after}")
        return path, {**meta, "cached": True, "migrated": [before, after] if before != after else None}
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    t0 = time.perf_counter()

    asyncio.run(_migrate(partial))
    _say(f"records: generating {spec.calls:,} calls and {spec.threads:,} threads into {partial} ...")
    loaded = load_sqlite(str(partial), spec, log=_say)
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.replace(path)
    meta = {**loaded, "generated_s": round(time.perf_counter() - t0, 1), "spec": asdict(spec)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _say(f"records: year generated and loaded into SQLite in {meta['generated_s']} s (cached for the next run)")
    return path, {**meta, "cached": False}


async def _migrate(path: Path) -> tuple[str | None, str | None]:
    """Migrate the SQLite file at `path` to this release's head: (revision before, after)."""
    store = RecordsStore(f"sqlite:///{path}")
    try:
        before = (await store.status()).current
        return before, (await store.migrate()).current
    finally:
        await store.close()


# ------------------------------------------------------------------------------ figure 1: the report


async def _raw_answer_rate(engine: AsyncEngine, dialect: str, since: str, until: str) -> list[RateRow]:
    """The baseline: the report's rows from the raw calls (two GROUP BYs over `calls`)."""
    from gateway.records.reports import NONE_KEY, TOTAL

    counted = (calls.c.direction == "outbound", calls.c.party_kind == "mobile")
    in_period = (calls.c.day >= since, calls.c.day <= until)
    answered = case((calls.c.disposition == "answered", 1), else_=0)
    ring: Any = literal_column(RING_EXPR[dialect])
    counts_q = (
        select(calls.c.department, func.count(), func.sum(answered))
        .where(*counted, *in_period)
        .group_by(calls.c.department)
    )
    ring_q = (
        select(calls.c.department, ring, func.count())
        .where(*counted, *in_period, calls.c.disposition == "answered")
        .group_by(calls.c.department, ring)
    )
    async with engine.connect() as conn:
        counts = [(str(d) or NONE_KEY, int(n), int(a or 0)) for d, n, a in (await conn.execute(counts_q)).all()]
        hists: dict[str, dict[int, int]] = {}
        for d, s, n in (await conn.execute(ring_q)).all():
            hists.setdefault(str(d) or NONE_KEY, {})[int(s)] = int(n)
    total: dict[int, int] = {}
    for h in hists.values():
        for s, n in h.items():
            total[s] = total.get(s, 0) + n
    rows = [RateRow.of(k, n, a, median_from_histogram(hists.get(k, {}))) for k, n, a in sorted(counts)]
    rows.append(
        RateRow.of(TOTAL, sum(r.calls for r in rows), sum(r.answered for r in rows), median_from_histogram(total))
    )
    return rows


def _rows_key(rows: list[RateRow]) -> dict[str, tuple[int, int, float | None]]:
    return {r.key: (r.calls, r.answered, r.median_ring_s) for r in rows}


async def report_figure(store: RecordsStore, runs: int) -> dict[str, Any]:
    """The year's answer-rate report by department: `runs` timed runs (the first on a cold
    connection pool), then the raw GROUP BY once; both must agree."""
    from gateway.records.reports import answer_rate

    async with store.engine.connect() as conn:  # the pool's first connection, not timed
        await conn.execute(select(1))
    seconds: list[float] = []
    rows: list[RateRow] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = await answer_rate(store.engine, YEAR[0], YEAR[1], by="department")
        seconds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    daily = await answer_rate(store.engine, YEAR[0], YEAR[1], by="department", monthly=False)
    daily_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = await _raw_answer_rate(store.engine, store.dialect, *YEAR)
    raw_s = time.perf_counter() - t0
    got, want, days = _rows_key(rows), _rows_key(raw), _rows_key(daily)
    mismatches = [
        {"key": k, "rollups": got.get(k), "daily_rollups": days.get(k), "raw": want.get(k)}
        for k in sorted(set(got) | set(want) | set(days))
        if not got.get(k) == days.get(k) == want.get(k)
    ]
    total = rows[-1] if rows else None
    return {
        "seconds_runs": [round(s, 4) for s in seconds],
        "seconds": round(statistics.median(seconds), 4),
        "daily_rollups_seconds": round(daily_s, 4),
        "raw_seconds": round(raw_s, 3),
        "ratio_raw_to_rollups": round(raw_s / statistics.median(seconds), 1) if seconds else None,
        "rows": len(rows),
        "total": {"calls": total.calls, "answered": total.answered, "rate": round(total.rate or 0, 4)} if total else {},
        "goal_s": GOAL_REPORT_S,
        "ok": statistics.median(seconds) <= GOAL_REPORT_S,
        "mismatches": mismatches[:10],
        "counts_ok": not mismatches and len(rows) > 1,
    }


# ------------------------------------------------------------------------------ figure 2: writes


def _plain_copy() -> Table:
    """`calls` again, same columns and indexes, for the plain INSERT baseline."""
    md = MetaData()
    return Table(
        "bench_calls_plain",
        md,
        *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in calls.columns),
        Index("ix_bench_calls_plain_day_department", "day", "department"),
        Index("ix_bench_calls_plain_ended_at", "ended_at"),
    )


def _plain_row(f: CallFact) -> dict[str, Any]:
    row = {name: getattr(f, name) for name in f.__slots__}
    row["id"] = f.key
    row["day"] = seoul_day(f.started_at).isoformat()
    return row


async def _rollup_sums(engine: AsyncEngine, since: str) -> tuple[int, ...]:
    """Calls, answered, ring-histogram answered in the daily roll-ups from day `since` on,
    then the same three from the monthly roll-ups from `since`'s month on."""
    ad, rd, am, rm = answer_daily, ring_daily, answer_monthly, ring_monthly
    zero = func.coalesce
    queries = (
        select(zero(func.sum(ad.c.calls), 0), zero(func.sum(ad.c.answered), 0)).where(ad.c.day >= since),
        select(zero(func.sum(rd.c.answered), 0)).where(rd.c.day >= since),
        select(zero(func.sum(am.c.calls), 0), zero(func.sum(am.c.answered), 0)).where(am.c.month >= since[:7]),
        select(zero(func.sum(rm.c.answered), 0)).where(rm.c.month >= since[:7]),
    )
    out: list[int] = []
    async with engine.connect() as conn:
        for query in queries:
            out += [int(v) for v in (await conn.execute(query)).one()]
    return tuple(out)


async def write_figure(store: RecordsStore, spec: YearSpec, n: int, batch: int) -> dict[str, Any]:
    facts = fresh_call_facts(spec, n, first=WRITE_FIRST_DAY)
    batches = [facts[i : i + batch] for i in range(0, n, batch)]
    plain = _plain_copy()
    async with store.engine.begin() as conn:
        await conn.run_sync(plain.metadata.create_all)
    since = WRITE_FIRST_DAY.isoformat()
    before = await _rollup_sums(store.engine, since)
    store_s = plain_s = 0.0
    new = 0
    try:
        for chunk in batches:  # interleaved: both see the same moments of a shared machine
            t0 = time.perf_counter()
            counts = await store.write(chunk)
            store_s += time.perf_counter() - t0
            new += counts.calls
            t0 = time.perf_counter()
            async with store.engine.begin() as conn:
                await conn.execute(insert(plain), [_plain_row(f) for f in chunk])
            plain_s += time.perf_counter() - t0
        after = await _rollup_sums(store.engine, since)
        again = await store.write(batches[0])
        after_again = await _rollup_sums(store.engine, since)
        async with store.engine.connect() as conn:
            stored = int(
                (await conn.execute(select(func.count()).select_from(calls).where(calls.c.day >= since))).scalar_one()
            )
            plain_rows = int((await conn.execute(select(func.count()).select_from(plain))).scalar_one())
    finally:
        async with store.engine.begin() as conn:
            await conn.run_sync(plain.metadata.drop_all)
    counted = [f for f in facts if f.direction == "outbound" and f.party_kind == "mobile"]
    answered = sum(f.disposition == "answered" for f in counted)
    daily = (before[0] + len(counted), before[1] + answered, before[2] + answered)
    expected = (*daily, *daily)  # the monthly roll-ups are the daily ones summed (fresh months only)
    problems = []
    if new != n or stored != n:
        problems.append(f"{n} calls written, {new} counted new, {stored} rows found")
    if plain_rows != n:
        problems.append(f"baseline table holds {plain_rows} of {n}")
    if after != expected:
        problems.append(f"roll-ups (calls, answered, ring; daily then monthly) {after}, expected {expected}")
    if again.calls != 0 or again.duplicates != len(batches[0]) or after_again != after:
        problems.append(f"rewriting a batch changed something: {again}, roll-ups {after_again}")
    per_s = n / store_s if store_s else 0.0
    plain_per_s = n / plain_s if plain_s else 0.0
    return {
        "calls": n,
        "batch": batch,
        "seconds": round(store_s, 3),
        "calls_per_s": round(per_s),
        "plain_seconds": round(plain_s, 3),
        "plain_calls_per_s": round(plain_per_s),
        "ratio_to_plain": round(per_s / plain_per_s, 3) if plain_per_s else None,
        "rollup_rows_counted": len(counted),
        "goal_per_s": GOAL_WRITES_PER_S,
        "ok": per_s >= GOAL_WRITES_PER_S,
        "problems": problems,
        "counts_ok": not problems,
    }


# ------------------------------------------------------------------------------ figure 3: the purge


def purge_now(day_index: int) -> float:
    """A purge time at which, with `RETENTION`, the year's days before `day_index` have expired:
    03:30 Seoul, 365 days after the last of them."""
    return day_start(FIRST_DAY + timedelta(days=day_index + 365)) + 3.5 * 3600


def later_weekdays(after: int) -> list[int]:
    """Indexes of the year's working days after day `after` (what the intake rounds purge)."""
    return [i for i in range(after + 1, DAYS) if day_kind(FIRST_DAY + timedelta(days=i)) == "weekday"]


async def _purge_expectation(engine: AsyncEngine, now: float) -> dict[str, int]:
    from gateway.records.retention import SQL_KINDS

    cutoffs = plan_purge(RETENTION, now)
    out = {}
    async with engine.connect() as conn:
        for kind, table, column, retention_kind in SQL_KINDS:
            cut = float(getattr(cutoffs, retention_kind))
            out[kind] = int(
                (await conn.execute(select(func.count()).select_from(table).where(table.c[column] < cut))).scalar_one()
            )
    return out


async def purge_figure(store: RecordsStore) -> dict[str, Any]:
    from gateway.records.retention import run_purge

    # The year starts on a holiday (1 January): purged first, untimed, so that the timed purge
    # removes a full weekday (2 January), as the daily purge does on most days.
    await run_purge(store.engine, None, RETENTION, purge_now(1))
    now = purge_now(2)
    cutoff = plan_purge(RETENTION, now).calls
    expected = await _purge_expectation(store.engine, now)
    rollups_before = await _rollup_sums(store.engine, YEAR[0])
    async with store.engine.connect() as conn:
        purges_before = int((await conn.execute(select(func.count()).select_from(purges))).scalar_one())
    t0 = time.perf_counter()
    done = await run_purge(store.engine, None, RETENTION, now)
    seconds = time.perf_counter() - t0
    # (the staff access-record chains are purged too: the generated year has none)
    got = {d.kind: d.count for d in done if d.kind not in ("access_log", "accounts_log") or d.count}
    chains = len(done) - len(got)
    left = await _purge_expectation(store.engine, now)
    rollups_after = await _rollup_sums(store.engine, YEAR[0])
    async with store.engine.connect() as conn:
        purges_after = int((await conn.execute(select(func.count()).select_from(purges))).scalar_one())
    problems = []
    if got != expected:
        problems.append(f"purged {got}, expected {expected}")
    if any(left.values()):
        problems.append(f"rows older than the cutoff left: {left}")
    if rollups_after != rollups_before:
        problems.append(f"roll-ups changed: {rollups_before} -> {rollups_after}")
    if purges_after - purges_before != len(expected) + chains:
        problems.append(f"{purges_after - purges_before} purges recorded, expected {len(expected) + chains}")
    if not expected.get("calls"):
        problems.append("no call had expired: the figure measured nothing")
    return {
        "day": (seoul_day(cutoff) - timedelta(days=1)).isoformat(),
        "cutoff_day": seoul_day(cutoff).isoformat(),
        "deleted": got,
        "rows": sum(got.values()),
        "seconds": round(seconds, 3),
        "goal_s": GOAL_PURGE_S,
        "ok": seconds <= GOAL_PURGE_S,
        "detail": {d.kind: d.detail for d in done},
        "problems": problems,
        "counts_ok": not problems,
    }


# ------------------------------------------------------------------------------ per database


async def database_figures(
    store: RecordsStore, spec: YearSpec, *, report_runs: int, write_calls: int, batch: int
) -> dict[str, Any]:
    await store.ready(create_if_empty=False)
    out: dict[str, Any] = {"dialect": store.dialect}
    _say(f"records [{store.dialect}]: answer-rate report ...")
    out["report"] = await report_figure(store, report_runs)
    _say(f"records [{store.dialect}]: writes ...")
    out["write"] = await write_figure(store, spec, write_calls, batch)
    _say(f"records [{store.dialect}]: purge ...")
    out["purge"] = await purge_figure(store)
    return out


def run(
    *,
    calls: int,
    threads: int,
    seed: int = 15,
    dbs: tuple[str, ...] = ("sqlite", "postgresql"),
    report_runs: int = 3,
    write_calls: int = 50_000,
    batch: int = 1000,
    intake_seconds: float = 4.0,
    intake_rounds: int = 2,
    intake_concurrency: int = 8,
    latency_runs: int = 3,
    latency_seconds: float = 10.0,
    latency_rate: float = 500.0,
    cache_dir: Path = RESULTS_DIR,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Measure (see the module doc); returns the JSON section `records`."""
    spec = YearSpec(calls=calls, threads=threads, seed=seed)
    section: dict[str, Any] = {"spec": asdict(spec), "databases": {}}
    intake = (intake_seconds, intake_rounds, intake_concurrency)
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = Path()
    if dbs:
        source, section["year"] = sqlite_year(spec, cache_dir / "records-year", use_cache=use_cache)
    with tempfile.TemporaryDirectory(prefix="records-bench-", dir=cache_dir) as tmp:
        for db in dbs:
            began = time.perf_counter()
            try:  # one database failing must not hide the other's figures
                result = _database_run(
                    db,
                    source,
                    spec,
                    Path(tmp),
                    report_runs=report_runs,
                    write_calls=write_calls,
                    batch=batch,
                    intake=intake,
                )
            except Exception as exc:
                _say(f"records [{db}]: FAILED: {type(exc).__name__}: {exc}")
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = round(time.perf_counter() - began, 1)
            section["databases"][db] = result
        if latency_runs > 0:
            from ops.bench.records_latency import latency_comparison

            _say("records: lettering latency with and without records ...")
            try:
                section["latency"] = latency_comparison(
                    runs=latency_runs, seconds=latency_seconds, rate=latency_rate, tmp=Path(tmp)
                )
            except Exception as exc:
                section["latency"] = {"error": f"{type(exc).__name__}: {exc}", "counts_ok": False}
    section["counts_ok"] = all(_db_ok(r) for r in section["databases"].values()) and section.get("latency", {}).get(
        "counts_ok", True
    )
    return section


def _database_run(
    db: str,
    source: Path,
    spec: YearSpec,
    tmp: Path,
    *,
    report_runs: int,
    write_calls: int,
    batch: int,
    intake: tuple[float, int, int],
) -> dict[str, Any]:
    if db == "postgresql":
        return _postgresql_run(
            source, spec, report_runs=report_runs, write_calls=write_calls, batch=batch, intake=intake
        )
    work = tmp / "year.sqlite3"
    t0 = time.perf_counter()
    shutil.copyfile(source, work)  # the cache stays as generated: the figures change data
    _say(f"records [sqlite]: working copy made in {time.perf_counter() - t0:.1f} s")
    url = f"sqlite:///{work}"
    result = _sqlite_run(url, spec, report_runs, write_calls, batch)
    intake_seconds, intake_rounds, intake_concurrency = intake
    if intake_rounds > 0:
        result["intake"] = _intake(url, _step_seconds(intake_seconds, result), intake_rounds, intake_concurrency)
    return result


def _db_ok(result: dict[str, Any]) -> bool:
    if "error" in result:
        return False
    return all(result[k]["counts_ok"] for k in ("report", "write", "purge", "intake") if k in result)


def _sqlite_run(url: str, spec: YearSpec, report_runs: int, write_calls: int, batch: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        store = RecordsStore(url)
        try:
            return await database_figures(store, spec, report_runs=report_runs, write_calls=write_calls, batch=batch)
        finally:
            await store.close()

    return asyncio.run(go())


def _postgresql_run(
    source: Path,
    spec: YearSpec,
    *,
    report_runs: int,
    write_calls: int,
    batch: int,
    intake: tuple[float, int, int],
) -> dict[str, Any]:
    from gateway.sim.pgproc import PostgresProcess

    with PostgresProcess() as pg:
        url = pg.create_database("records_year")

        async def go() -> dict[str, Any]:
            store = RecordsStore(url)
            try:
                await store.migrate()
                _say("records [postgresql]: copying the year from the SQLite file ...")
                t0 = time.perf_counter()
                loaded = await load_postgresql(url, str(source), log=_say)
                loaded["seconds"] = round(time.perf_counter() - t0, 1)
                _say(f"records [postgresql]: year loaded in {loaded['seconds']} s")
                figures = await database_figures(
                    store, spec, report_runs=report_runs, write_calls=write_calls, batch=batch
                )
                return {"load": loaded, **figures}
            finally:
                await store.close()

        result = asyncio.run(go())
        intake_seconds, intake_rounds, intake_concurrency = intake
        if intake_rounds > 0:
            seconds = _step_seconds(intake_seconds, result)
            result["intake"] = _intake(url, seconds, intake_rounds, intake_concurrency)
    return result


def _step_seconds(asked: float, result: dict[str, Any]) -> float:
    """A webhook step long enough to hold a whole purge: 2 x the purge figure's time + 2 s (a
    purge in the other process while webhooks take the cores ran up to 6 x slower)."""
    return max(asked, round(2 * float(result["purge"]["seconds"]) + 2.0, 1))


def _intake(url: str, seconds: float, rounds: int, concurrency: int) -> dict[str, Any]:
    from ops.bench.records_intake import intake_during_purge

    _say(f"records: webhooks with and without a purge running ({rounds} rounds of {seconds:g} s) ...")
    return intake_during_purge(url, seconds=seconds, rounds=rounds, concurrency=concurrency)


# ------------------------------------------------------------------------------ the table


def _n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"


def _row(figure: str, value: str, goal: str, baseline: str, met: bool | None) -> dict[str, Any]:
    return {"figure": figure, "value": value, "goal": goal, "baseline": baseline, "met": met}


def _failed(figure: str, error: str) -> dict[str, Any]:
    return _row(figure, f"FAILED: {error}", "-", "-", False)


def _year_row(section: dict[str, Any]) -> dict[str, Any]:
    spec, year = section["spec"], section.get("year", {})
    counts = ", ".join(f"{k} {v:,}" for k, v in year.get("counts", {}).items())
    how = "cached file reused" if year.get("cached") else f"generated and loaded in {year.get('generated_s')} s"
    if year.get("migrated"):
        how += ", migrated from revision {} to {}".format(*year["migrated"])
    return _row(
        f"records: the year on SQLite ({how})",
        f"{spec['calls']:,} calls, {spec['threads']:,} threads: {counts}",
        "-",
        f"load steps {year.get('timings_s')} s",
        None,
    )


def _report_row(db: str, rep: dict[str, Any]) -> dict[str, Any]:
    runs = ", ".join(f"{s:.3f}" for s in rep["seconds_runs"])
    total = rep["total"]
    same = "same rows" if not rep["mismatches"] else f"MISMATCH {rep['mismatches'][:2]}"
    return _row(
        f"records [{db}]: answer-rate report, one year by department (median of {len(rep['seconds_runs'])})",
        f"{rep['seconds']:.3f} s (runs {runs}); {rep['rows']} rows, "
        f"total {total.get('calls', 0):,} calls, rate {total.get('rate', 0):.1%}",
        f"≤ {GOAL_REPORT_S:g} s",
        f"GROUP BY over raw calls {rep['raw_seconds']:.2f} s ({rep['ratio_raw_to_rollups']} × slower); "
        f"daily roll-ups only {rep['daily_rollups_seconds']:.3f} s; {same}",
        rep["ok"] if rep["counts_ok"] else False,
    )


def _write_row(db: str, w: dict[str, Any]) -> dict[str, Any]:
    checked = "rows, roll-ups and a rewrite checked" if w["counts_ok"] else "; ".join(w["problems"])
    return _row(
        f"records [{db}]: RecordsStore.write, {w['calls']:,} fresh calls, batches of {w['batch']:,}",
        f"{_n(w['calls_per_s'])} calls/s ({w['seconds']:.2f} s)",
        f"≥ {GOAL_WRITES_PER_S:,.0f} calls/s",
        f"plain executemany INSERT {_n(w['plain_calls_per_s'])} calls/s ({w['ratio_to_plain']} ×); {checked}",
        w["ok"] if w["counts_ok"] else False,
    )


def _purge_row(db: str, p: dict[str, Any]) -> dict[str, Any]:
    deleted = ", ".join(f"{k} {v:,}" for k, v in p["deleted"].items())
    checked = "exactly the expired rows gone, roll-ups kept, purges recorded"
    return _row(
        f"records [{db}]: purge of one expired day ({p['day']}, a working day)",
        f"{p['seconds']:.2f} s for {p['rows']:,} rows ({deleted})",
        f"≤ {GOAL_PURGE_S:g} s",
        checked if p["counts_ok"] else "; ".join(p["problems"]),
        p["ok"] if p["counts_ok"] else False,
    )


def _intake_row(db: str, i: dict[str, Any]) -> dict[str, Any]:
    purges_s = ", ".join(f"{s:.2f}" for s in i["purge_seconds"])
    checked = "every accepted message stored" if i["counts_ok"] else "; ".join(i["problems"])
    checked += "".join(f"; {note}" for note in i.get("notes", []))
    return _row(
        f"records [{db}]: signed SMS webhooks at {i['concurrency']} in flight during a one-day purge "
        f"(median ratio of {i['rounds']} rounds)",
        f"p99 {_n(i['with_p99_ms'])} ms, {_n(i['with_per_s'])}/s (purges took {purges_s} s)",
        f"p99 ≤ {GOAL_P99_RATIO:g} × without (noise: shared cores)",
        f"without a purge p99 {_n(i['without_p99_ms'])} ms, {_n(i['without_per_s'])}/s; "
        f"ratio {i['p99_ratio']} × (rounds {i['p99_ratio_rounds']}); {checked}",
        i["ok"] if i["counts_ok"] else False,
    )


def _latency_row(lat: dict[str, Any]) -> dict[str, Any]:
    on_runs = ", ".join(_n(x) for x in lat["on_p99_runs_ms"])
    off_runs = ", ".join(_n(x) for x in lat["off_p99_runs_ms"])
    problems = "" if lat["counts_ok"] else "; " + "; ".join(lat["problems"])
    return _row(
        f"records: lettering p99 @ {lat['rate']:g} calls/s, records on (median of {lat['runs']} interleaved runs)",
        f"p99 {_n(lat['on_p99_ms'])} ms (runs {on_runs}); {lat['rows_written']:,} calls rows "
        f"for {lat['calls_ended']:,} calls",
        f"ratio ≤ {GOAL_P99_RATIO:g} (noise: shared cores, runs differ by ms)",
        f"records off p99 {_n(lat['off_p99_ms'])} ms (runs {off_runs}); ratio {lat['ratio']} ×{problems}",
        lat["ok"] if lat["counts_ok"] else False,
    )


def figures(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows `python -m ops.bench` prints: figure, value, goal, baseline, met."""
    rows = [_year_row(section)] if "year" in section else []
    for db, r in section["databases"].items():
        if "error" in r:
            rows.append(_failed(f"records [{db}]", r["error"]))
            continue
        rows += [_report_row(db, r["report"]), _write_row(db, r["write"]), _purge_row(db, r["purge"])]
        if "intake" in r:
            rows.append(_intake_row(db, r["intake"]))
    lat = section.get("latency")
    if lat:
        rows.append(_failed("records: lettering latency", lat["error"]) if "error" in lat else _latency_row(lat))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    from ops.bench.__main__ import markdown as table

    return table(rows)


# ------------------------------------------------------------------------------ command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.bench.records", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300,000 calls, 20,000 threads, shorter runs")
    p.add_argument(
        "--db", default="sqlite,postgresql", help="databases, comma-separated (sqlite,postgresql; none: latency only)"
    )
    p.add_argument("--calls", type=int, help="calls in the year (15000000, quick 300000)")
    p.add_argument("--threads", type=int, help="message threads in the year (200000, quick 20000)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--write-calls", type=int, help="fresh calls for the write figure (50000, quick 10000)")
    p.add_argument("--batch", type=int, default=1000, help="facts per RecordsStore.write (1000)")
    p.add_argument("--report-runs", type=int, default=3)
    p.add_argument("--intake-seconds", type=float, help="length of each webhook step (4, quick 2)")
    p.add_argument("--intake-rounds", type=int, help="without/with purge rounds (2, quick 1)")
    p.add_argument("--latency-runs", type=int, help="runs of each of records off/on at 500/s (3, quick 1; 0 skips)")
    p.add_argument("--latency-seconds", type=float, help="length of each latency run (10, quick 3)")
    p.add_argument("--latency-rate", type=float, default=500.0, help="new calls/s of the latency runs (500)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="generate the year even when cached")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results directory (default {RESULTS_DIR})")
    return p


def _pick(value: Any, full: Any, quick: Any, is_quick: bool) -> Any:
    return value if value is not None else (quick if is_quick else full)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    q = bool(args.quick)
    dbs = tuple(d.strip() for d in args.db.split(",") if d.strip() and d.strip() != "none")
    if set(dbs) - {"sqlite", "postgresql"} or (not dbs and args.db.strip() != "none"):
        raise ValueError(f"--db: sqlite, postgresql or none (got {args.db!r})")
    return run(
        calls=_pick(args.calls, 15_000_000, 300_000, q),
        threads=_pick(args.threads, 200_000, 20_000, q),
        seed=args.seed,
        dbs=dbs,
        report_runs=args.report_runs,
        write_calls=_pick(args.write_calls, 50_000, 10_000, q),
        batch=args.batch,
        intake_seconds=_pick(args.intake_seconds, 4.0, 2.0, q),
        intake_rounds=_pick(args.intake_rounds, 2, 1, q),
        latency_runs=_pick(args.latency_runs, 3, 1, q),
        latency_seconds=_pick(args.latency_seconds, 10.0, 3.0, q),
        latency_rate=args.latency_rate,
        cache_dir=args.out,
        use_cache=args.cache,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ops.bench.ami_ingest.__main__ import setup_logging

    setup_logging("WARNING")
    started = time.time()
    try:
        section = run_from_args(args)
    except ValueError as exc:
        print(f"ops.bench.records: {exc}", file=sys.stderr)
        return 2
    section["meta"] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "quick": args.quick,
    }
    table = markdown(figures(section))
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    for name in (f"records-{stamp}", "records-latest"):
        (args.out / f"{name}.json").write_text(json.dumps(section, indent=2, ensure_ascii=False) + "\n", "utf-8")
        (args.out / f"{name}.md").write_text(
            f"# Records benchmark, {section['meta']['started_at']}\n\n{table}", "utf-8"
        )
    print(f"results: {args.out / f'records-{stamp}.json'} ({section['meta']['duration_s']} s)", file=sys.stderr)
    return 0 if section["counts_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
