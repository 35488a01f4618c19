"""Lettering p99 at 500 calls/s with records on and off, in the same run.

`ops.bench.ami_ingest`'s latency harness (a real `Gateway`, the helper's PBX and fake carrier),
run alternately:

* **off**: the gateway's pipeline and intake get `NoRecords()` (nothing recorded);
* **on**: the gateway as deployed: the pipeline records each ended call into its
  `StreamRecordSink`, which XADDs batches to `gw:records` off the hot path; a `RecordsWriter`
  in another process (as in the worker) drains the stream into a fresh SQLite file.

The figure is the median p99 of the "on" runs over the median p99 of the "off" runs (goal
<= 1.0: records cost the lettering nothing measurable). After each "on" run, once the writer
has drained the stream, the SQLite file must hold one `calls` row per call the gateway ended,
and the emitter must have dropped nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import statistics
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app.gateway import Gateway


def writer_child(conn: Connection, redis_url: str, records_url: str) -> None:
    """The worker's part: a RecordsWriter from `gw:records` into `records_url` until told to
    finish, then drain what is left and report its counters."""
    asyncio.run(_writer_loop(conn, redis_url, records_url))


async def _writer_loop(conn: Connection, redis_url: str, records_url: str) -> None:
    import redis.asyncio as aioredis

    from gateway.infra.rediskeys import RECORDS_STREAM
    from gateway.records.store import RecordsStore
    from gateway.records.writer import RecordsWriter

    store = RecordsStore(records_url)
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        await store.migrate()
        writer = RecordsWriter(client, store, batch_size=1000, block_ms=200)
        await writer.ensure_group()
        writer.start()
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # "finish": the gateway has stopped (its emitter flushed)
        for _ in range(600):  # up to 60 s for the writer to empty the stream
            if int(await client.xlen(RECORDS_STREAM)) == 0:
                break
            await asyncio.sleep(0.1)
        await writer.stop(5)
        conn.send({**writer.status(), "stream_left": int(await client.xlen(RECORDS_STREAM))})
    finally:
        await client.aclose()
        await store.close()


def _records_on(redis_url: str, path: Path) -> Any:
    """The "on" hook: a writer process around the gateway's run; then the rows are counted."""

    @contextlib.asynccontextmanager
    async def hook(gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
        import sqlite3

        info: dict[str, Any] = {}
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=writer_child, args=(child, redis_url, f"sqlite:///{path}"), daemon=True)
        proc.start()
        child.close()  # the child's death then ends recv() with EOFError, not a hang
        try:
            if await asyncio.to_thread(parent.recv) != "ready":
                raise RuntimeError("records writer did not start")
            yield info
            info["emitter"] = gateway.emitter.status() if gateway.emitter is not None else None
            parent.send("finish")
            info["writer"] = await asyncio.to_thread(parent.recv)
        finally:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
        db = sqlite3.connect(path)
        try:
            info["calls_rows"] = int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
            info["answer_daily_calls"] = int(
                db.execute("SELECT COALESCE(SUM(calls), 0) FROM answer_daily").fetchone()[0]
            )
        finally:
            db.close()

    return hook


def latency_comparison(*, runs: int, seconds: float, rate: float, tmp: Path) -> dict[str, Any]:
    """`runs` x (off, on), interleaved; see the module doc."""
    import uvloop

    from gateway.rules.lettering import load_rules
    from gateway.sim.redisproc import RedisProcess
    from ops.bench.ami_ingest.runner import RULES_DIR, Setup

    with RedisProcess() as redis_proc:
        setup = Setup.make(
            load_rules(RULES_DIR), redis_proc.url, redis_pid=redis_proc.proc.pid if redis_proc.proc else None
        )
        results = uvloop.run(_interleaved(setup, runs, seconds, rate, tmp))
    return _summary(results, rate)


async def _interleaved(setup: Any, runs: int, seconds: float, rate: float, tmp: Path) -> list[tuple[str, Any]]:
    from gateway.ports import NoRecords
    from ops.bench.ami_ingest.runner import latency_run

    out: list[tuple[str, Any]] = []
    for k in range(runs):
        off = await latency_run(setup, rate, seconds, index=2 * k, hold_ms=200, lead_ms=20, records=NoRecords())
        out.append(("off", off))
        path = tmp / f"latency-{k}.sqlite3"
        hook = _records_on(setup.redis_url, path)
        on = await latency_run(setup, rate, seconds, index=2 * k + 1, hold_ms=200, lead_ms=20, records_hook=hook)
        out.append(("on", on))
    return out


def _p99(run: Any) -> float | None:
    from ops.bench.ami_ingest.runner import percentile

    return round(percentile(run.latencies_ms, 99), 3) if run.latencies_ms else None


def _summary(results: list[tuple[str, Any]], rate: float) -> dict[str, Any]:
    off = [r for kind, r in results if kind == "off"]
    on = [r for kind, r in results if kind == "on"]
    off_p99 = [_p99(r) for r in off]
    on_p99 = [_p99(r) for r in on]
    problems: list[str] = []
    for kind, r in results:
        if r.letterings_received != r.calls or r.extra["calls_ended"] != r.calls:
            problems.append(
                f"{kind}: {r.letterings_received} letterings, {r.extra['calls_ended']} of {r.calls} calls ended"
            )
    rows = ended = 0
    for r in on:
        info = r.extra.get("records", {})
        rows += int(info.get("calls_rows", 0))
        ended += int(r.extra["calls_ended"])
        if info.get("calls_rows") != r.extra["calls_ended"]:
            problems.append(f"on: {info.get('calls_rows')} calls rows for {r.extra['calls_ended']} calls ended")
        emitter = info.get("emitter") or {}
        if emitter.get("dropped") or emitter.get("pending"):
            problems.append(f"on: emitter {emitter}")
    valid_off = [p for p in off_p99 if p is not None]
    valid_on = [p for p in on_p99 if p is not None]
    off_med = statistics.median(valid_off) if valid_off else None
    on_med = statistics.median(valid_on) if valid_on else None
    ratio = round(on_med / off_med, 3) if off_med and on_med else None
    return {
        "rate": rate,
        "runs": len(on),
        "off_p99_ms": off_med,
        "on_p99_ms": on_med,
        "off_p99_runs_ms": off_p99,
        "on_p99_runs_ms": on_p99,
        "ratio": ratio,
        "ok": ratio is not None and ratio <= 1.0,
        "rows_written": rows,
        "calls_ended": ended,
        "runs_detail": [
            {
                "records": kind,
                "p99_ms": _p99(r),
                "calls": r.calls,
                "letterings_received": r.letterings_received,
                "cpu": r.extra.get("cpu"),
                "records_info": r.extra.get("records"),
            }
            for kind, r in results
        ],
        "problems": problems,
        "counts_ok": not problems,
    }
