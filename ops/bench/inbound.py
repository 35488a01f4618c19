"""Inbound SMS benchmark: signed webhooks/s and latency against the real gateway HTTP app.

Server side (this process, on uvloop as `gateway run`): either

* **bare**: an aiohttp app whose ``POST /webhooks/sms/{provider}`` reads the body and answers
  200 ``{"status": "accepted"}`` (the baseline: what aiohttp alone costs), or
* **gateway**: the real app of `gateway run`, ``make_app(gateway.health, gateway.reports,
  gateway.http_routes)`` (`gateway.app.httpapps`) served by `gateway.infra.http.HttpServer`,
  over a real `Gateway` (embedded default configuration, ``rules/``, a private ``redis-server``,
  dramatiq broker on it, sandbox SMS/Alimtalk providers; no PBX connected). Each accepted
  message is verified, parsed, routed by ``rules/routing.yaml``, stored durably (one Lua step),
  its queue notification and its auto-reply SMS are enqueued (dramatiq), as in production.

Client side: `ops.bench.loadgen` in its own process, the same for both variants, run through the
same concurrency steps. After the gateway run every 2xx ``accepted`` answer is looked for in
Redis: the idempotency key ``gw:in:<provider>:<message id>`` of each message and the entries of
each queue's inbox stream ``gw:inbox:<queue>`` must account for all of them (lost = accepted
answers without a stored message; must be 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.infra.rediskeys import inbound_key, inbox_key
from gateway.sim.redisproc import RedisProcess
from ops.bench.cpu import CpuWindow

if TYPE_CHECKING:
    from gateway.app.gateway import Gateway

ROOT = Path(__file__).resolve().parents[2]
GOAL_PER_S = 3000.0
GOAL_RATIO = 0.3
GOAL_P99_MS = 50.0
PROVIDER = "sandbox-sms"
SECRET_ENV = "BENCH_INBOUND_SECRET"


async def _bare_app() -> Any:
    from aiohttp import web

    async def inbound(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted", "thread": "", "queue": "bare"})

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_post("/webhooks/sms/{provider}", inbound)
    return app


class _Collect:
    """A `DecisionSink` that only counts (the intake reports every message to it)."""

    def __init__(self) -> None:
        self.count = 0

    def decision(self, record: Any) -> None:
        self.count += 1


async def _loadgen(
    url: str,
    public_url: str,
    secret: str,
    steps: list[int],
    *,
    seconds: float,
    run: str,
    warmup: float,
    redis_pid: int | None = None,
) -> list[dict[str, Any]]:
    """The load generator's records: the warm-up first (when `warmup` > 0), then one per step,
    each with the CPU use of the server, the load generator, Redis and other processes."""
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
        ",".join(map(str, steps)),
        "--seconds",
        str(seconds),
        "--run",
        run,
        "--warmup",
        str(warmup),
        cwd=ROOT,
        env={**os.environ, SECRET_ENV: secret},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out: list[dict[str, Any]] = []
    pids = {"server": os.getpid(), "loadgen": proc.pid, "redis": redis_pid}
    try:
        while True:
            with CpuWindow(pids) as cpu:  # from one record to the next: about one step
                line = await asyncio.wait_for(proc.stdout.readline(), seconds + 120)
            if not line:
                break
            out.append({**json.loads(line), "cpu": cpu.summary()})
    finally:
        with contextlib.suppress(ProcessLookupError):
            if proc.returncode is None:
                await asyncio.wait_for(proc.wait(), 30)
    if await proc.wait() != 0 or len(out) != len(steps) + (warmup > 0):
        raise RuntimeError(f"load generator failed (exit {proc.returncode}, {len(out)} of {len(steps)} steps)")
    return out


async def _run_bare(steps: list[int], seconds: float, warmup: float) -> list[dict[str, Any]]:
    from gateway.infra.http import HttpServer

    http = HttpServer(await _bare_app(), "127.0.0.1", 0)
    host, port = await http.start()
    try:
        gc.collect()
        gc.freeze()
        return await _loadgen(
            f"http://{host}:{port}/webhooks/sms/{PROVIDER}",
            "http://bench/",
            "",
            steps,
            seconds=seconds,
            run="bare",
            warmup=warmup,
        )
    finally:
        await http.stop()
        gc.unfreeze()


def bench_gateway(
    redis_url: str, sink: Any, *, redis_timeout_s: float | None = None, min_replicas_ack: int = 0
) -> Gateway:
    """The gateway the inbound figures measure: the embedded default configuration, ``rules/``,
    the dramatiq broker on `redis_url`, sandbox SMS/Alimtalk providers, no PBX (also what
    `ops.bench.instructions` counts). `min_replicas_ack` > 0: durable means acknowledged by that
    many replicas (`redis.min_replicas_ack`; `ops.bench.replica_ack`)."""
    import dataclasses

    from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
    from gateway.app.gateway import Gateway, Overrides
    from gateway.app.replay import demo_environ
    from gateway.infra.config import load_config
    from ops.bench.ami_ingest.runner import RULES_DIR

    config = dataclasses.replace(load_config(None), min_replicas_ack=min_replicas_ack)
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES_DIR,
        queue_namespace="bench",
        redis_timeout_s=redis_timeout_s,
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={PROVIDER: SandboxSms(PROVIDER)},
    )
    return Gateway(config, sink, environ=demo_environ(config, os.environ), overrides=over)


async def _run_gateway(
    redis_url: str, steps: list[int], seconds: float, warmup: float, redis_pid: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import redis.asyncio as aioredis

    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer

    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    sink = _Collect()
    gateway = bench_gateway(redis_url, sink)
    spec = gateway.config.inbound[PROVIDER]
    secret = gateway.environ[spec["signature_env"]]
    http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
    host, port = await http.start()
    try:
        gc.collect()
        gc.freeze()  # as `gateway run` does once it is built
        records = await _loadgen(
            f"http://{host}:{port}/webhooks/sms/{PROVIDER}",
            spec["public_url"],
            secret,
            steps,
            seconds=seconds,
            run="gw",
            warmup=warmup,
            redis_pid=redis_pid,
        )
        check = await _count_stored(client, records)  # the warm-up counts too: it was accepted
        check["intake_decisions"] = sink.count
        check["enqueued"] = gateway.enqueuer.enqueued
        check["enqueue_failed"] = gateway.enqueuer.failed
    finally:
        await http.stop()
        await gateway.stop(drain_timeout=2)
        await client.aclose()
        gc.unfreeze()
    return records, check


async def _count_stored(client: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every accepted answer against what Redis holds (idempotency keys, inbox streams)."""
    accepted = sum(r["answers"].get("accepted", 0) for r in records)
    by_queue: dict[str, int] = {}
    for r in records:
        for queue, n in r["accepted_by_queue"].items():
            by_queue[queue] = by_queue.get(queue, 0) + n
    keys = 0
    async for _ in client.scan_iter(match=inbound_key(PROVIDER, "*"), count=10_000):
        keys += 1
    inbox: dict[str, int] = {}
    async for key in client.scan_iter(match=inbox_key("*"), count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        inbox[name.removeprefix(inbox_key(""))] = int(await client.xlen(name))
    lost_by_queue = {q: n - inbox.get(q, 0) for q, n in by_queue.items() if n > inbox.get(q, 0)}
    return {
        "accepted_answers": accepted,
        "stored_messages": keys,
        "inbox_entries": inbox,
        "accepted_by_queue": by_queue,
        "lost": max(0, accepted - keys) + sum(lost_by_queue.values()),
        "lost_by_queue": lost_by_queue,
        "unexpected_extra": max(0, keys - accepted),
    }


async def _run(steps: list[int], seconds: float, warmup: float, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of bare then gateway, each through every step: the pair of a round ran
    seconds apart, so their ratio is the one least moved by other load on the machine."""
    out: dict[str, Any] = {"bare": [], "gateway": [], "warmup": [], "stored": []}
    with RedisProcess() as redis_proc:
        pid = redis_proc.proc.pid if redis_proc.proc else None
        for _ in range(rounds):
            bare = await _run_bare(steps, seconds, warmup)
            gateway, check = await _run_gateway(redis_proc.url, steps, seconds, warmup, pid)
            out["bare"].append([r for r in bare if r["event"] == "step"])
            out["gateway"].append([r for r in gateway if r["event"] == "step"])
            out["warmup"] += [r for r in gateway if r["event"] == "warmup"]
            out["stored"].append(check)
    return out


def _median_by(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The record with the median `key` (the lower middle one for an even count)."""
    ordered = sorted(records, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def run(
    *, steps: list[int] | None = None, seconds: float = 3.0, warmup: float = 1.0, rounds: int = 3
) -> dict[str, Any]:
    """Measure (see the module doc); returns the JSON section `inbound`."""
    import uvloop

    steps = steps or [1, 8, 32, 64]
    began = time.perf_counter()
    raw = uvloop.run(_run(steps, seconds, warmup, rounds))
    rows = []
    for i, concurrency in enumerate(steps):
        pairs = [
            {
                "gateway": g[i],
                "bare": b[i],
                "ratio": round(g[i]["ok_per_s"] / b[i]["ok_per_s"], 3) if b[i]["ok_per_s"] else 0.0,
            }
            for g, b in zip(raw["gateway"], raw["bare"], strict=True)
        ]
        median = _median_by(pairs, "ratio")  # the round with the median ratio, reported whole
        rows.append(
            {
                "concurrency": concurrency,
                "gateway": median["gateway"],
                "bare": median["bare"],
                "ratio": median["ratio"],
                "rounds": [
                    {
                        "ok_per_s": p["gateway"]["ok_per_s"],
                        "p99_ms": p["gateway"]["p99_ms"],
                        "accepted": p["gateway"]["answers"].get("accepted", 0),
                        "bare_ok_per_s": p["bare"]["ok_per_s"],
                        "ratio": p["ratio"],
                    }
                    for p in pairs
                ],
            }
        )
    best = max(rows, key=lambda r: r["gateway"]["ok_per_s"])
    g = best["gateway"]
    every = [r for round_ in raw["gateway"] + raw["bare"] for r in round_]
    errors = sum(sum(r["errors"].values()) for r in every)
    non_2xx = sum(
        n for round_ in raw["gateway"] for r in round_ for s, n in r["statuses"].items() if not s.startswith("2")
    )
    stored = _sum_checks(raw["stored"])
    return {
        "steps": rows,
        "seconds_per_step": seconds,
        "rounds": rounds,
        "warmup": raw["warmup"],
        "duration_s": round(time.perf_counter() - began, 1),
        "best": {
            "concurrency": best["concurrency"],
            "ok_per_s": g["ok_per_s"],
            "p99_ms": g["p99_ms"],
            "bare_ok_per_s": best["bare"]["ok_per_s"],
            "ratio": best["ratio"],
        },
        "goals": {"per_s": GOAL_PER_S, "ratio": GOAL_RATIO, "p99_ms": GOAL_P99_MS},
        "stored": stored,
        "transport_errors": errors,
        "gateway_non_2xx": non_2xx,
        "counts_ok": stored["lost"] == 0 and stored["unexpected_extra"] == 0 and stored["accepted_answers"] > 0,
    }


def _sum_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' Redis checks added up (each round starts from an empty Redis)."""
    total: dict[str, Any] = {
        "accepted_answers": 0,
        "stored_messages": 0,
        "lost": 0,
        "unexpected_extra": 0,
        "inbox_entries": {},
        "accepted_by_queue": {},
        "lost_by_queue": {},
        "rounds": checks,
    }
    for check in checks:
        for key in ("accepted_answers", "stored_messages", "lost", "unexpected_extra"):
            total[key] += check[key]
        for key in ("inbox_entries", "accepted_by_queue", "lost_by_queue"):
            for name, n in check[key].items():
                total[key][name] = total[key].get(name, 0) + n
    return total


def figures(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in section["steps"]:
        g, b = r["gateway"], r["bare"]
        rows.append(
            {
                "figure": f"inbound SMS webhook, {r['concurrency']} in flight",
                "value": f"{g['ok_per_s']:,.0f}/s, p50 {g['p50_ms']:.1f} / p99 {g['p99_ms']:.1f} ms",
                "goal": f"≥ {GOAL_PER_S:,.0f}/s, ≥ {GOAL_RATIO:g} × bare, p99 ≤ {GOAL_P99_MS:g} ms",
                "baseline": f"bare aiohttp {b['ok_per_s']:,.0f}/s, p99 {b['p99_ms']:.1f} ms ({r['ratio']:.2f} ×, "
                f"round with the median ratio of {len(r['rounds'])}: "
                f"{', '.join(f'{x:.2f}' for x in (q['ratio'] for q in r['rounds']))}); "
                f"CPU (% of a core) gateway server {g['cpu']['server_pct']}, load generator "
                f"{g['cpu']['loadgen_pct']}, redis {g['cpu']['redis_pct']}, other processes "
                f"{g['cpu']['others_pct']}, taken by the hypervisor {g['cpu'].get('steal_pct')}",
                "met": g["ok_per_s"] >= GOAL_PER_S and r["ratio"] >= GOAL_RATIO and (g["p99_ms"] or 1e9) <= GOAL_P99_MS,
            }
        )
    s = section["stored"]
    rows.append(
        {
            "figure": "inbound SMS: accepted answers found in Redis",
            "value": f"{s['stored_messages']:,} of {s['accepted_answers']:,} stored, {s['lost']} lost "
            f"({section['gateway_non_2xx']} non-2xx answers, {section['transport_errors']} transport errors)",
            "goal": "0 lost",
            "baseline": "-",
            "met": s["lost"] == 0,
        }
    )
    return rows
