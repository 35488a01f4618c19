"""Intake during a purge: signed SMS webhooks' p99 while a one-day purge runs, and without.

The server is `ops.bench.inbound`'s: the real gateway app (`bench_gateway`, a private
redis-server) in this process on uvloop; the client is its load generator (`ops.bench.loadgen`)
in its own process, one concurrency for every step. Steps alternate without and with a purge:
when the load generator reports the end of a step that is followed by a "with" step, a purge
process (spawned and connected to the records database beforehand, as the worker that runs the
daily purge would be) starts purging the next day of the year. The purge process is not the
gateway's: in production the gateway only appends facts to Redis, the worker purges SQL, so
what a purge can take from intake here is CPU, disk and memory bandwidth on the shared host.

Checks: every step's requests answered 2xx, every accepted message found in Redis
(`inbound._count_stored`), every purge deleting a day's calls and finishing within its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.sim.redisproc import RedisProcess
from ops.bench.inbound import PROVIDER, ROOT, SECRET_ENV, _Collect, _count_stored, bench_gateway


def purge_child(conn: Connection, url: str) -> None:
    """The purging process: connect, say "ready", then purge at each time sent (None ends)."""
    asyncio.run(_purge_loop(conn, url))


async def _purge_loop(conn: Connection, url: str) -> None:
    from gateway.records.retention import run_purge
    from gateway.records.store import RecordsStore
    from ops.bench.records import RETENTION

    store = RecordsStore(url)
    try:
        await store.ready(create_if_empty=False)
        conn.send("ready")
        while True:
            now = await asyncio.to_thread(conn.recv)
            if now is None:
                return
            t0 = time.perf_counter()
            done = await run_purge(store.engine, None, RETENTION, float(now))
            conn.send({"seconds": time.perf_counter() - t0, "deleted": {d.kind: d.count for d in done}})
    finally:
        await store.close()


def intake_during_purge(url: str, *, seconds: float, rounds: int, concurrency: int) -> dict[str, Any]:
    """`rounds` pairs of webhook steps (without, with a purge of the next working day, and of
    the weekend or holidays before it); see the module doc."""
    import uvloop

    return uvloop.run(_measure(url, seconds, rounds, concurrency))


async def _measure(url: str, seconds: float, rounds: int, concurrency: int) -> dict[str, Any]:
    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer
    from ops.bench.records import later_weekdays, purge_now

    days = later_weekdays(1)  # the purge figure removed days 0 and 1: from 3 January on

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    purger = ctx.Process(target=purge_child, args=(child, url), daemon=True)
    purger.start()
    child.close()  # ours is not needed: the child's death then ends recv() with EOFError
    try:
        if await asyncio.to_thread(parent.recv) != "ready":
            raise RuntimeError("purge process did not start")
        with RedisProcess() as redis_proc:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(redis_proc.url)
            gateway = bench_gateway(redis_proc.url, _Collect())
            spec = gateway.config.inbound[PROVIDER]
            secret = gateway.environ[spec["signature_env"]]
            http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
            host, port = await http.start()
            purges: list[dict[str, Any]] = []
            try:
                gc.collect()
                gc.freeze()
                records = await _steps(
                    f"http://{host}:{port}/webhooks/sms/{PROVIDER}",
                    public_url=spec["public_url"],
                    secret=secret,
                    concurrency=concurrency,
                    steps=2 * rounds,
                    seconds=seconds,
                    start_purge=lambda k: parent.send(purge_now(days[k] + 1)),
                    purge_result=parent.recv,
                    purges=purges,
                )
                stored = await _count_stored(client, records)
            finally:
                await http.stop()
                await gateway.stop(drain_timeout=2)
                await client.aclose()
                gc.unfreeze()
    finally:
        with contextlib.suppress(OSError):
            parent.send(None)
        await asyncio.to_thread(purger.join, 30)
        if purger.is_alive():
            purger.kill()
    return _summary(records, purges, stored, concurrency, rounds)


async def _steps(
    url: str,
    *,
    public_url: str,
    secret: str,
    concurrency: int,
    steps: int,
    seconds: float,
    start_purge: Callable[[int], None],
    purge_result: Callable[[], dict[str, Any]],
    purges: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Run the load generator; start a purge when a "with" step (odd index) begins."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.bench.loadgen",
        "--url",
        url,
        "--public-url",
        public_url,
        "--secret-env",
        SECRET_ENV,
        "--steps",
        ",".join([str(concurrency)] * steps),
        "--seconds",
        str(seconds),
        "--run",
        "records",
        "--warmup",
        "0.5",
        cwd=ROOT,
        env={**os.environ, SECRET_ENV: secret},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out: list[dict[str, Any]] = []
    purging = False
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), seconds + 120)
            if not line:
                break
            record = json.loads(line)
            out.append(record)
            if purging:  # the "with" step just ended: its purge's result
                purges.append(await asyncio.to_thread(purge_result))
                purging = False
            index = sum(1 for r in out if r["event"] == "step")  # the step starting now
            if index < steps and index % 2 == 1:
                start_purge(len(purges))
                purging = True
    finally:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
    if await proc.wait() != 0 or sum(1 for r in out if r["event"] == "step") != steps:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}, {len(out)} records)")
    return out


def _summary(
    records: list[dict[str, Any]], purges: list[dict[str, Any]], stored: dict[str, Any], concurrency: int, rounds: int
) -> dict[str, Any]:
    steps = [r for r in records if r["event"] == "step"]
    pairs = [(steps[2 * i], steps[2 * i + 1]) for i in range(rounds)]
    ratios: list[float | None] = [
        round(w["p99_ms"] / wo["p99_ms"], 3) if wo["p99_ms"] and w["p99_ms"] else None for wo, w in pairs
    ]
    order = sorted(range(rounds), key=lambda i: r if (r := ratios[i]) is not None else float("inf"))
    median = order[(rounds - 1) // 2]
    without, with_purge = pairs[median]
    problems = []
    if stored["lost"] or stored["unexpected_extra"]:
        problems.append(f"{stored['lost']} accepted messages not in Redis, {stored['unexpected_extra']} extra")
    for s in steps:
        if s["errors"] or set(s["statuses"]) != {"200"}:
            problems.append(f"step answered {s['statuses']}, errors {s['errors']}")
    if len(purges) != rounds or any(not p["deleted"].get("calls") for p in purges):
        problems.append(f"purges: {purges}")
    # Not a failure, but the "with" step then measured only part of the purge: said in the notes.
    outlasted = [round(p["seconds"], 2) for p in purges if p["seconds"] > steps[0]["seconds"]]
    ratio = ratios[median]
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "without_p99_ms": without["p99_ms"],
        "with_p99_ms": with_purge["p99_ms"],
        "without_per_s": without["ok_per_s"],
        "with_per_s": with_purge["ok_per_s"],
        "p99_ratio": ratio,
        "p99_ratio_rounds": ratios,
        "ok": ratio is not None and ratio <= 1.0,
        "purge_seconds": [round(p["seconds"], 3) for p in purges],
        "purged": [p["deleted"] for p in purges],
        "steps": steps,
        "stored": stored,
        "notes": [f"purge(s) of {outlasted} s outlasted the {steps[0]['seconds']:.1f} s step"] if outlasted else [],
        "problems": problems,
        "counts_ok": not problems,
    }
